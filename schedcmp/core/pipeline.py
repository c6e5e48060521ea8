"""The base of every pipeline: what the engine drives (encode, denoise one batch, decode), the diffusers front door
(``DiffusionPipeline.from_pretrained``, ``.to``) and the images' final forms."""

from __future__ import annotations

import platform
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import PIL
import torch
from PIL import Image

from .conditioning import Conditioning
from .errors import ConfigError
from .schedulers import SchedulerMixin

OutputType = Literal["pil", "np", "pt", "latent"]
OUTPUT_TYPES: tuple[str, ...] = ("pil", "np", "pt", "latent")
# The tensors a step callback may read and replace (diffusers' names), each mapped to where it lives: the latents,
# the negative prompt's embeddings, or a field of the batched [uncond, cond] conditioning.
TEXT_CALLBACK_TENSORS = {"latents": "latents", "prompt_embeds": "embeddings", "negative_prompt_embeds": "negative"}


@dataclass
class PipelineOutput:
    """What a pipeline call returns: ``images`` (PIL images, an array, a tensor or latents, per ``output_type``)
    and, as in diffusers' Stable Diffusion output, ``nsfw_content_detected`` (None: no safety checker)."""

    images: list[Image.Image] | np.ndarray | torch.Tensor
    nsfw_content_detected: list[bool] | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        """``(images, nsfw_content_detected)``: diffusers' ``return_dict=False`` form."""
        return (self.images, self.nsfw_content_detected)

    def __getitem__(self, key: int | str) -> Any:
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]


def to_unit_images(images: torch.Tensor) -> np.ndarray:
    """Decoder output [B, 3, H, W] in ~[-1, 1] -> float images [B, H, W, 3] in [0, 1] (diffusers' postprocess)."""
    return (images / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()


def to_pil_images(unit_images: np.ndarray) -> list[Image.Image]:
    """Float images [B, H, W, 3] in [0, 1] -> 8-bit RGB PIL images, rounded as diffusers rounds."""
    return [Image.fromarray(image) for image in (unit_images * 255).round().astype("uint8")]


def device_and_dtype(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.device | None, torch.dtype | None]:
    """The target of ``.to(...)`` called as torch modules are: a device, a dtype, both, or as keywords."""
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    if kwargs:
        raise TypeError(f"to() got unexpected keyword arguments {', '.join(sorted(kwargs))}")
    for arg in args:
        if isinstance(arg, torch.dtype):
            dtype = arg
        elif isinstance(arg, str | torch.device):
            device = arg
        else:
            raise TypeError(f"to() takes a device and/or a dtype, got {arg!r}")
    return (torch.device(device) if device is not None else None), dtype


class NearestImage(NamedTuple):
    """The training image closest to a sample: the RMSE to it, its caption and its index in the data set."""

    rmse: float
    caption: str
    index: int


class DiffusionPipeline(ABC):
    """A text-to-image diffusion model: what the engine needs (encode, denoise one batch, decode) and diffusers'
    pipeline API (``from_pretrained``, ``.to``, ``.scheduler``, calling it with a prompt)."""

    name: str
    scheduler: SchedulerMixin
    device: torch.device
    dtype: torch.dtype
    default_size: tuple[int, int]
    default_guidance: float = 7.5
    ays_model: str = "sd15"  # which Align Your Steps table fits the model (A1111 picks SDXL's for SDXL)
    CALLBACK_TENSORS: ClassVar[dict[str, str]] = TEXT_CALLBACK_TENSORS
    # CPU threads the engine runs this model with (None: torch's default).
    cpu_threads: int | None = None
    exact_solution_calls: int = 0  # what exact_solution costs, in denoiser calls (where the model has one)
    _num_timesteps = 0
    _interrupt = False
    # Where the weights came from, for the record: a checkpoint file's hash and what was read from it, a swapped VAE.
    provenance: dict[str, Any] | None = None

    @property
    def num_timesteps(self) -> int:
        """Model calls of the latest (or current) call's schedule."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipeline._interrupt = True`` in a step callback to skip the remaining steps."""
        return self._interrupt

    @classmethod
    def from_pretrained(cls, model: str | Path, **kwargs: Any) -> DiffusionPipeline:
        """Load ``builtin:shapes``, a diffusers folder or a hub id; on this base class, a folder loads as the
        pipeline class its ``model_index.json`` names (diffusers' ``DiffusionPipeline.from_pretrained``)."""
        from .load import BUILTIN_SHAPES, pipeline_class, resolve_model_folder

        if cls is not DiffusionPipeline:
            raise NotImplementedError(f"{cls.__name__} does not load from folders")
        if str(model) == BUILTIN_SHAPES:
            from .builtin import ShapesPipeline

            return ShapesPipeline(**kwargs)
        target = pipeline_class(resolve_model_folder(str(model), scheduler_only=True))
        return target.from_pretrained(model, **kwargs)

    @classmethod
    def from_single_file(cls, path: str | Path, **kwargs: Any) -> DiffusionPipeline:
        """Load one original-layout checkpoint file as the pipeline of the family its keys show (SD 1.x / 2.x or
        SDXL)."""
        from .single_file.loader import load_single_file
        from .stable_diffusion import pick_dtype

        if cls is not DiffusionPipeline:
            raise NotImplementedError(f"{cls.__name__} does not load from checkpoint files")
        dtype = pick_dtype(kwargs.pop("torch_dtype", None), kwargs.pop("dtype", None))
        return load_single_file(path, dtype=dtype, **kwargs)

    @abstractmethod
    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> tuple[Conditioning, Conditioning]:
        """(cond, uncond) conditioning, each with a leading batch dimension of 1."""

    @abstractmethod
    def latent_shape(self, width: int, height: int) -> tuple[int, ...]:
        """Shape of one latent (without batch) for an image of ``width`` x ``height`` pixels."""

    @abstractmethod
    def denoise(self, latents: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        """One model call: latents [B, ...], timesteps [B] (or one for all), conditioning [B, ...] -> model output."""

    @abstractmethod
    def decode_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, ...] -> images [B, 3, H, W] in ~[-1, 1]."""

    @abstractmethod
    def compile(self, mode: str | None = None) -> None:
        """Replace the denoiser by its ``torch.compile``d version (``mode``: torch.compile's, e.g. 'reduce-overhead',
        which captures the call in a CUDA graph per batch shape)."""

    @abstractmethod
    def modules(self) -> dict[str, torch.nn.Module]:
        """The pipeline's torch modules by component name (what ``.to`` moves)."""

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Latents [B, ...] -> one RGB image each."""
        return to_pil_images(to_unit_images(self.decode_pixels(latents)))

    def postprocess(self, latents: torch.Tensor, output_type: str) -> list[Image.Image] | np.ndarray | torch.Tensor:
        """Final latents in the form ``output_type`` asks for: PIL images, float arrays [B, H, W, 3] or tensors
        [B, 3, H, W] in [0, 1], or the latents themselves."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r} is not one of {', '.join(map(repr, OUTPUT_TYPES))}")
        if output_type == "latent":
            return latents
        pixels = self.decode_pixels(latents)
        if output_type == "pt":
            return (pixels / 2 + 0.5).clamp(0, 1)
        unit = to_unit_images(pixels)
        return unit if output_type == "np" else to_pil_images(unit)

    def to(self, *args: Any, **kwargs: Any) -> DiffusionPipeline:
        """Move every module to a device and/or cast it to a dtype, as ``torch.nn.Module.to`` takes them; returns
        the pipeline (diffusers' ``DiffusionPipeline.to``)."""
        device, dtype = device_and_dtype(args, kwargs)
        for name, module in self.modules().items():
            self._move(name, module, device, dtype)
        if device is not None:
            self.device = device
        if dtype is not None:
            self.dtype = dtype
        return self

    def _move(self, name: str, module: torch.nn.Module, device: torch.device | None, dtype: torch.dtype | None) -> None:
        """Move one module (pipelines with a component that must stay in fp32 override this)."""
        module.to(device=device, dtype=dtype)

    def check_size(self, height: int, width: int) -> None:
        """Refuse an image size the model cannot sample."""
        self.latent_shape(width, height)

    def exact_solution(self, noise: torch.Tensor, cond: Conditioning, uncond: Conditioning,
                       guidance: float) -> torch.Tensor | None:
        """The converged probability-flow ODE solution from ``noise`` where the model has one (None: it has not)."""
        return None

    def nearest_training_image(self, latents: torch.Tensor) -> NearestImage | None:
        """RMSE to the closest training image, its caption and its index, where the training set is known (None: it
        is not)."""
        return None

    def matches_prompt(self, prompt: str, index: int) -> bool | None:
        """Whether training image ``index`` shows what ``prompt`` asks for (None: the model cannot tell)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Model, device, dtype and library versions for the run record."""
        return {
            "model": self.name,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "cpu_threads": torch.get_num_threads() if self.cpu_threads is None else self.cpu_threads,
            "versions": {
                "torch": torch.__version__,
                "numpy": np.__version__,
                "pillow": PIL.__version__,
                "python": platform.python_version(),
            },
            "platform": platform.platform(),
            **({"provenance": self.provenance} if self.provenance else {}),
        }


def prompt_list(prompt: str | list[str], name: str = "prompt") -> list[str]:
    """A prompt or a list of prompts as a list (diffusers' batch rule)."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list | tuple) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise ConfigError(f"{name} must be a string or a non-empty list of strings, got {prompt!r}")


def negative_list(negative: str | list[str] | None, prompts: list[str], name: str = "negative_prompt") -> list[str]:
    """The negative prompt per prompt: "" for none, one string for all, or one per prompt."""
    if negative is None:
        return [""] * len(prompts)
    if isinstance(negative, str):
        return [negative] * len(prompts)
    negatives = prompt_list(negative, name)
    if len(negatives) != len(prompts):
        raise ConfigError(f"{name} has {len(negatives)} entries for {len(prompts)} prompts")
    return negatives
