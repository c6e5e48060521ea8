"""The front door: a model name (builtin, folder or hub id) -> a pipeline, or just its scheduler config."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import ConfigError, WeightsError
from .schedulers import SchedulerMixin

if TYPE_CHECKING:  # the pipelines load only when a model does, so listing schedulers starts fast
    from .pipeline import DiffusionPipeline

BUILTIN_SHAPES = "builtin:shapes"

# The scheduler_config.json shipped with Stable Diffusion 1.5: builtin:shapes trains on the same schedule.
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a pipeline needs from a hub repository: configs, tokenizer files and safetensors weights only.
HUB_PATTERNS = ("model_index.json", "*/config.json", "scheduler/scheduler_config.json", "tokenizer/*", "tokenizer_2/*")
# The pipeline classes a model_index.json may name, and the module that defines each.
PIPELINE_CLASSES = {
    "StableDiffusionPipeline": "stable_diffusion",
    "StableDiffusionXLPipeline": "stable_diffusion_xl",
}


def resolve_model_folder(model: str, variant: str | None = None, scheduler_only: bool = False) -> Path:
    """A local diffusers folder for ``model``: the folder itself, or a hub id fetched with huggingface_hub
    (configs, tokenizers and safetensors weights; only the index and scheduler config with ``scheduler_only``)."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        return folder
    if not HUB_ID.match(model):
        raise WeightsError(
            f"model {model!r} is neither {BUILTIN_SHAPES!r}, an existing folder, nor a hub id (owner/name)"
        )
    weights = f"*/*.{variant}.safetensors" if variant else "*/*.safetensors"
    patterns = [*HUB_PATTERNS, weights, f"{weights}.index.json"]
    if scheduler_only:
        patterns = ["model_index.json", "scheduler/scheduler_config.json"]
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                model,
                allow_patterns=patterns,
                local_files_only=os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"),
            )
        )
    except ImportError:
        raise WeightsError(
            f"cannot fetch {model!r}: huggingface_hub is not installed; pass a local folder with --model"
        ) from None
    except Exception as err:  # network, authentication and cache errors all end the same way for the user
        raise WeightsError(
            f"cannot fetch {model!r} from the Hugging Face Hub and it is not in the local cache "
            f"({type(err).__name__}); download it where there is a network and pass --model /path/to/the/folder"
        ) from None


def read_model_index(folder: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """``model_index.json`` of a diffusers folder, checked to name the ``required`` component folders."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise WeightsError(f"{folder} is not a diffusers model folder: it has no model_index.json")
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise WeightsError(f"{index_file} is not valid JSON ({err})") from None
    if not isinstance(index, dict):
        raise WeightsError(f"{index_file} must hold a JSON object, not {type(index).__name__}")
    missing = [name for name in required if not (folder / name).is_dir()]
    if missing:
        kind = index.get("_class_name", "Stable Diffusion")
        raise WeightsError(f"{folder} lacks the component folders {', '.join(missing)} of a {kind} model")
    return index


def pipeline_class(folder: Path) -> type[DiffusionPipeline]:
    """The pipeline class a diffusers folder's ``model_index.json`` names (``_class_name``)."""
    import importlib

    name = read_model_index(folder).get("_class_name", "StableDiffusionPipeline")
    if name not in PIPELINE_CLASSES:
        raise WeightsError(f"{folder}: model_index.json names {name!r}; supported: {', '.join(PIPELINE_CLASSES)}")
    return getattr(importlib.import_module(f".{PIPELINE_CLASSES[name]}", __package__), name)


def load_pipeline(
    model: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
    clip_skip: int | None = None,
    prediction_type: str | None = None,
    vae: str | None = None,
) -> DiffusionPipeline:
    """The pipeline for ``builtin:shapes``, a checkpoint file, a diffusers folder or a hub id, on ``device`` in
    ``dtype`` (``prediction_type``: what a checkpoint file's UNet predicts, where the file cannot tell; ``vae``: a
    VAE file or folder to decode with instead of the model's)."""
    pipeline = _load_model(model, device, dtype, allow_pickle, clip_skip, prediction_type)
    if vae is not None:
        from .single_file.loader import file_record
        from .single_file.vae_file import load_vae

        if not hasattr(pipeline, "replace_vae"):
            raise ConfigError(f"--vae applies to latent-diffusion models; {model} has no VAE")
        pipeline.replace_vae(load_vae(vae, pipeline.vae.config, dtype, device, allow_pickle), vae)
        vae_path = Path(vae).expanduser()
        record = file_record(vae_path) if vae_path.is_file() else {"folder": str(vae_path)}
        pipeline.provenance = {**(pipeline.provenance or {}), "vae": record}
    return pipeline


def _load_model(model: str, device: torch.device | str, dtype: torch.dtype, allow_pickle: bool,
                clip_skip: int | None, prediction_type: str | None) -> DiffusionPipeline:
    """The model alone (see load_pipeline)."""
    from .builtin import ShapesPipeline
    from .single_file.checkpoint import is_single_file

    if model == BUILTIN_SHAPES:
        if clip_skip:
            raise ConfigError(f"clip_skip applies to models with a CLIP text encoder; {BUILTIN_SHAPES} has none")
        return ShapesPipeline(device=device, dtype=dtype)
    if is_single_file(model):
        from .single_file.loader import load_single_file

        return load_single_file(model, dtype=dtype, device=device, allow_pickle=allow_pickle, clip_skip=clip_skip,
                                prediction_type=prediction_type)
    variant = "fp16" if dtype == torch.float16 else None
    folder = resolve_model_folder(model, variant)
    if variant and not any(folder.glob("unet/*.fp16.safetensors")):
        variant = None  # no fp16 files: load the full-precision ones and cast
        folder = resolve_model_folder(model)
    pipeline = pipeline_class(folder).from_pretrained(folder, dtype, device, variant, allow_pickle, clip_skip)
    pipeline.name = model
    return pipeline


def load_scheduler_config(model: str) -> dict[str, Any]:
    """The model's scheduler config alone (no weights): the built-in one, or ``<folder>/scheduler/``."""
    if model == BUILTIN_SHAPES:
        return dict(SD15_SCHEDULER_CONFIG)
    from .single_file.checkpoint import is_single_file

    if is_single_file(model):
        from .single_file.architecture import default_config
        from .single_file.checkpoint import Checkpoint
        from .single_file.family import classify

        return default_config(classify(Checkpoint(model)), "scheduler")  # pickles: only where --allow-pickle is
    return SchedulerMixin.load_config(resolve_model_folder(model, scheduler_only=True), subfolder="scheduler")
