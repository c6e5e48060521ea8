"""Where each diffusers / transformers parameter lives in an original-layout checkpoint (the CompVis LDM and
Stability SGM code that A1111 and ComfyUI files come from), and how its tensor is cut out of the stored one.

Every function maps one of our module's state-dict keys (diffusers' names) to a :class:`Source`: the checkpoint
key and, where the layouts differ in shape, the change to apply (OpenCLIP stores q, k and v stacked in one
``in_proj``, the LDM VAE stores its attention projections as 1x1 convolutions, OpenCLIP's projection is transposed).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

# diffusers resnet names -> LDM ResBlock names (UNet) and the VAE's
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
_QKV = {"q_proj": 0, "k_proj": 1, "v_proj": 2}


@dataclass(frozen=True)
class Source:
    """A parameter's checkpoint key and the change from the stored tensor to ours (None: as stored)."""

    key: str
    change: Callable[[torch.Tensor], torch.Tensor] | None = None

    def take(self, stored: torch.Tensor) -> torch.Tensor:
        return stored if self.change is None else self.change(stored)


def _split(name: str, table: dict[str, str]) -> str | None:
    """The renamed head of ``name`` for the longest table entry it starts with, keeping the rest."""
    for ours in sorted(table, key=len, reverse=True):
        if name == ours or name.startswith(ours + "."):
            return table[ours] + name[len(ours):]
    return None


def _resnet(rest: str) -> str:
    return _split(rest, _UNET_RESNET) or rest


def unet_source(key: str, layers_per_block: int, up_attention: set[int]) -> Source:
    """A UNet parameter in ``model.diffusion_model.*`` (Rombach et al. 2022's openaimodel layout): encoder stage b's
    slot l is ``input_blocks.{1 + b(L+1) + l}`` (its downsampler the last slot), decoder stage b's
    ``output_blocks.{b(L+1) + l}`` (resnet ``.0``, attention ``.1``, upsampler after them). ``up_attention``:
    the decoder stages with attentions, whose upsampler is ``.2`` instead of ``.1``."""
    slots = layers_per_block + 1
    top = _split(key, _UNET_TOP)
    if top is not None:
        return Source(UNET_PREFIX + top)
    if match := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, slot, rest = int(match[1]), match[2], int(match[3]), match[4]
        part = f"0.{_resnet(rest)}" if kind == "resnets" else f"1.{rest}"
        return Source(f"{UNET_PREFIX}input_blocks.{1 + block * slots + slot}.{part}")
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return Source(f"{UNET_PREFIX}input_blocks.{(int(match[1]) + 1) * slots}.0.op.{match[2]}")
    if match := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        kind, slot, rest = match[1], int(match[2]), match[3]
        index = 1 if kind == "attentions" else 2 * slot
        return Source(f"{UNET_PREFIX}middle_block.{index}." + (_resnet(rest) if kind == "resnets" else rest))
    if match := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, slot, rest = int(match[1]), match[2], int(match[3]), match[4]
        part = f"0.{_resnet(rest)}" if kind == "resnets" else f"1.{rest}"
        return Source(f"{UNET_PREFIX}output_blocks.{block * slots + slot}.{part}")
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(match[1])
        place = 2 if block in up_attention else 1
        return Source(f"{UNET_PREFIX}output_blocks.{block * slots + layers_per_block}.{place}.conv.{match[2]}")
    raise KeyError(key)


def _vae_resnet(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut", 1)


def _as_linear(weight: torch.Tensor) -> torch.Tensor:
    return weight[:, :, 0, 0] if weight.ndim == 4 else weight  # 1x1 conv [C, C, 1, 1] -> linear [C, C]


def vae_source(key: str, levels: int, prefix: str = VAE_PREFIX) -> Source:
    """A VAE parameter in ``first_stage_model.*`` (or a standalone VAE file's root, ``prefix=""``): the LDM
    autoencoder's ``down.{i}.block.{j}``, ``mid.block_{1,2}`` / ``mid.attn_1`` and the decoder's ``up`` stages in
    reverse order (``up.{n-1-i}``) (Rombach et al. 2022)."""
    part, _, rest = key.partition(".")
    if rest in ("conv_norm_out.weight", "conv_norm_out.bias"):
        return Source(f"{prefix}{part}.norm_out.{rest.rsplit('.', 1)[1]}")
    if part in ("quant_conv", "post_quant_conv") or re.fullmatch(r"conv_(in|out)\.\w+", rest):
        return Source(prefix + key)
    if match := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        return Source(f"{prefix}{part}.down.{match[1]}.block.{match[2]}.{_vae_resnet(match[3])}")
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", rest):
        return Source(f"{prefix}{part}.down.{match[1]}.downsample.conv.{match[2]}")
    if match := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        return Source(f"{prefix}{part}.up.{levels - 1 - int(match[1])}.block.{match[2]}.{_vae_resnet(match[3])}")
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", rest):
        return Source(f"{prefix}{part}.up.{levels - 1 - int(match[1])}.upsample.conv.{match[2]}")
    if match := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
        return Source(f"{prefix}{part}.mid.block_{int(match[1]) + 1}.{_vae_resnet(match[2])}")
    if match := re.fullmatch(r"mid_block\.attentions\.0\.(.+)\.(weight|bias)", rest):
        name = _VAE_ATTENTION[match[1]]
        change = _as_linear if match[2] == "weight" and name != "norm" else None
        return Source(f"{prefix}{part}.mid.attn_1.{name}.{match[2]}", change)
    raise KeyError(key)


def clip_l_source(key: str, prefix: str) -> Source:
    """An OpenAI CLIP text-encoder parameter (SD 1.x, SDXL's first encoder): stored under ``prefix`` with
    transformers' own names (Radford et al. 2021)."""
    return Source(prefix + key)


def open_clip_source(key: str, prefix: str, width: int) -> Source:
    """An OpenCLIP text-encoder parameter (SD 2.x, SDXL's second encoder; Cherti et al. 2023) in open_clip's
    layout: ``transformer.resblocks.{i}`` with q, k, v stacked in ``attn.in_proj`` ([3W, W]: rows W each) and
    ``text_projection`` stored as x @ P, i.e. the transpose of our Linear weight."""
    if key == "text_projection.weight":
        return Source(prefix + "text_projection", lambda stored: stored.t().contiguous())
    fixed = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
             "text_model.embeddings.position_embedding.weight": "positional_embedding"}
    if key in fixed:
        return Source(prefix + fixed[key])
    if key.startswith("text_model.final_layer_norm."):
        return Source(prefix + "ln_final." + key.rsplit(".", 1)[1])
    match = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", key)
    if match is None:
        raise KeyError(key)
    layer, rest = match[1], match[2]
    block = f"{prefix}transformer.resblocks.{layer}."
    if qkv := re.fullmatch(r"self_attn\.(q_proj|k_proj|v_proj)\.(weight|bias)", rest):
        rows = slice(_QKV[qkv[1]] * width, (_QKV[qkv[1]] + 1) * width)
        return Source(f"{block}attn.in_proj_{qkv[2]}", lambda stored: stored[rows].contiguous())
    renamed = _split(rest, _OPEN_CLIP_LAYER)
    if renamed is None:
        raise KeyError(key)
    return Source(block + renamed)
