"""Tiny SD 1.x, SD 2.x (v-prediction) and SDXL pipelines, and a writer of their original-layout single files.

``build_tiny`` saves a randomly initialised diffusers pipeline as a folder; ``write_single_file`` turns that folder's
weights into ONE ``.safetensors`` file in the LDM/SGM layout of A1111/ComfyUI checkpoints (the inverse of diffusers'
``from_single_file`` conversion, written from the key rules, for arbitrary level counts and ``layers_per_block``).

The tiny models keep the conventions a shape-based loader relies on, because they cannot be read from tensors:
32 GroupNorm groups everywhere; SD1 UNets have 8 attention heads, SD2/SDXL UNets 64 channels per head; CLIP text
encoders 64 channels per head, the real 49408-token vocabulary (a single file carries no tokenizer) and 77 positions.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import diffusers
import safetensors.torch
import torch
import transformers
from tiny_sd import FIXTURES, SCHEDULER_CONFIGS, write_clip_vocab

FAMILIES = ("sd1", "sd2v", "sdxl")
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIXES = {"sd1": "cond_stage_model.transformer.", "sdxl": "conditioner.embedders.0.transformer."}
OPEN_CLIP_PREFIXES = {"sd2v": "cond_stage_model.model.", "sdxl": "conditioner.embedders.1.model."}


def text_encoder_config(hidden_size: int, num_hidden_layers: int, hidden_act: str,
                        projection_dim: int = 64) -> transformers.CLIPTextConfig:
    """A tiny CLIP text config: real vocabulary and positions, 64 channels per head, legacy eos_token_id=2."""
    return transformers.CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1,
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=hidden_size // 64, hidden_act=hidden_act, projection_dim=projection_dim,
    )


def tiny_vae(**extra) -> diffusers.AutoencoderKL:
    """A tiny AutoencoderKL with 32 GroupNorm groups and two levels."""
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=32, sample_size=32, **extra,
    )


def tokenizer_from_fixture(folder: Path, style: str) -> transformers.CLIPTokenizer:
    """The real CLIP vocabulary with the special-token JSONs of ``fixtures/clip-tokenizer/<style>``."""
    vocab = write_clip_vocab(folder)
    for file in (FIXTURES / "clip-tokenizer" / style).glob("*.json"):
        shutil.copy(file, vocab)
    return transformers.CLIPTokenizer.from_pretrained(vocab)


def scheduler_for(name: str) -> diffusers.SchedulerMixin:
    """The scheduler of ``SCHEDULER_CONFIGS[name]``, of the class the config names."""
    config = SCHEDULER_CONFIGS[name]
    return getattr(diffusers, config["_class_name"]).from_config(config)


def build_tiny(family: str, folder: Path, seed: int = 0) -> diffusers.DiffusionPipeline:
    """A random tiny pipeline of ``family`` (sd1, sd2v, sdxl), saved to ``folder`` and loaded back from it."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    torch.manual_seed(seed)
    vocab = folder.parent / f"{folder.name}-vocab"
    if family == "sdxl":
        unet = diffusers.UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 128), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(1, 1, 2), transformer_layers_per_block=(1, 1, 2), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 96,  # 6 time ids x 8 + text_encoder_2's projection_dim
            cross_attention_dim=64 + 128,  # the two encoders' widths
            norm_num_groups=32,
        )
        vae = tiny_vae(scaling_factor=0.13025, force_upcast=True)
        text_encoder = transformers.CLIPTextModel(text_encoder_config(64, 2, "quick_gelu")).eval()
        text_encoder_2 = transformers.CLIPTextModelWithProjection(
            text_encoder_config(128, 2, "gelu", projection_dim=96)).eval()
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
            tokenizer=tokenizer_from_fixture(vocab, "sd1"),
            tokenizer_2=tokenizer_from_fixture(folder.parent / f"{folder.name}-vocab-2", "sd2"),
            unet=unet, scheduler=scheduler_for("sdxl"), add_watermarker=False,
        )
        pipe.save_pretrained(folder)
        saved = diffusers.StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False)
    else:
        sd1 = family == "sd1"
        unet = diffusers.UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
            # SD1: 8 heads everywhere, as real SD1; SD2: 64 channels per head at every attention level
            block_out_channels=(32, 64) if sd1 else (64, 128),
            attention_head_dim=8 if sd1 else (1, 2),
            # SD1's last level has no attention (upsampler at output_blocks.{L}.1.conv); SD2's both levels have
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D" if sd1 else "CrossAttnDownBlock2D"),
            up_block_types=("UpBlock2D" if sd1 else "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=64, use_linear_projection=not sd1, upcast_attention=not sd1, norm_num_groups=32,
        )
        vae = tiny_vae()
        text_encoder = transformers.CLIPTextModel(
            text_encoder_config(64, 2, "quick_gelu" if sd1 else "gelu")).eval()
        pipe = diffusers.StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer_from_fixture(vocab, "sd1" if sd1 else "sd2"),
            unet=unet, scheduler=scheduler_for("sd15" if sd1 else "sd2v"), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(folder)
        saved = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
                                                                  requires_safety_checker=False)
    saved.set_progress_bar_config(disable=True)
    return saved


# ---------------------------------------------------------------------------------------------------------------
# diffusers -> original key mapping


RESNET_RENAMES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                  "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
            "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
            "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}


def unet_resnet_key(rest: str) -> str:
    """A diffusers ResnetBlock2D key tail (``norm1.weight``) in LDM's ResBlock names (``in_layers.0.weight``)."""
    module, _, leaf = rest.partition(".")
    return f"{RESNET_RENAMES[module]}.{leaf}"


def unet_key(key: str, layers_per_block: int, up_attention: set[int]) -> str:
    """One diffusers UNet2DConditionModel key in the LDM ``openaimodel.UNetModel`` layout (unprefixed)."""
    slots = layers_per_block + 1  # LDM slots per level: L resnet(+attention) slots and one sampler slot
    module, _, leaf = key.rpartition(".")
    if module in UNET_TOP:
        return f"{UNET_TOP[module]}.{leaf}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + block * slots + layer
        return f"input_blocks.{index}." + (f"0.{unet_resnet_key(rest)}" if kind == "resnets" else f"1.{rest}")
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * slots}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{unet_resnet_key(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * slots + layer
        return f"output_blocks.{index}." + (f"0.{unet_resnet_key(rest)}" if kind == "resnets" else f"1.{rest}")
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(m[1])
        # the upsampler follows the last slot's resnet (.0) and, in attention blocks, its attention (.1)
        return f"output_blocks.{block * slots + layers_per_block}.{2 if block in up_attention else 1}.conv.{m[2]}"
    raise KeyError(f"no LDM name for UNet key {key!r}")


def convert_unet(weights: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A diffusers UNet state dict in the LDM layout, under ``model.diffusion_model.``."""
    layers_per_block = config["layers_per_block"]
    if not isinstance(layers_per_block, int):
        raise ValueError("the LDM layout needs one int layers_per_block")
    up_attention = {int(k.split(".")[1]) for k in weights if re.match(r"up_blocks\.\d+\.attentions\.", k)}
    return {UNET_PREFIX + unet_key(k, layers_per_block, up_attention): v for k, v in weights.items()}


VAE_TOP = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_resnet_key(rest: str) -> str:
    """A diffusers VAE resnet key tail in LDM's names (only the shortcut is renamed)."""
    return rest.replace("conv_shortcut.", "nin_shortcut.")


def vae_key(key: str, num_up: int) -> str:
    """One diffusers AutoencoderKL key in the LDM ``autoencoder`` layout (unprefixed)."""
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    coder, _, key = key.partition(".")
    module, _, leaf = key.rpartition(".")
    if module in VAE_TOP:
        return f"{coder}.{VAE_TOP[module]}.{leaf}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"{coder}.down.{m[1]}.block.{m[2]}.{vae_resnet_key(m[3])}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"{coder}.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        # LDM numbers the decoder levels from the bottom: up_blocks.i is up.{n-1-i}
        return f"{coder}.up.{num_up - 1 - int(m[1])}.block.{m[2]}.{vae_resnet_key(m[3])}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"{coder}.up.{num_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{coder}.mid.block_{int(m[1]) + 1}.{vae_resnet_key(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
        return f"{coder}.mid.attn_1.{VAE_ATTENTION[m[1]]}.{m[2]}"
    raise KeyError(f"no LDM name for VAE key {coder}.{key!r}")


def convert_vae(weights: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict in the LDM layout, under ``first_stage_model.``."""
    num_up = len(config["up_block_types"])
    out = {}
    for key, value in weights.items():
        name = vae_key(key, num_up)
        if ".mid.attn_1." in name and name.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
            value = value.reshape(*value.shape, 1, 1)  # Linear [C, C] -> LDM's 1x1 Conv2d [C, C, 1, 1]
        out[VAE_PREFIX + name] = value
    return out


def text_model_keys(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIPTextModel state dict with transformers' ``text_model.`` prefix (transformers 5 saves it flattened)."""
    out = {}
    for key, value in weights.items():
        if key.endswith("position_ids"):
            continue
        out[key if key.startswith(("text_model.", "text_projection.")) else "text_model." + key] = value
    return out


def convert_clip(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModel state dict in the LDM FrozenCLIPEmbedder layout under ``prefix``."""
    return {prefix + k: v for k, v in text_model_keys(weights).items()}


OPEN_CLIP_TOP = {"embeddings.token_embedding.weight": "token_embedding.weight",
                 "embeddings.position_embedding.weight": "positional_embedding",
                 "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                   "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def convert_open_clip(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModel(WithProjection) state dict in the OpenCLIP layout under ``prefix``."""
    out = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in text_model_keys(weights).items():
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()  # Linear [proj, W] -> OpenCLIP's matrix [W, proj]
            continue
        key = key.removeprefix("text_model.")
        if key in OPEN_CLIP_TOP:
            out[OPEN_CLIP_TOP[key]] = value
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if m is None:
            raise KeyError(f"no OpenCLIP name for text encoder key {key!r}")
        layer, module, leaf = int(m[1]), m[2], m[3]
        if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv.setdefault((layer, leaf), {})[module.removeprefix("self_attn.")[0]] = value
        elif module in OPEN_CLIP_LAYER:
            out[f"transformer.resblocks.{layer}.{OPEN_CLIP_LAYER[module]}.{leaf}"] = value
        else:
            raise KeyError(f"no OpenCLIP name for text encoder key {key!r}")
    for (layer, leaf), parts in qkv.items():
        # q, k, v [W, W] / [W] -> in_proj_weight [3W, W] / in_proj_bias [3W], rows in q, k, v order
        out[f"transformer.resblocks.{layer}.attn.in_proj_{leaf}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return {prefix + k: v for k, v in out.items()}


def random_resblock(width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random OpenCLIP residual block of ``width`` (MLP ratio 2, as the tiny encoders)."""
    shapes = {"ln_1.weight": [width], "ln_1.bias": [width], "ln_2.weight": [width], "ln_2.bias": [width],
              "attn.in_proj_weight": [3 * width, width], "attn.in_proj_bias": [3 * width],
              "attn.out_proj.weight": [width, width], "attn.out_proj.bias": [width],
              "mlp.c_fc.weight": [2 * width, width], "mlp.c_fc.bias": [2 * width],
              "mlp.c_proj.weight": [width, 2 * width], "mlp.c_proj.bias": [width]}
    return {name: torch.randn(shape, generator=generator) * 0.02 for name, shape in shapes.items()}


def ddpm_buffers() -> dict[str, torch.Tensor]:
    """LatentDiffusion's registered schedule buffers (scaled_linear 0.00085..0.012, 1000 steps)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    return {"betas": betas.float(), "alphas_cumprod": alphas_cumprod.float(),
            "alphas_cumprod_prev": alphas_cumprod_prev.float()}


def load_component(folder: Path, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights and config.json of one saved component folder (single-shard safetensors)."""
    files = sorted((folder / name).glob("*.safetensors"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one .safetensors file in {folder / name}, found {len(files)}")
    return safetensors.torch.load_file(files[0]), json.loads((folder / name / "config.json").read_text())


def single_file_state_dict(folder: Path, family: str, extras: bool = True) -> dict[str, torch.Tensor]:
    """The original-layout state dict of a saved tiny pipeline folder, in the saved dtypes."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    state: dict[str, torch.Tensor] = {}
    state.update(convert_unet(*load_component(folder, "unet")))
    state.update(convert_vae(*load_component(folder, "vae")))
    text_weights, text_config = load_component(folder, "text_encoder")
    if family == "sd2v":
        state.update(convert_open_clip(text_weights, OPEN_CLIP_PREFIXES[family]))
    else:
        state.update(convert_clip(text_weights, CLIP_PREFIXES[family]))
    if family == "sdxl":
        state.update(convert_open_clip(load_component(folder, "text_encoder_2")[0], OPEN_CLIP_PREFIXES[family]))
    if extras:
        generator = torch.Generator().manual_seed(1234)
        state.update(ddpm_buffers())
        state["model_ema.decay"] = torch.tensor(0.9999)
        state["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int32)
        if family == "sd1":
            state[CLIP_PREFIXES["sd1"] + "text_model.embeddings.position_ids"] = torch.arange(77)[None]  # [1, 77]
        if family == "sd2v":
            # real SD2 files hold ViT-H's 24 blocks and its projection; diffusers' encoder uses the first 23
            width, layers = text_config["hidden_size"], text_config["num_hidden_layers"]
            prefix = OPEN_CLIP_PREFIXES["sd2v"]
            for name, value in random_resblock(width, generator).items():
                state[f"{prefix}transformer.resblocks.{layers}.{name}"] = value
            state[prefix + "text_projection"] = torch.randn(width, width, generator=generator) * 0.02
    return state


def write_single_file(folder: Path, family: str, path: Path, dtype: torch.dtype = torch.float32,
                      extras: bool = True) -> Path:
    """Write the saved pipeline ``folder`` as one original-layout ``.safetensors`` file, floats cast to ``dtype``."""
    state = single_file_state_dict(folder, family, extras)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(state, str(path), metadata={"format": "pt"})
    return path
