"""A VAE from wherever A1111 and ComfyUI users keep one: a standalone file (``vae-ft-mse-840000-ema-pruned
.safetensors``, ``sdxl_vae.safetensors``: the LDM layout at the root), a whole checkpoint's ``first_stage_model.*``,
a file in diffusers' layout, or a diffusers VAE folder. A file carries no config: the model's VAE config (its latent
scale, its fp16 rule) is kept, with the widths the tensors show."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..errors import WeightsError
from ..models.loading import load_weights, weight_files
from ..models.vae import AutoencoderKL, AutoencoderKLConfig, convert_legacy_vae_keys
from . import architecture as arch
from .checkpoint import Checkpoint
from .keys import VAE_PREFIX, Source, vae_source

LDM_ROOT_KEY = "encoder.down.0.block.0.conv1.weight"
DIFFUSERS_ROOT_KEY = "encoder.down_blocks.0.resnets.0.conv1.weight"


def vae_dtype(config: AutoencoderKLConfig, dtype: torch.dtype) -> torch.dtype:
    """fp32 under an fp16 pipeline when the config says ``force_upcast`` (SD's and SDXL's VAEs overflow in fp16)."""
    return torch.float32 if dtype == torch.float16 and config.force_upcast else dtype


def load_ldm_vae(checkpoint: Checkpoint, prefix: str, base: dict, dtype: torch.dtype,
                 device: torch.device | str) -> AutoencoderKL:
    """The LDM-layout VAE under ``prefix`` of a file, its config ``base`` with the tensors' widths."""
    from .loader import load_component

    config = AutoencoderKLConfig.from_dict(arch.vae_config(checkpoint, prefix, base))
    levels = len(config.block_out_channels)
    return load_component(checkpoint, lambda: AutoencoderKL(config), lambda key: vae_source(key, levels, prefix),
                          [prefix] if prefix else ["encoder.", "decoder.", "quant_conv.", "post_quant_conv."],
                          "VAE", vae_dtype(config, dtype), device)


def load_vae(path: str | Path, like: AutoencoderKLConfig, dtype: torch.dtype, device: torch.device | str,
             allow_pickle: bool = False) -> AutoencoderKL:
    """The VAE at ``path`` (a file or a diffusers folder), for a pipeline whose VAE config is ``like``."""
    path = Path(path).expanduser()
    if path.is_dir():
        folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
        config = AutoencoderKLConfig.from_file(folder / "config.json")
        files = weight_files(folder, "diffusion_pytorch_model", None, allow_pickle)
        return load_weights(lambda: AutoencoderKL(config), files, vae_dtype(config, dtype), device,
                            convert_legacy_vae_keys)
    checkpoint = Checkpoint(path, allow_pickle)
    base = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(like).items()}
    if checkpoint.keys_under(VAE_PREFIX):
        return load_ldm_vae(checkpoint, VAE_PREFIX, base, dtype, device)
    if LDM_ROOT_KEY in checkpoint:
        return load_ldm_vae(checkpoint, "", base, dtype, device)
    if DIFFUSERS_ROOT_KEY in checkpoint:
        from .loader import load_component

        return load_component(checkpoint, lambda: AutoencoderKL(like), Source,
                              ["encoder.", "decoder.", "quant_conv.", "post_quant_conv."], "VAE",
                              vae_dtype(like, dtype), device)
    raise WeightsError(f"{path} is not a VAE: it has neither {LDM_ROOT_KEY} (the LDM layout), "
                       f"{DIFFUSERS_ROOT_KEY} (diffusers') nor a model's {VAE_PREFIX}*")
