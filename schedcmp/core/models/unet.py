"""The Stable Diffusion 1.x / 2.x and SDXL denoising UNet, built from diffusers' ``unet/config.json``.

Attribute names are diffusers' state-dict keys, so ``diffusion_pytorch_model.safetensors`` loads with
``load_state_dict(strict=True)``. ``forward`` returns the noise (or v) prediction as a tensor. SDXL UNets (base
and refiner) add micro-conditioning: the pooled text embedding and the size / crop (refiner: aesthetic score)
``time_ids`` are embedded and added to the timestep embedding (Podell et al. 2023, sec. 2.2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..configuration import NonNegativeInt, PositiveFloat, PositiveInt, check_fields, config_source
from .layers import (
    Downsample2D,
    ResnetBlock2D,
    TimestepEmbedding,
    Timesteps,
    Transformer2DModel,
    Upsample2D,
    one_of,
    read_json_config,
    select_config_keys,
    unsupported_value,
)

COMPONENT = "unet"
DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")

# diffusers keys of features SD 1.x / 2.x / SDXL UNets do not use, with the values that mean "off".
NEUTRAL_KEYS: dict[str, tuple[Any, ...]] = {
    "mid_block_type": ("UNetMidBlock2DCrossAttn",),
    "only_cross_attention": (False,),
    "mid_block_only_cross_attention": (None, False),
    "dual_cross_attention": (False,),
    "dropout": (0.0,),
    "num_attention_heads": (None,),
    "reverse_transformer_layers_per_block": (None,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "class_embeddings_concat": (False,),
    "addition_embed_type_num_heads": (64,),
    "resnet_time_scale_shift": ("default",),
    "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1.0,),
    "time_embedding_type": ("positional",),
    "time_embedding_dim": (None,),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "attention_type": ("default",),
    "cross_attention_norm": (None,),
}
SUPPORTED_MODELS = "Stable Diffusion 1.x, 2.x and SDXL models"
ADDITION_EMBED_TYPES = (None, "text_time")  # "text_time": SDXL's micro-conditioning
ADDED_COND_KEYS = ("text_embeds", "time_ids")
# Keys given as one value for all blocks or as a list with one value per entry of block_out_channels.
PER_BLOCK_KEYS = (
    "down_block_types",
    "up_block_types",
    "layers_per_block",
    "attention_head_dim",
    "cross_attention_dim",
    "transformer_layers_per_block",
)


@dataclass(frozen=True)
class UNet2DConditionConfig:
    """The diffusers ``UNet2DConditionModel`` config keys an SD 1.x / 2.x / SDXL UNet uses, with diffusers' defaults.

    ``attention_head_dim`` is, by a diffusers naming quirk kept for old checkpoints, the number of attention
    *heads* per block (SD 1.x: 8 everywhere; SD 2.x: [5, 10, 20, 20]; SDXL: [5, 10, 20], i.e. 64 channels per head).
    ``upcast_attention`` (SD 2.1) needs no work: SDPA accumulates the scores and softmax in fp32.
    ``transformer_layers_per_block`` and ``cross_attention_dim`` are one value or one per down block (SDXL base:
    [1, 2, 10]); the mid block takes the last, the up blocks the reversed list.
    ``addition_embed_type="text_time"`` (SDXL) adds an MLP from ``projection_class_embeddings_input_dim`` features
    (pooled text width + number of time ids x ``addition_time_embed_dim``) to the timestep embedding.
    """

    sample_size: PositiveInt | None = None
    in_channels: PositiveInt = 4
    out_channels: PositiveInt = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: NonNegativeInt = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    block_out_channels: tuple[PositiveInt, ...] = (320, 640, 1280, 1280)
    layers_per_block: PositiveInt | tuple[PositiveInt, ...] = 2
    downsample_padding: NonNegativeInt = 1
    mid_block_scale_factor: PositiveFloat = 1.0
    act_fn: str = "silu"
    norm_num_groups: PositiveInt = 32
    norm_eps: PositiveFloat = 1e-5
    cross_attention_dim: PositiveInt | tuple[PositiveInt, ...] = 1280
    transformer_layers_per_block: PositiveInt | tuple[PositiveInt, ...] = 1
    attention_head_dim: PositiveInt | tuple[PositiveInt, ...] = 8
    use_linear_projection: bool = False
    upcast_attention: bool | None = False  # SDXL's config.json writes null
    addition_embed_type: str | None = None  # one of ADDITION_EMBED_TYPES (checked below)
    addition_time_embed_dim: PositiveInt | None = None
    projection_class_embeddings_input_dim: PositiveInt | None = None

    def __post_init__(self) -> None:
        depths = self.transformer_layers_per_block
        if isinstance(depths, tuple) and any(isinstance(depth, (list, tuple)) for depth in depths):
            raise unsupported_value(
                COMPONENT,
                "transformer_layers_per_block",
                [list(d) if isinstance(d, (list, tuple)) else d for d in depths],
                "expected one integer, or one integer per block (per-layer depths are not supported)",
            )
        check_fields(self)
        n = len(self.block_out_channels)
        for key, allowed in (("down_block_types", DOWN_BLOCK_TYPES), ("up_block_types", UP_BLOCK_TYPES)):
            value = getattr(self, key)
            if any(block_type not in allowed for block_type in value):
                raise unsupported_value(COMPONENT, key, value, f"each entry must be one of {one_of(allowed)}")
        for key in PER_BLOCK_KEYS:
            value = getattr(self, key)
            if isinstance(value, tuple) and len(value) != n:
                raise unsupported_value(COMPONENT, key, value, f"expected {n} entries, one per block_out_channels")
        if self.act_fn not in ("silu", "swish"):
            raise unsupported_value(COMPONENT, "act_fn", self.act_fn, f"expected one of {one_of(('silu', 'swish'))}")
        if self.addition_embed_type not in ADDITION_EMBED_TYPES:
            raise unsupported_value(
                COMPONENT,
                "addition_embed_type",
                self.addition_embed_type,
                f"expected one of {one_of(ADDITION_EMBED_TYPES)} (SDXL)",
            )
        if self.addition_embed_type == "text_time":
            for key, what in (
                ("addition_time_embed_dim", "the width of each time id's sinusoidal embedding"),
                ("projection_class_embeddings_input_dim", "the pooled text width + time ids x addition_time_embed_dim"),
            ):
                if getattr(self, key) is None:
                    raise unsupported_value(COMPONENT, key, None, f'"addition_embed_type": "text_time" needs {what}')

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> UNet2DConditionConfig:
        """Read a diffusers ``config.json`` mapping; refuses features of other architectures (class labels, ...)."""
        used = (f.name for f in dataclasses.fields(cls))
        return cls(**select_config_keys(COMPONENT, raw, used, NEUTRAL_KEYS, SUPPORTED_MODELS))

    @classmethod
    def from_file(cls, path: str | Path) -> UNet2DConditionConfig:
        """Read ``unet/config.json``; an error in it is a ConfigError starting with the file."""
        raw = read_json_config(path)
        with config_source(path):
            return cls.from_dict(raw)

    def per_block(self, key: str) -> tuple[Any, ...]:
        """A per-block setting given as one value or a list, as one value per down block."""
        value = getattr(self, key)
        return value if isinstance(value, tuple) else (value,) * len(self.block_out_channels)


@dataclass(frozen=True)
class AttentionSpec:
    """The spatial transformers of one block: heads, transformer blocks each, and the width of the text tokens."""

    heads: int
    depth: int
    context_dim: int


class UNetDownBlock(nn.Module):
    """One encoder stage: resnets, each followed by a spatial transformer in cross-attention stages, then a
    stride-2 downsampler except at the deepest stage (Rombach et al. 2022)."""

    def __init__(
        self,
        config: UNet2DConditionConfig,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        attention: AttentionSpec,
        cross_attention: bool,
        add_downsample: bool,
    ):
        super().__init__()
        temb_dim = 4 * config.block_out_channels[0]
        self.resnets = nn.ModuleList(
            ResnetBlock2D(
                in_channels if i == 0 else out_channels, out_channels, config.norm_num_groups, config.norm_eps, temb_dim
            )
            for i in range(num_layers)
        )
        self.attentions = nn.ModuleList(
            _transformer(config, out_channels, attention) for _ in range(num_layers if cross_attention else 0)
        )
        self.downsamplers = nn.ModuleList(
            [Downsample2D(out_channels, config.downsample_padding)] if add_downsample else []
        )

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The stage's output and the skip connections it hands to the decoder (one per resnet and downsampler)."""
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions:
                x = self.attentions[i](x, context)
            skips.append(x)
        for downsampler in self.downsamplers:
            x = downsampler(x)
            skips.append(x)
        return x, skips


class UNetMidBlock(nn.Module):
    """The bottleneck: resnet, spatial transformer, resnet (Rombach et al. 2022)."""

    def __init__(self, config: UNet2DConditionConfig, channels: int, attention: AttentionSpec):
        super().__init__()
        temb_dim = 4 * config.block_out_channels[0]
        self.attentions = nn.ModuleList([_transformer(config, channels, attention)])
        self.resnets = nn.ModuleList(
            ResnetBlock2D(
                channels,
                channels,
                config.norm_num_groups,
                config.norm_eps,
                temb_dim,
                output_scale_factor=config.mid_block_scale_factor,
            )
            for _ in range(2)
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


class UNetUpBlock(nn.Module):
    """One decoder stage: resnets on [features, skip] concatenations, each followed by a spatial transformer in
    cross-attention stages, then a nearest-neighbour upsampler except at the last stage (Ronneberger et al. 2015)."""

    def __init__(
        self,
        config: UNet2DConditionConfig,
        prev_channels: int,
        out_channels: int,
        skip_in_channels: int,
        num_layers: int,
        attention: AttentionSpec,
        cross_attention: bool,
        add_upsample: bool,
    ):
        super().__init__()
        temb_dim = 4 * config.block_out_channels[0]
        resnets = []
        for i in range(num_layers):
            features = prev_channels if i == 0 else out_channels
            skip = skip_in_channels if i == num_layers - 1 else out_channels
            resnets.append(
                ResnetBlock2D(features + skip, out_channels, config.norm_num_groups, config.norm_eps, temb_dim)
            )
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(
            _transformer(config, out_channels, attention) for _ in range(num_layers if cross_attention else 0)
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)] if add_upsample else [])

    def forward(
        self,
        x: torch.Tensor,
        skips: list[torch.Tensor],
        temb: torch.Tensor,
        context: torch.Tensor,
        upsample_size: tuple[int, int] | None,
    ) -> torch.Tensor:
        """Consume ``len(self.resnets)`` skips, last first; upsample to ``upsample_size`` (the next skip's size)."""
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)  # [B, C, H, W] + [B, S, H, W] -> [B, C+S, H, W]
            if self.attentions:
                x = self.attentions[i](x, context)
        for upsampler in self.upsamplers:
            x = upsampler(x, upsample_size)
        return x


def _transformer(config: UNet2DConditionConfig, channels: int, attention: AttentionSpec) -> Transformer2DModel:
    return Transformer2DModel(
        channels,
        attention.heads,
        attention.context_dim,
        config.norm_num_groups,
        num_layers=attention.depth,
        use_linear_projection=config.use_linear_projection,
    )


class UNet2DConditionModel(nn.Module):
    """Text-conditioned latent-diffusion UNet of Stable Diffusion 1.x / 2.x (Rombach et al. 2022) and SDXL, whose
    ``addition_embed_type="text_time"`` adds the pooled-text and size / crop micro-conditioning embedding
    ``add_embedding`` (Podell et al. 2023, sec. 2.2)."""

    def __init__(self, config: UNet2DConditionConfig):
        super().__init__()
        self.config = config
        channels = config.block_out_channels
        layers = config.per_block("layers_per_block")
        attention = [  # attention_head_dim is heads per block: see UNet2DConditionConfig
            AttentionSpec(heads, transformer_layers, context_dim)
            for heads, transformer_layers, context_dim in zip(
                config.per_block("attention_head_dim"),
                config.per_block("transformer_layers_per_block"),
                config.per_block("cross_attention_dim"),
                strict=True,
            )
        ]
        depth = len(channels)

        self.conv_in = nn.Conv2d(config.in_channels, channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(channels[0], config.flip_sin_to_cos, config.freq_shift)
        self.time_embedding = TimestepEmbedding(channels[0], 4 * channels[0])
        if config.addition_embed_type == "text_time":
            self.add_time_proj = Timesteps(config.addition_time_embed_dim, config.flip_sin_to_cos, config.freq_shift)
            self.add_embedding = TimestepEmbedding(config.projection_class_embeddings_input_dim, 4 * channels[0])

        self.down_blocks = nn.ModuleList(
            UNetDownBlock(
                config,
                in_channels=channels[max(i - 1, 0)],
                out_channels=channels[i],
                num_layers=layers[i],
                attention=attention[i],
                cross_attention=block_type == "CrossAttnDownBlock2D",
                add_downsample=i < depth - 1,
            )
            for i, block_type in enumerate(config.down_block_types)
        )
        self.mid_block = UNetMidBlock(config, channels[-1], attention[-1])
        self.up_blocks = nn.ModuleList(
            UNetUpBlock(
                config,
                prev_channels=channels[::-1][max(i - 1, 0)],
                out_channels=channels[::-1][i],
                skip_in_channels=channels[::-1][min(i + 1, depth - 1)],
                num_layers=layers[::-1][i] + 1,
                attention=attention[::-1][i],
                cross_attention=block_type == "CrossAttnUpBlock2D",
                add_upsample=i < depth - 1,
            )
            for i, block_type in enumerate(config.up_block_types)
        )
        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, channels[0], eps=config.norm_eps)
        self.conv_out = nn.Conv2d(channels[0], config.out_channels, kernel_size=3, padding=1)

    def embed_timesteps(self, timestep: torch.Tensor | float, sample: torch.Tensor) -> torch.Tensor:
        """Timestep embedding ``[B, 4 * C0]``: sinusoidal features in fp32, cast to the sample's dtype, then the MLP.

        ``timestep`` is a Python number, a 0-d tensor or one value per sample ``[B]`` (int or float).
        """
        timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
        return self.time_embedding(self.time_proj(timesteps).to(sample.dtype))

    def embed_added_conditions(
        self, added_cond_kwargs: Mapping[str, torch.Tensor] | None, dtype: torch.dtype
    ) -> torch.Tensor:
        """SDXL's pooled-text and micro-conditioning embedding ``[B, 4 * C0]`` (Podell et al. 2023, sec. 2.2).

        (Podell et al. 2023: "SDXL: Improving Latent Diffusion Models for High-Resolution Image Synthesis".)
        ``added_cond_kwargs`` holds ``text_embeds [B, P]`` and ``time_ids [B, K]`` (base: original size, crop
        top-left, target size; refiner: original size, crop, aesthetic score); the features are cast to ``dtype``,
        the timestep embedding's, before the MLP.
        """
        given = added_cond_kwargs or {}
        missing = [key for key in ADDED_COND_KEYS if given.get(key) is None]
        if missing:
            shown = ", ".join(f'"{key}"' for key in missing)
            raise ValueError(
                'unet: addition_embed_type "text_time" (SDXL) needs added_cond_kwargs "text_embeds" [B, P] and '
                f'"time_ids" [B, K]; missing {shown}'
            )
        text_embeds, time_ids = given["text_embeds"], given["time_ids"]
        time_embeds = self.add_time_proj(time_ids.flatten())  # [B, K] -> [B * K] -> [B * K, D] (fp32)
        time_embeds = time_embeds.reshape(text_embeds.shape[0], -1)  # [B * K, D] -> [B, K * D]
        features = torch.cat([text_embeds, time_embeds], dim=-1)  # [B, P] + [B, K * D] -> [B, P + K * D]
        expected = self.config.projection_class_embeddings_input_dim
        if features.shape[-1] != expected:
            raise ValueError(
                f"unet: text_embeds {list(text_embeds.shape)} and time_ids {list(time_ids.shape)} make "
                f"{features.shape[-1]} features; this UNet's projection_class_embeddings_input_dim is {expected}"
            )
        return self.add_embedding(features.to(dtype))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        *,
        added_cond_kwargs: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Predict the model output for ``sample [B, C, H, W]`` at ``timestep`` given text ``[B, T, D]``.

        ``added_cond_kwargs`` (diffusers' name) is needed by, and only read by, ``addition_embed_type="text_time"``
        (SDXL) UNets: ``{"text_embeds": [B, P], "time_ids": [B, K]}`` (Podell et al. 2023, sec. 2.2); other UNets
        ignore it, as diffusers' do.
        """
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        temb = self.embed_timesteps(timestep, sample)
        if self.config.addition_embed_type == "text_time":
            temb = temb + self.embed_added_conditions(added_cond_kwargs, temb.dtype)
        x = self.conv_in(sample)

        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, encoder_hidden_states)
            skips.extend(block_skips)

        x = self.mid_block(x, temb, encoder_hidden_states)

        for block in self.up_blocks:
            upsample_size = None
            if block.upsamplers:
                upsample_size = tuple(skips[-len(block.resnets) - 1].shape[-2:])
            x = block(x, skips, temb, encoder_hidden_states, upsample_size)

        return self.conv_out(torch.nn.functional.silu(self.conv_norm_out(x)))
