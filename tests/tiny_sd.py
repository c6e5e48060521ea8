"""Tiny Stable Diffusion models built with diffusers/transformers (the oracles) and saved in diffusers' layout.

Shapes are small enough for CPU tests, but every architectural switch of SD 1.x and 2.x is exercised:
conv vs linear proj_in, int vs per-block attention_head_dim, upcast_attention, epsilon vs v-prediction, and the
two tokenizer padding styles. The vocabulary is the real CLIP one, derived from ``fixtures/clip-bpe``.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import diffusers
import torch
import transformers

from schedcmp.core.models.tokenizer import bytes_to_unicode

FIXTURES = Path(__file__).parent / "fixtures"
BPE_FILE = FIXTURES / "clip-bpe" / "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # CLIP's vocabulary: 256 bytes, 256 bytes + </w>, merges, 2 special tokens
SCHEDULER_CONFIGS = json.loads((FIXTURES / "scheduler_configs.json").read_text())

VARIANTS = {
    "sd1": {
        "unet": {"attention_head_dim": 8, "use_linear_projection": False, "upcast_attention": False},
        "scheduler": "sd15",
        "tokenizer": "sd1",
    },
    "sd2v": {
        "unet": {"attention_head_dim": [4, 8], "use_linear_projection": True, "upcast_attention": True},
        "scheduler": "sd2v",
        "tokenizer": "sd2",
    },
}


def write_clip_vocab(folder: Path) -> Path:
    """vocab.json + merges.txt derived from the CLIP BPE file (open_clip's construction)."""
    lines = gzip.open(BPE_FILE).read().decode("utf-8").split("\n")
    merges = lines[1 : NUM_MERGES + 1]
    byte_chars = list(bytes_to_unicode().values())
    tokens = [*byte_chars, *(c + "</w>" for c in byte_chars), *("".join(m.split()) for m in merges)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def build_tiny_sd(folder: Path, variant: str = "sd1", seed: int = 0) -> diffusers.StableDiffusionPipeline:
    """A randomly initialised diffusers StableDiffusionPipeline of the given variant, saved to ``folder``."""
    spec = VARIANTS[variant]
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
        **spec["unet"],
    )
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=32,
    )
    text_encoder = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
        )
    ).eval()
    vocab = write_clip_vocab(folder.parent / f"{folder.name}-vocab")
    for file in (FIXTURES / "clip-tokenizer" / spec["tokenizer"]).glob("*.json"):
        shutil.copy(file, vocab)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(vocab)
    scheduler = diffusers.PNDMScheduler.from_config(SCHEDULER_CONFIGS[spec["scheduler"]])
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    # Reloaded as a user would: a saved config holds every key explicitly, which changes what scheduler swaps
    # inherit (keys that were defaults in memory become explicit values in the file).
    saved = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    saved.set_progress_bar_config(disable=True)
    return saved
