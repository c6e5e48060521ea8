"""The Stable Diffusion KL autoencoder (encoder and decoder), built from diffusers' ``vae/config.json``.

Attribute names are diffusers' state-dict keys; checkpoints saved before diffusers renamed the mid-block attention
(``query`` / ``key`` / ``value`` / ``proj_attn``) go through :func:`convert_legacy_vae_keys` first.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration import PositiveFloat, PositiveInt, check_fields, config_source
from .layers import (
    Attention,
    Downsample2D,
    ResnetBlock2D,
    Upsample2D,
    one_of,
    read_json_config,
    select_config_keys,
    unsupported_value,
)

COMPONENT = "vae"
EPS = 1e-6  # every GroupNorm of the LDM autoencoder

# diffusers keys of latent normalisations SD 1.x / 2.x VAEs do not use (SD3, Flux, video VAEs do).
NEUTRAL_KEYS: dict[str, tuple[Any, ...]] = {
    "shift_factor": (None,),
    "latents_mean": (None,),
    "latents_std": (None,),
}


@dataclass(frozen=True)
class AutoencoderKLConfig:
    """The diffusers ``AutoencoderKL`` config keys, with diffusers' defaults.

    ``scaling_factor`` brings latents to unit variance for the UNet (SD 1.x / 2.x: 0.18215); ``force_upcast``
    asks the pipeline to run the VAE in fp32 when the rest runs in fp16.
    """

    in_channels: PositiveInt = 3
    out_channels: PositiveInt = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[PositiveInt, ...] = (64,)
    layers_per_block: PositiveInt = 1
    act_fn: str = "silu"
    latent_channels: PositiveInt = 4
    norm_num_groups: PositiveInt = 32
    sample_size: PositiveInt | tuple[PositiveInt, ...] = 32
    scaling_factor: PositiveFloat = 0.18215
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self) -> None:
        check_fields(self)
        n = len(self.block_out_channels)
        for key, allowed in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            value = getattr(self, key)
            if any(block_type != allowed for block_type in value):
                raise unsupported_value(COMPONENT, key, value, f"each entry must be {one_of([allowed])}")
            if len(value) != n:
                raise unsupported_value(COMPONENT, key, value, f"expected {n} entries, one per block_out_channels")
        if self.act_fn not in ("silu", "swish"):
            raise unsupported_value(COMPONENT, "act_fn", self.act_fn, f"expected one of {one_of(('silu', 'swish'))}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> AutoencoderKLConfig:
        """Read a diffusers ``config.json`` mapping; refuses the latent normalisations of other VAE families."""
        return cls(**select_config_keys(COMPONENT, raw, (f.name for f in dataclasses.fields(cls)), NEUTRAL_KEYS))

    @classmethod
    def from_file(cls, path: str | Path) -> AutoencoderKLConfig:
        """Read ``vae/config.json``; an error in it is a ConfigError starting with the file."""
        raw = read_json_config(path)
        with config_source(path):
            return cls.from_dict(raw)


# ---------------------------------------------------------------------------------------------- legacy checkpoints

_LEGACY_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_MID_ATTENTION_KEY = re.compile(
    r"^((?:encoder|decoder)\.mid_block\.attentions\.\d+)\.(query|key|value|proj_attn|to_q|to_k|to_v|to_out\.0)"
    r"\.(weight|bias)$"
)


def convert_legacy_vae_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A VAE state dict with the mid-block attention under its modern names and linear ``[C, C]`` weights.

    Old diffusers checkpoints call the projections ``query``, ``key``, ``value`` and ``proj_attn``; checkpoints
    converted from the original LDM code may keep them as 1x1 convolutions ``[C, C, 1, 1]``. Every other key is
    passed through unchanged; the input is not modified.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        match = _MID_ATTENTION_KEY.match(key)
        if match is None:
            converted[key] = tensor
            continue
        path, name, kind = match.groups()
        if kind == "weight" and tensor.ndim == 4:
            tensor = tensor[:, :, 0, 0]  # 1x1 conv [C, C, 1, 1] -> linear [C, C]
        converted[f"{path}.{_LEGACY_NAMES.get(name, name)}.{kind}"] = tensor
    return converted


# ---------------------------------------------------------------------------------------------- modules


@dataclass(frozen=True)
class DiagonalGaussianDistribution:
    """The encoder's posterior ``q(z|x) = N(mean, exp(logvar))`` per latent element (Kingma & Welling 2014)."""

    mean: torch.Tensor
    logvar: torch.Tensor  # clamped to [-30, 20], as diffusers does

    @property
    def std(self) -> torch.Tensor:
        """``exp(logvar / 2)``."""
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """``mean + std * eps``; ``eps`` is drawn on the generator's device (diffusers' ``randn_tensor`` rule)."""
        device = self.mean.device if generator is None else generator.device
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)


class SpatialSelfAttention(Attention):
    """Single-head self-attention over the pixels of a feature map, with a residual (Rombach et al. 2022)."""

    def __init__(self, channels: int, groups: int):
        super().__init__(channels, heads=1, head_dim=channels, bias=True)
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, HW, C]
        out = super().forward(tokens).transpose(1, 2).reshape(batch, channels, height, width)  # -> [B, C, H, W]
        return x + out


class VAEMidBlock(nn.Module):
    """The bottleneck: resnet, pixel self-attention (unless ``mid_block_add_attention`` is false), resnet."""

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        channels, groups = config.block_out_channels[-1], config.norm_num_groups
        self.attentions = nn.ModuleList(
            [SpatialSelfAttention(channels, groups)] if config.mid_block_add_attention else []
        )
        self.resnets = nn.ModuleList(ResnetBlock2D(channels, channels, groups, EPS) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class EncoderDownBlock(nn.Module):
    """Resnets then, except at the deepest stage, a stride-2 conv with right/bottom padding."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups, EPS) for i in range(num_layers)
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, padding=0)] if add_downsample else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in (*self.resnets, *self.downsamplers):
            x = layer(x)
        return x


class DecoderUpBlock(nn.Module):
    """Resnets then, except at the last stage, nearest-neighbour 2x upsampling and a conv."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups, EPS) for i in range(num_layers)
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)] if add_upsample else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in (*self.resnets, *self.upsamplers):
            x = layer(x)
        return x


class Encoder(nn.Module):
    """Image ``[B, 3, H, W]`` -> posterior moments ``[B, 2 * latent_channels, H / f, W / f]`` (Rombach et al. 2022)."""

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        channels, groups = config.block_out_channels, config.norm_num_groups
        self.conv_in = nn.Conv2d(config.in_channels, channels[0], kernel_size=3, padding=1)
        last = len(channels) - 1
        self.down_blocks = nn.ModuleList(
            EncoderDownBlock(channels[max(i - 1, 0)], channels[i], config.layers_per_block, groups, i < last)
            for i in range(len(channels))
        )
        self.mid_block = VAEMidBlock(config)
        self.conv_norm_out = nn.GroupNorm(groups, channels[-1], eps=EPS)
        self.conv_out = nn.Conv2d(channels[-1], 2 * config.latent_channels, kernel_size=3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(image)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """Latents ``[B, latent_channels, h, w]`` -> image ``[B, 3, h * f, w * f]`` (Rombach et al. 2022)."""

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        channels, groups = config.block_out_channels[::-1], config.norm_num_groups
        self.conv_in = nn.Conv2d(config.latent_channels, channels[0], kernel_size=3, padding=1)
        self.mid_block = VAEMidBlock(config)
        last = len(channels) - 1
        self.up_blocks = nn.ModuleList(
            DecoderUpBlock(channels[max(i - 1, 0)], channels[i], config.layers_per_block + 1, groups, i < last)
            for i in range(len(channels))
        )
        self.conv_norm_out = nn.GroupNorm(groups, channels[-1], eps=EPS)
        self.conv_out = nn.Conv2d(channels[-1], config.out_channels, kernel_size=3, padding=1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(latents))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    """KL-regularised autoencoder of latent diffusion: ``f = 2^(len(block_out_channels) - 1)`` (Rombach et al. 2022).

    ``decode`` takes *unscaled* latents (divide the UNet's latents by ``config.scaling_factor`` first) and returns
    the image in about ``[-1, 1]``, unclamped.
    """

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        self.config = config
        latent = config.latent_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, kernel_size=1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent, latent, kernel_size=1) if config.use_post_quant_conv else None

    def encode(self, image: torch.Tensor) -> DiagonalGaussianDistribution:
        """The posterior over latents of ``image [B, 3, H, W]`` in ``[-1, 1]``; unscaled, like ``decode``'s input."""
        moments = self.encoder(image)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = moments.chunk(2, dim=1)  # [B, 2L, h, w] -> 2 x [B, L, h, w]
        return DiagonalGaussianDistribution(mean, logvar.clamp(-30.0, 20.0))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Image ``[B, 3, H, W]`` from unscaled latents ``[B, L, H / f, W / f]`` in the weights' dtype."""
        if self.post_quant_conv is not None:
            latents = self.post_quant_conv(latents)
        return self.decoder(latents)
