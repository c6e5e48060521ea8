"""Building blocks shared by the UNet and the VAE, with diffusers' attribute names so checkpoints load as they are.

Also the config reading both models share: a component's ``config.json`` is split into the keys a module uses,
keys that must keep a neutral value (features of architectures we do not build), and informational keys.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ConfigWarning

# Keys written by diffusers / transformers that describe a file rather than a model; never checked.
INFORMATIONAL_KEYS = frozenset({"architectures", "model_type", "torch_dtype", "transformers_version"})

# ---------------------------------------------------------------------------------------------- config reading


def read_json_config(path: str | Path) -> dict[str, Any]:
    """The JSON object in a component's ``config.json``; an unreadable or malformed file is a ConfigError."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; expected a JSON config") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a JSON object, not {type(raw).__name__}")
    return raw


def _is_neutral(value: Any, allowed: tuple[Any, ...]) -> bool:
    """Whether ``value`` (or every item of a per-block list) is one of the ``allowed`` neutral values."""
    items = value if isinstance(value, list) else [value]
    # 1 and 1.0 are the same number, but true is not 1.
    return all(any(item == ok and isinstance(item, bool) == isinstance(ok, bool) for ok in allowed) for item in items)


def select_config_keys(
    component: str,
    raw: Mapping[str, Any],
    used: Iterable[str],
    neutral: Mapping[str, tuple[Any, ...]],
    supported_models: str = "Stable Diffusion 1.x and 2.x models",
) -> dict[str, Any]:
    """Keep the keys a module uses; refuse a non-neutral value of a key we do not build; warn about unknown keys.

    Lists become tuples so the result can fill a frozen dataclass. ``neutral`` maps each refused key to the values
    (diffusers' defaults) that mean "feature off"; ``supported_models`` ends the refusal, in parentheses.
    """
    used = set(used)
    kept: dict[str, Any] = {}
    for key, value in raw.items():
        if key in used:
            kept[key] = tuple(value) if isinstance(value, list) else value
        elif key in neutral:
            if not _is_neutral(value, neutral[key]):
                supported = " or ".join(json.dumps(v) for v in neutral[key])
                raise ConfigError(
                    f'{component} config: "{key}": {json.dumps(value)} is not supported; schedcmp supports only '
                    f'"{key}": {supported} ({supported_models})'
                )
        elif not key.startswith("_") and key not in INFORMATIONAL_KEYS:
            warnings.warn(f'{component} config: ignoring unknown key "{key}"', ConfigWarning, stacklevel=3)
    return kept


def unsupported_value(component: str, key: str, value: Any, expected: str) -> ConfigError:
    """The error for a used key whose value we cannot build; ``expected`` says what we can."""
    shown = json.dumps(list(value) if isinstance(value, tuple) else value)
    return ConfigError(f'{component} config: "{key}": {shown} is not supported; {expected}')


def one_of(values: Iterable[Any]) -> str:
    """``'"a", "b"'``: choices quoted as they are written in a config.json."""
    return ", ".join(json.dumps(v) for v in values)


# ---------------------------------------------------------------------------------------------- timestep embedding


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: float) -> torch.Tensor:
    """Sinusoidal position encoding of (possibly fractional) timesteps, in fp32 (Vaswani et al. 2017, sec. 3.5).

    Frequency ``k`` is ``10000^(-k / (dim/2 - freq_shift))``; the halves are ``[sin, cos]`` or ``[cos, sin]``.
    """
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    frequencies = torch.exp(exponent / (half - freq_shift))
    angles = timesteps.float()[:, None] * frequencies[None, :]  # [B] -> [B, half]
    pair = (torch.cos(angles), torch.sin(angles)) if flip_sin_to_cos else (torch.sin(angles), torch.cos(angles))
    embedding = torch.cat(pair, dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class Timesteps(nn.Module):
    """Parameter-free sinusoidal projection of a timestep vector ``[B] -> [B, dim]`` in fp32 (Ho et al. 2020)."""

    def __init__(self, dim: int, flip_sin_to_cos: bool, freq_shift: float):
        super().__init__()
        self.dim = dim
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return sinusoidal_embedding(timesteps, self.dim, self.flip_sin_to_cos, self.freq_shift)


class TimestepEmbedding(nn.Module):
    """Two-layer SiLU MLP on the sinusoidal timestep features (Ho et al. 2020; Rombach et al. 2022)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(features)))


# ---------------------------------------------------------------------------------------------- convolutional blocks


class ResnetBlock2D(nn.Module):
    """Pre-norm residual block with an additive timestep embedding (He et al. 2016; Ho et al. 2020).

    ``out = (shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb)))))) / output_scale_factor``;
    without ``temb_dim`` (the VAE) there is no time projection.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        groups: int,
        eps: float,
        temb_dim: int | None = None,
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, out_channels) if temb_dim is not None else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = None if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        self.output_scale_factor = output_scale_factor

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]  # [B, C] -> [B, C, 1, 1]
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return (shortcut + h) / self.output_scale_factor


class Downsample2D(nn.Module):
    """Stride-2 3x3 convolution; ``padding=0`` pads right and bottom by one first, as the LDM VAE encoder does."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour 2x upsampling (or to ``size``, for latents not divisible by 2^depth) then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        # Channels-last nearest upsampling is wrong for batches >= 64 and for outputs >= 2^31 elements.
        if x.shape[0] >= 64 or x.numel() * 4 >= 2**31:
            x = x.contiguous()
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


# ---------------------------------------------------------------------------------------------- attention


class Attention(nn.Module):
    """Multi-head scaled dot-product attention through ``F.scaled_dot_product_attention`` (Vaswani et al. 2017).

    Keys and values come from ``context`` (cross-attention) or from the queries' own sequence (self-attention).
    There is no explicit fp32 upcast: SDPA's fused kernels accumulate ``QK^T`` and the softmax in fp32, and
    diffusers' default processor (``AttnProcessor2_0``) likewise calls SDPA as is for ``upcast_attention`` /
    ``upcast_softmax`` models, so half-precision results stay diffusers' results.
    """

    def __init__(self, query_dim: int, heads: int, head_dim: int, context_dim: int | None = None, bias: bool = False):
        super().__init__()
        inner_dim = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = nn.Linear(context_dim or query_dim, inner_dim, bias=bias)
        self.to_v = nn.Linear(context_dim or query_dim, inner_dim, bias=bias)
        # diffusers' to_out.1 is a dropout, which holds no weights.
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, query_dim)])

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [B, L, h*d] -> [B, h, L, d]

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (self._split_heads(t) for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).flatten(2)  # [B, h, L, d] -> [B, L, h*d]
        return self.to_out[0](out)


class GEGLU(nn.Module):
    """GELU-gated linear unit: ``a * gelu(b)`` with ``[a, b] = proj(x)`` (Shazeer 2020)."""

    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """Position-wise GEGLU feed-forward network of width ``4 * dim`` (Vaswani et al. 2017; Shazeer 2020)."""

    def __init__(self, dim: int):
        super().__init__()
        # diffusers' net.1 is a dropout: an Identity keeps the output projection at key net.2.
        self.net = nn.ModuleList([GEGLU(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm block: self-attention, cross-attention to the text, GEGLU MLP (Rombach et al. 2022, sec. 3.3)."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim=context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Module):
    """Spatial transformer over a feature map, with a residual around it (Rombach et al. 2022, sec. 3.3).

    ``proj_in`` / ``proj_out`` are 1x1 convolutions (SD 1.x) or linear layers on the tokens
    (``use_linear_projection``, SD 2.x).
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        context_dim: int,
        groups: int,
        num_layers: int = 1,
        use_linear_projection: bool = False,
    ):
        super().__init__()
        head_dim = channels // heads
        inner_dim = heads * head_dim
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in = nn.Linear(channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, heads, head_dim, context_dim) for _ in range(num_layers)
        )
        if use_linear_projection:
            self.proj_out = nn.Linear(inner_dim, channels)
        else:
            self.proj_out = nn.Conv2d(inner_dim, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        h = self.norm(x)
        if self.use_linear_projection:
            h = self.proj_in(h.permute(0, 2, 3, 1).reshape(batch, height * width, -1))  # [B, C, H, W] -> [B, HW, C]
        else:
            h = self.proj_in(h).permute(0, 2, 3, 1).reshape(batch, height * width, -1)  # [B, C, H, W] -> [B, HW, C]
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.use_linear_projection:
            h = self.proj_out(h).reshape(batch, height, width, -1).permute(0, 3, 1, 2)  # [B, HW, C] -> [B, C, H, W]
        else:
            h = self.proj_out(h.reshape(batch, height, width, -1).permute(0, 3, 1, 2))  # [B, HW, C] -> [B, C, H, W]
        return h + x
