"""The architecture of a checkpoint's components, read from its tensors' names and shapes: channel widths, levels,
layers per block, transformer depth per level, context width, text-encoder widths and depths, so fine-tunes,
pruned files and tiny test files load alike. What tensors cannot tell (head counts, group counts, sample sizes,
the VAE's latent scale) comes from the family's published configs, shipped in ``configs/``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import WeightsError
from .checkpoint import Checkpoint
from .keys import UNET_PREFIX

CONFIGS = Path(__file__).with_name("configs")
BPE_FILE = CONFIGS / "bpe_simple_vocab_16e6.txt.gz"
CONFIG_FOLDERS = {"sd1": "sd15", "sd2": "sd21", "sdxl": "sdxl"}
HEAD_WIDTH = 64  # channels per attention head in SD 2.x / SDXL UNets and in every CLIP text encoder
SD1_HEADS = 8  # SD 1.x UNets have 8 heads at every level, whatever the width


def default_config(family: str, component: str) -> dict[str, Any]:
    """A published config of the family (SD 1.5, SD 2.1 768-v, SDXL base 1.0) for one component folder."""
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    return json.loads((CONFIGS / CONFIG_FOLDERS[family] / component / name).read_text(encoding="utf-8"))


def indices(checkpoint: Checkpoint, prefix: str) -> list[int]:
    """The sorted integers ``i`` of the keys ``<prefix><i>.*``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m[1]) for key in checkpoint.shapes if (m := pattern.match(key))})


def shape(checkpoint: Checkpoint, key: str) -> tuple[int, ...]:
    """The stored shape of ``key``; a file without it is not a complete checkpoint of its kind."""
    if key not in checkpoint:
        raise WeightsError(f"{checkpoint.path} lacks {key}: it is not a complete checkpoint")
    return checkpoint.shapes[key]


def _heads(checkpoint: Checkpoint, width: int, what: str) -> int:
    if width % HEAD_WIDTH:
        raise WeightsError(f"{checkpoint.path}: {what} has width {width}, not a multiple of {HEAD_WIDTH} channels per "
                           "attention head; the head count cannot be told from the file")
    return width // HEAD_WIDTH


def unet_levels(checkpoint: Checkpoint) -> list[list[int]]:
    """The ``input_blocks`` indices of each encoder stage's resnets (downsamplers end stages)."""
    levels: list[list[int]] = [[]]
    for i in indices(checkpoint, UNET_PREFIX + "input_blocks."):
        if i == 0:
            continue
        if f"{UNET_PREFIX}input_blocks.{i}.0.op.weight" in checkpoint:
            levels.append([])
        else:
            levels[-1].append(i)
    return levels


def _depth(checkpoint: Checkpoint, block: str) -> int:
    """Transformer blocks in the spatial transformer at ``block`` (0: none there)."""
    return len(indices(checkpoint, f"{UNET_PREFIX}{block}.transformer_blocks."))


def unet_config(checkpoint: Checkpoint, family: str, pooled_width: int | None = None) -> dict[str, Any]:
    """The UNet's ``config.json`` (Rombach et al. 2022; SDXL: Podell et al. 2023) as the file's tensors give it."""
    config = default_config(family, "unet")
    levels = unet_levels(checkpoint)
    counts = {len(level) for level in levels}
    if len(counts) != 1 or 0 in counts:
        raise WeightsError(f"{checkpoint.path}: its UNet stages have {[len(level) for level in levels]} resnets; "
                           "a Stable Diffusion UNet has the same number in every stage")
    layers = counts.pop()
    channels = [shape(checkpoint, f"{UNET_PREFIX}input_blocks.{level[0]}.0.out_layers.3.weight")[0] for level in levels]
    depths = [_depth(checkpoint, f"input_blocks.{level[0]}.1") for level in levels]
    attention = [f"input_blocks.{level[0]}.1" for level, depth in zip(levels, depths, strict=True) if depth]
    if not attention:
        raise WeightsError(f"{checkpoint.path}: its UNet has no cross-attention; it is not a text-to-image UNet")
    first = f"{UNET_PREFIX}{attention[0]}"
    context = shape(checkpoint, f"{first}.transformer_blocks.0.attn2.to_k.weight")[1]
    linear = len(shape(checkpoint, f"{first}.proj_in.weight")) == 2
    mid_depth = _depth(checkpoint, "middle_block.1")
    per_level = [depth or 1 for depth in depths]
    if mid_depth != per_level[-1]:
        raise WeightsError(f"{checkpoint.path}: its middle block has {mid_depth} transformer blocks and its last stage "
                           f"{per_level[-1]}; diffusers' UNet gives both the same depth")
    conv_in = shape(checkpoint, f"{UNET_PREFIX}input_blocks.0.0.weight")
    heads: int | list[int] = SD1_HEADS if family == "sd1" else [  # stages without attention: any count, as SDXL's
        _heads(checkpoint, width, f"UNet stage {i}") if depth else max(1, width // HEAD_WIDTH)
        for i, (width, depth) in enumerate(zip(channels, depths, strict=True))]
    config.update(
        in_channels=conv_in[1],
        out_channels=shape(checkpoint, f"{UNET_PREFIX}out.2.weight")[0],
        block_out_channels=channels,
        layers_per_block=layers,
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        up_block_types=["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)],
        attention_head_dim=heads,
        cross_attention_dim=context,
        transformer_layers_per_block=per_level if len(set(per_level)) > 1 else per_level[0],
        use_linear_projection=linear,
    )
    added = f"{UNET_PREFIX}label_emb.0.0.weight"
    if added in checkpoint:
        in_features = shape(checkpoint, added)[1]
        time_features = in_features - (pooled_width or 0)
        if pooled_width is None or time_features <= 0 or time_features % 6:
            raise WeightsError(f"{checkpoint.path}: its UNet's added embedding takes {in_features} features, which do "
                               "not split into the pooled text embedding and 6 time ids")
        config.update(addition_embed_type="text_time", addition_time_embed_dim=time_features // 6,
                      projection_class_embeddings_input_dim=in_features)
    return config


def vae_config(checkpoint: Checkpoint, prefix: str, base: dict[str, Any]) -> dict[str, Any]:
    """A VAE's ``config.json`` (the LDM autoencoder, Rombach et al. 2022): ``base`` (the family's, or the model's
    for a swapped VAE) with the widths and depths the tensors under ``prefix`` show."""
    levels = indices(checkpoint, prefix + "encoder.down.")
    if not levels:
        raise WeightsError(f"{checkpoint.path} has no VAE ({prefix}encoder.down.*)")
    channels = [shape(checkpoint, f"{prefix}encoder.down.{i}.block.0.conv1.weight")[0] for i in levels]
    return {
        **base,
        "in_channels": shape(checkpoint, f"{prefix}encoder.conv_in.weight")[1],
        "out_channels": shape(checkpoint, f"{prefix}decoder.conv_out.weight")[0],
        "block_out_channels": channels,
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "layers_per_block": len(indices(checkpoint, f"{prefix}encoder.down.0.block.")),
        "latent_channels": shape(checkpoint, f"{prefix}decoder.conv_in.weight")[1],
    }


def clip_l_config(checkpoint: Checkpoint, family: str, prefix: str, component: str = "text_encoder") -> dict[str, Any]:
    """An OpenAI CLIP text encoder's ``config.json`` (Radford et al. 2021) from the tensors under ``prefix``."""
    config = default_config(family, component)
    vocab, width = shape(checkpoint, f"{prefix}embeddings.token_embedding.weight")
    config.update(
        vocab_size=vocab,
        hidden_size=width,
        max_position_embeddings=shape(checkpoint, f"{prefix}embeddings.position_embedding.weight")[0],
        num_hidden_layers=len(indices(checkpoint, f"{prefix}encoder.layers.")),
        intermediate_size=shape(checkpoint, f"{prefix}encoder.layers.0.mlp.fc1.weight")[0],
        num_attention_heads=_heads(checkpoint, width, "the text encoder"),
        hidden_act="quick_gelu",
    )
    return config


def open_clip_layers(checkpoint: Checkpoint, family: str, prefix: str) -> int:
    """Layers of an OpenCLIP encoder that are used: SD 2.x conditions on the penultimate layer, so its files'
    last resblock is unused (diffusers' SD 2.x encoder has 23 of ViT-H's 24); SDXL uses all of them."""
    stored = len(indices(checkpoint, f"{prefix}transformer.resblocks."))
    return stored - 1 if family == "sd2" else stored


def open_clip_config(checkpoint: Checkpoint, family: str, prefix: str, component: str) -> dict[str, Any]:
    """An OpenCLIP text encoder's ``config.json`` (Cherti et al. 2023) from the tensors under ``prefix``."""
    config = default_config(family, component)
    vocab, width = shape(checkpoint, f"{prefix}token_embedding.weight")
    config.update(
        vocab_size=vocab,
        hidden_size=width,
        max_position_embeddings=shape(checkpoint, f"{prefix}positional_embedding")[0],
        num_hidden_layers=open_clip_layers(checkpoint, family, prefix),
        intermediate_size=shape(checkpoint, f"{prefix}transformer.resblocks.0.mlp.c_fc.weight")[0],
        num_attention_heads=_heads(checkpoint, width, "the text encoder"),
        hidden_act="gelu",
    )
    if family == "sdxl":
        config["projection_dim"] = shape(checkpoint, f"{prefix}text_projection")[1]
    return config
