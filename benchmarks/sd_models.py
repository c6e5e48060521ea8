"""Benchmark helpers: random-weight SD 1.5- and SDXL-shaped models from the real configs (no download), and the
diffusers loop they are timed against."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import diffusers
import numpy as np
import torch
import transformers

ROOT = Path(__file__).parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tiny_sd import write_clip_vocab  # noqa: E402

from schedcmp.engine import synchronize  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"


def sd15_config(name: str, reduced: bool) -> dict:
    """A real SD 1.5 component config; ``reduced`` shrinks widths and depth for a CPU dry run."""
    config = json.loads((FIXTURES / "sd15" / name / "config.json").read_text())
    if reduced and name == "unet":
        config.update(block_out_channels=[32, 64, 64, 64], attention_head_dim=4, cross_attention_dim=64,
                      layers_per_block=1, norm_num_groups=16)
    if reduced and name == "vae":
        config.update(block_out_channels=[16, 32, 32, 32], layers_per_block=1, norm_num_groups=16)
    if reduced and name == "text_encoder":
        config.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    return config


def build_sd15_folder(folder: Path, reduced: bool, device: str, dtype: torch.dtype) -> None:
    """Random-weight SD 1.5 in diffusers' folder layout, initialised directly on the device."""
    torch.manual_seed(0)
    with torch.device(device):
        unet = diffusers.UNet2DConditionModel.from_config(sd15_config("unet", reduced))
        vae = diffusers.AutoencoderKL.from_config(sd15_config("vae", reduced))
        text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(**sd15_config("text_encoder", reduced)))
    vocab = write_clip_vocab(folder.parent / "vocab")
    for file in (FIXTURES / "clip-tokenizer" / "sd1").glob("*.json"):
        (vocab / file.name).write_bytes(file.read_bytes())
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae.to(dtype), text_encoder=text_encoder.to(dtype), unet=unet.to(dtype),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(vocab),
        scheduler=diffusers.PNDMScheduler.from_pretrained(FIXTURES / "sd15", subfolder="scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)


def sdxl_config(name: str, reduced: bool) -> dict:
    """A real SDXL base component config; ``reduced`` shrinks widths and depth for a CPU dry run (same topology)."""
    config = json.loads((FIXTURES / "sdxl" / "base" / name / "config.json").read_text())
    if reduced and name == "unet":
        config.update(block_out_channels=[32, 64, 64], attention_head_dim=[2, 4, 4], cross_attention_dim=96,
                      transformer_layers_per_block=[1, 1, 2], addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=6 * 8 + 48, norm_num_groups=16)
    if reduced and name == "vae":
        config.update(block_out_channels=[16, 32, 32, 32], layers_per_block=1, norm_num_groups=16)
    if reduced and name == "text_encoder":
        config.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    if reduced and name == "text_encoder_2":
        config.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      projection_dim=48)
    return config


def text_config(config: dict) -> transformers.CLIPTextConfig:
    return transformers.CLIPTextConfig(**{k: v for k, v in config.items() if k not in ("architectures",)})


def build_sdxl_folder(folder: Path, reduced: bool, device: str, dtype: torch.dtype) -> None:
    """Random-weight SDXL base in diffusers' folder layout, initialised directly on the device."""
    torch.manual_seed(0)
    with torch.device(device):
        unet = diffusers.UNet2DConditionModel.from_config(sdxl_config("unet", reduced))
        vae = diffusers.AutoencoderKL.from_config(sdxl_config("vae", reduced))
        text_encoder = transformers.CLIPTextModel(text_config(sdxl_config("text_encoder", reduced)))
        text_encoder_2 = transformers.CLIPTextModelWithProjection(text_config(sdxl_config("text_encoder_2", reduced)))
    tokenizers = []
    for name in ("tokenizer", "tokenizer_2"):
        vocab = write_clip_vocab(folder.parent / f"vocab-{name}")
        for file in (FIXTURES / "sdxl" / "base" / name).glob("*.json"):
            (vocab / file.name).write_bytes(file.read_bytes())
        tokenizers.append(transformers.CLIPTokenizer.from_pretrained(vocab))
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=vae.to(dtype), text_encoder=text_encoder.to(dtype), text_encoder_2=text_encoder_2.to(dtype),
        unet=unet.to(dtype), tokenizer=tokenizers[0], tokenizer_2=tokenizers[1],
        scheduler=diffusers.EulerDiscreteScheduler.from_pretrained(FIXTURES / "sdxl" / "base", subfolder="scheduler"),
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)


def diffusers_loop(pipe, plan, size: int, device: torch.device) -> tuple[float, list[np.ndarray]]:
    """The guide's workflow: from_config swap, fresh generator, pipeline call; wall seconds and images."""
    base = dict(pipe.scheduler.config)
    images = []
    synchronize(device)
    start = time.perf_counter()
    for run in plan.runs:
        pipe.scheduler = getattr(diffusers, run.preset.cls.__name__).from_config(
            base, **run.preset.options, **run.config_options
        )
        out = pipe(plan.prompt, num_inference_steps=run.steps, guidance_scale=plan.guidance, height=size,
                   width=size, generator=torch.Generator(device).manual_seed(plan.seed), output_type="np")
        images.append(out.images[0])
    synchronize(device)
    return time.perf_counter() - start, images
