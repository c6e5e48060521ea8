"""A pipeline from one original-layout checkpoint file: the family from its keys, each component's architecture from
its tensors, the weights streamed into modules built without memory, and what the file lacks (scheduler,
tokenizers, the configs tensors cannot tell) from the family's shipped configs. Nothing in the file is executed."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, WeightsError
from ..models.clip import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from ..models.loading import _listing, check_state_dict
from ..models.tokenizer import CLIPTokenizer
from ..models.unet import UNet2DConditionConfig, UNet2DConditionModel
from ..models.vae import AutoencoderKL
from ..schedulers import SchedulerMixin, resolve_scheduler
from . import architecture as arch
from . import family as families
from .checkpoint import Checkpoint, file_sha256
from .keys import UNET_PREFIX, VAE_PREFIX, Source, clip_l_source, open_clip_source, unet_source
from .vae_file import load_ldm_vae

PREDICTION_TYPES = ("epsilon", "v_prediction")
SD2_DEFAULT_PREDICTION = "v_prediction"  # SD 2.0 / 2.1 768-v, the SD 2.x most files are
SD2_SAMPLE_SIZES = {"v_prediction": 96, "epsilon": 64}  # latent size: 768-v and the 512 "base" models
PAD_TOKENS = {"clip_l": "<|endoftext|>", "open_clip": "!"}  # what the two tokenizer families pad with
# keys real files carry that no component reads: training buffers, EMA bookkeeping, CLIP's position ids
_IGNORED_SUFFIXES = ("embeddings.position_ids", "logit_scale")


def _ignored(key: str) -> bool:
    return key.endswith(_IGNORED_SUFFIXES)


class _Reader:
    """Stored tensors by key, keeping the last one read (OpenCLIP's q, k and v come from one ``in_proj``)."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self._last: tuple[str, torch.Tensor] | None = None

    def __call__(self, key: str) -> torch.Tensor:
        if self._last is None or self._last[0] != key:
            self._last = (key, self.checkpoint.tensor(key))
        return self._last[1]


def load_component(checkpoint: Checkpoint, build: Callable[[], torch.nn.Module], source: Callable[[str], Source],
                   prefixes: Sequence[str], what: str, dtype: torch.dtype, device: torch.device | str,
                   unused: Callable[[str], bool] = _ignored) -> torch.nn.Module:
    """Build a module without allocating it, then fill each parameter from its place in the file (converted to
    ``dtype`` on ``device`` one tensor at a time, so the weights are in memory once); every key under ``prefixes``
    must be used or known to be unused, as strict loading asks."""
    with torch.device("meta"):
        module = build()
    read = _Reader(checkpoint)
    state: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    used: set[str] = set()
    for name in module.state_dict():
        place = source(name)
        if place.key not in checkpoint:
            missing.append(place.key)
            continue
        tensor = place.take(read(place.key))
        state[name] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)
        used.add(place.key)
    unexpected = [key for prefix in prefixes for key in checkpoint.keys_under(prefix)
                  if key not in used and not unused(key)]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys ({_listing(missing)})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys ({_listing(unexpected)})")
    if problems:
        raise WeightsError(f"{checkpoint.path}: its {what} does not fit the architecture its tensors describe: "
                           + "; ".join(problems))
    check_state_dict(module, state, f"{checkpoint.path} ({what})")
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval()


def _unet(checkpoint: Checkpoint, config: dict[str, Any], dtype: torch.dtype,
          device: torch.device | str) -> UNet2DConditionModel:
    unet_config = UNet2DConditionConfig.from_dict(config)
    layers = unet_config.layers_per_block
    up_attention = {i for i, kind in enumerate(unet_config.up_block_types) if kind.startswith("CrossAttn")}
    unet = load_component(checkpoint, lambda: UNet2DConditionModel(unet_config),
                          lambda key: unet_source(key, layers, up_attention), [UNET_PREFIX], "UNet", dtype, device)
    return unet.to(memory_format=torch.channels_last) if torch.device(device).type == "cuda" else unet


def _vae(checkpoint: Checkpoint, family: str, dtype: torch.dtype, device: torch.device | str) -> AutoencoderKL:
    return load_ldm_vae(checkpoint, VAE_PREFIX, arch.default_config(family, "vae"), dtype, device)


def _clip_l(checkpoint: Checkpoint, family: str, prefix: str, component: str, dtype: torch.dtype,
            device: torch.device | str) -> CLIPTextModel:
    config = CLIPTextConfig.from_dict(arch.clip_l_config(checkpoint, family, prefix, component))
    root = prefix.removesuffix("text_model.")  # our keys start with text_model.
    return load_component(checkpoint, lambda: CLIPTextModel(config), lambda key: clip_l_source(key, root),
                          [root], "text encoder", dtype, device)


def _open_clip(checkpoint: Checkpoint, family: str, prefix: str, component: str, dtype: torch.dtype,
               device: torch.device | str) -> CLIPTextModel:
    config = CLIPTextConfig.from_dict(arch.open_clip_config(checkpoint, family, prefix, component))
    cls = CLIPTextModelWithProjection if family == "sdxl" else CLIPTextModel
    layers = config.num_hidden_layers

    def unused(key: str) -> bool:  # SD 2.x: the last resblock and the projection, which it never uses
        if _ignored(key):
            return True
        return family == "sd2" and (key == prefix + "text_projection"
                                    or key.startswith(f"{prefix}transformer.resblocks.{layers}."))

    return load_component(checkpoint, lambda: cls(config),
                          lambda key: open_clip_source(key, prefix, config.hidden_size), [prefix],
                          "text encoder" if component == "text_encoder" else "second text encoder", dtype, device,
                          unused)


def _scheduler(family: str, prediction_type: str | None) -> SchedulerMixin:
    config = arch.default_config(family, "scheduler")
    if prediction_type is not None:
        config["prediction_type"] = prediction_type
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # keys of other scheduler families in the file are expected
        return resolve_scheduler(config["_class_name"]).cls.from_config(config)


def _prediction_type(family: str, given: str | None, path: Path) -> str | None:
    """The prediction type to run with: the given one, else SD 2.x's is assumed (the file cannot tell), with a
    warning; SD 1.x and SDXL default to their configs' epsilon."""
    if given is not None and given not in PREDICTION_TYPES:
        raise ConfigError(f"prediction_type {given!r} is not one of {', '.join(PREDICTION_TYPES)}")
    if given is None and family == "sd2":
        warnings.warn(f"{path.name}: an SD 2.x file does not say what its UNet predicts; assuming "
                      f"{SD2_DEFAULT_PREDICTION} (SD 2.x 768-v); pass --prediction-type epsilon (Python: "
                      "prediction_type='epsilon') for SD 2.x-base 512 models", UserWarning, stacklevel=3)
        return SD2_DEFAULT_PREDICTION
    return given


# the config keys the record shows of each component: what was read from the tensors
INFERRED_KEYS = {
    "unet": ("block_out_channels", "layers_per_block", "transformer_layers_per_block", "cross_attention_dim",
             "attention_head_dim", "use_linear_projection", "addition_embed_type"),
    "vae": ("block_out_channels", "layers_per_block", "latent_channels", "scaling_factor"),
    "text_encoder": ("hidden_size", "num_hidden_layers", "num_attention_heads", "hidden_act"),
    "text_encoder_2": ("hidden_size", "num_hidden_layers", "num_attention_heads", "hidden_act", "projection_dim"),
}


def file_record(path: Path) -> dict[str, Any]:
    """A weights file for the record: its path, sha256 and A1111's short hash (the sha256's first 10 digits)."""
    digest = file_sha256(path)
    return {"file": str(path), "sha256": digest, "hash": digest[:10]}


def provenance(checkpoint: Checkpoint, family: str, pipeline: Any) -> dict[str, Any]:
    """What the record says of a pipeline loaded from a file: the file, its hash, its family, its prediction type
    and the architecture read from its tensors."""
    inferred = {name: {key: _plain(getattr(module.config, key)) for key in INFERRED_KEYS[name]}
                for name, module in pipeline.modules().items()}
    return {**file_record(checkpoint.path), "family": families.FAMILY_NAMES[family],
            "prediction_type": pipeline.scheduler.config.prediction_type, "inferred": inferred}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def load_single_file(path: str | Path, families_allowed: Sequence[str] = families.FAMILIES, *,
                     dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                     allow_pickle: bool = False, clip_skip: int | None = None,
                     prediction_type: str | None = None) -> Any:
    """The SD 1.x / 2.x or SDXL pipeline of one checkpoint file (``families_allowed``: the classes the caller
    builds; another family is refused naming the class that loads it)."""
    from ..stable_diffusion import StableDiffusionPipeline
    from ..stable_diffusion_xl import StableDiffusionXLPipeline

    checkpoint = Checkpoint(path, allow_pickle)
    family = families.classify(checkpoint)
    if family not in families_allowed:
        right = "StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline"
        raise WeightsError(f"{checkpoint.path} is an {families.FAMILY_NAMES[family]} checkpoint; load it with "
                           f"{right}.from_single_file or DiffusionPipeline.from_single_file")
    prediction = _prediction_type(family, prediction_type, checkpoint.path)
    scheduler = _scheduler(family, prediction)
    vae = _vae(checkpoint, family, dtype, device)
    name = str(path)
    if family == "sdxl":
        text_encoder = _clip_l(checkpoint, family, families.CLIP_L_SDXL, "text_encoder", dtype, device)
        text_encoder_2 = _open_clip(checkpoint, family, families.OPEN_CLIP_SDXL, "text_encoder_2", dtype, device)
        unet_config = arch.unet_config(checkpoint, family, text_encoder_2.config.projection_dim)
        unet = _unet(checkpoint, unet_config, dtype, device)
        tokenizers = [CLIPTokenizer.from_bpe_file(arch.BPE_FILE, PAD_TOKENS[kind]) for kind in ("clip_l", "open_clip")]
        pipeline = StableDiffusionXLPipeline(tokenizers[0], tokenizers[1], text_encoder, text_encoder_2, unet, vae,
                                             scheduler, name=name, clip_skip=clip_skip)
        pipeline.provenance = provenance(checkpoint, family, pipeline)
        return pipeline
    if family == "sd2":
        text_encoder = _open_clip(checkpoint, family, families.OPEN_CLIP_SD2, "text_encoder", dtype, device)
        pad = PAD_TOKENS["open_clip"]
    else:
        text_encoder = _clip_l(checkpoint, family, families.CLIP_L_SD1, "text_encoder", dtype, device)
        pad = PAD_TOKENS["clip_l"]
    unet_config = arch.unet_config(checkpoint, family)
    if family == "sd2":
        unet_config["sample_size"] = SD2_SAMPLE_SIZES[prediction]
    unet = _unet(checkpoint, unet_config, dtype, device)
    pipeline = StableDiffusionPipeline(CLIPTokenizer.from_bpe_file(arch.BPE_FILE, pad), text_encoder, unet, vae,
                                       scheduler, name=name, clip_skip=clip_skip)
    pipeline.provenance = provenance(checkpoint, family, pipeline)
    return pipeline
