"""A tiny SDXL built with diffusers/transformers (the oracles) and saved in diffusers' layout.

SDXL's topology at toy widths: three UNet levels, the first without attention, per-block transformer depths
(1, 1, 2) so the mid block's depth differs from the first level's, ``text_time`` micro-conditioning with 6 time ids,
two text encoders of different widths (CLIP-L-like 32 with quick_gelu, bigG-like 64 with gelu and a projection),
both tokenizer pad conventions (``<|endoftext|>`` and ``!``) and file formats (``tokenizer.json``; ``vocab.json`` +
``merges.txt``), the legacy ``eos_token_id=2`` pooling rule, SDXL's VAE scaling and its Euler ``leading`` scheduler
config.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import diffusers
import torch
import transformers
from tiny_sd import FIXTURES, SCHEDULER_CONFIGS, write_clip_vocab


def text_encoder_config(**shape) -> transformers.CLIPTextConfig:
    return transformers.CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=2,
                                       pad_token_id=1, **shape)


def build_tiny_sdxl(folder: Path, seed: int = 0, force_zeros_for_empty_prompt: bool = True,
                    sample_size: int = 16) -> diffusers.StableDiffusionXLPipeline:
    """A randomly initialised diffusers StableDiffusionXLPipeline, saved to ``folder`` and loaded back."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 48,  # 6 time ids x 8 + text_encoder_2's projection_dim
        cross_attention_dim=32 + 64,  # the two encoders' widths
        norm_num_groups=8,
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
        scaling_factor=0.13025,
        force_upcast=True,
    )
    text_encoder = transformers.CLIPTextModel(text_encoder_config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, hidden_act="quick_gelu",
        projection_dim=32,
    )).eval()
    text_encoder_2 = transformers.CLIPTextModelWithProjection(text_encoder_config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, hidden_act="gelu",
        projection_dim=48,
    )).eval()
    vocabs = []
    for name, style in (("tokenizer", "sd1"), ("tokenizer_2", "sd2")):
        vocab = write_clip_vocab(folder.parent / f"{folder.name}-{name}")
        for file in (FIXTURES / "clip-tokenizer" / style).glob("*.json"):
            shutil.copy(file, vocab)
        vocabs.append(vocab)
    tokenizers = [transformers.CLIPTokenizer.from_pretrained(vocab) for vocab in vocabs]
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler.from_config(SCHEDULER_CONFIGS["sdxl"]),
        force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    # tokenizer/ keeps transformers 5's tokenizer.json; tokenizer_2/ gets the vocab.json + merges.txt of the Hub's
    # SDXL folders, so both formats are read
    (folder / "tokenizer_2" / "tokenizer.json").unlink()
    for file in vocabs[1].iterdir():
        shutil.copy(file, folder / "tokenizer_2")
    saved = diffusers.StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False)
    saved.set_progress_bar_config(disable=True)
    return saved
