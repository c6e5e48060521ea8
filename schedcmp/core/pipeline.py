"""Pipelines the engine drives (encode the prompt, call the denoiser, decode) and Stable Diffusion 1.x / 2.x."""

from __future__ import annotations

import json
import platform
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image

from .errors import ConfigError, NonFiniteError, WeightsError
from .models.clip import CLIPTextConfig, CLIPTextModel, convert_state_dict
from .models.loading import load_weights, weight_files
from .models.tokenizer import CLIPTokenizer
from .models.unet import UNet2DConditionConfig, UNet2DConditionModel
from .models.vae import AutoencoderKL, AutoencoderKLConfig, convert_legacy_vae_keys
from .schedulers import SchedulerMixin, resolve_scheduler

REQUIRED_COMPONENTS = ("scheduler", "text_encoder", "tokenizer", "unet", "vae")


class DenoisingPipeline(ABC):
    """What the engine needs from a text-to-image diffusion model: encode, denoise one batch, decode."""

    name: str
    scheduler: SchedulerMixin
    device: torch.device
    dtype: torch.dtype
    default_size: tuple[int, int]
    # CPU threads the engine runs this model with (None: torch's default).
    cpu_threads: int | None = None

    @abstractmethod
    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) embeddings, each with a leading batch dimension of 1."""

    @abstractmethod
    def latent_shape(self, width: int, height: int) -> tuple[int, ...]:
        """Shape of one latent (without batch) for an image of ``width`` x ``height`` pixels."""

    @abstractmethod
    def denoise(self, latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """One model call: latents [B, ...], per-sample timesteps [B], embeddings [B, ...] -> model output."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Latents [B, ...] -> one RGB image each."""

    @abstractmethod
    def compile(self, mode: str | None = None) -> None:
        """Replace the denoiser by its ``torch.compile``d version (``mode``: torch.compile's, e.g. 'reduce-overhead',
        which captures the call in a CUDA graph per batch shape)."""

    def exact_solution(self, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                       guidance: float) -> torch.Tensor | None:
        """The converged probability-flow ODE solution from ``noise`` where the model has one (None: it has not)."""
        return None

    def nearest_training_image(self, latents: torch.Tensor) -> tuple[float, str] | None:
        """RMSE to the closest training image and its caption, where the training set is known (None: it is not)."""
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
        }


def to_unit_images(images: torch.Tensor) -> np.ndarray:
    """Decoder output [B, 3, H, W] in ~[-1, 1] -> float images [B, H, W, 3] in [0, 1] (diffusers' postprocess)."""
    return (images / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()


def to_pil_images(unit_images: np.ndarray) -> list[Image.Image]:
    """Float images [B, H, W, 3] in [0, 1] -> 8-bit RGB PIL images, rounded as diffusers rounds."""
    return [Image.fromarray(image) for image in (unit_images * 255).round().astype("uint8")]


def read_model_index(folder: Path) -> dict[str, Any]:
    """``model_index.json`` of a diffusers folder, checked to name the components a Stable Diffusion needs."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise WeightsError(f"{folder} is not a diffusers model folder: it has no model_index.json")
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise WeightsError(f"{index_file} is not valid JSON ({err})") from None
    missing = [name for name in REQUIRED_COMPONENTS if not (folder / name).is_dir()]
    if missing:
        raise WeightsError(f"{folder} lacks the component folders {', '.join(missing)} of a Stable Diffusion model")
    return index


class StableDiffusionPipeline(DenoisingPipeline):
    """Text-to-image latent diffusion (Rombach et al. 2022): CLIP text encoder, UNet, VAE, and a scheduler."""

    def __init__(
        self,
        tokenizer: CLIPTokenizer,
        text_encoder: CLIPTextModel,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: SchedulerMixin,
        name: str = "stable-diffusion",
        clip_skip: int | None = None,
    ):
        self.tokenizer, self.text_encoder, self.unet, self.vae = tokenizer, text_encoder, unet, vae
        self.scheduler = scheduler
        self.name = name
        self.clip_skip = clip_skip
        self.device = next(unet.parameters()).device
        self.dtype = next(unet.parameters()).dtype
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        sample_size = unet.config.sample_size or 64
        self.default_size = (sample_size * self.vae_scale_factor, sample_size * self.vae_scale_factor)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        torch_dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        variant: str | None = None,
        allow_pickle: bool = False,
        clip_skip: int | None = None,
    ) -> StableDiffusionPipeline:
        """Load a diffusers-format folder; weights from safetensors (pickles only with ``allow_pickle``)."""
        folder = Path(folder)
        read_model_index(folder)
        scheduler_config = SchedulerMixin.load_config(folder, subfolder="scheduler")
        scheduler_name = scheduler_config.get("_class_name", "PNDMScheduler")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # keys of other scheduler families in the file are expected
            scheduler = resolve_scheduler(scheduler_name).cls.from_config(scheduler_config)
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")

        vae_config = AutoencoderKLConfig.from_file(folder / "vae" / "config.json")
        vae_dtype = torch.float32 if torch_dtype == torch.float16 and vae_config.force_upcast else torch_dtype

        def files(name: str, stem: str) -> list[Path]:
            return weight_files(folder / name, stem, variant, allow_pickle)

        text_config = CLIPTextConfig.from_file(folder / "text_encoder" / "config.json")
        text_encoder = load_weights(
            lambda: CLIPTextModel(text_config), files("text_encoder", "model"), torch_dtype, device, convert_state_dict
        )
        unet_config = UNet2DConditionConfig.from_file(folder / "unet" / "config.json")
        unet = load_weights(
            lambda: UNet2DConditionModel(unet_config), files("unet", "diffusion_pytorch_model"), torch_dtype, device
        )
        vae = load_weights(
            lambda: AutoencoderKL(vae_config), files("vae", "diffusion_pytorch_model"), vae_dtype, device,
            convert_legacy_vae_keys,
        )
        if torch.device(device).type == "cuda":
            unet = unet.to(memory_format=torch.channels_last)  # faster convolutions with cuDNN
        return cls(tokenizer, text_encoder, unet, vae, scheduler, name=str(folder), clip_skip=clip_skip)

    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP hidden states [1, 77, D] of the prompt and of the negative prompt ("" = unconditional)."""
        ids = self.tokenizer([prompt, negative_prompt], max_length=self.tokenizer.model_max_length)  # [2, 77]
        with torch.inference_mode():
            states = self.text_encoder(ids.to(self.device), clip_skip=self.clip_skip).to(self.dtype)  # [2, 77, D]
        return states[:1], states[1:]

    def latent_shape(self, width: int, height: int) -> tuple[int, ...]:
        """(latent channels, height / f, width / f) with f the VAE's downsampling factor."""
        f = self.vae_scale_factor
        if width % f or height % f:
            raise ConfigError(f"{self.name}: size must be a multiple of {f} on both sides, got {width}x{height}")
        return (self.unet.config.in_channels, height // f, width // f)

    def denoise(self, latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """One UNet call with a timestep per sample."""
        return self.unet(latents, timesteps, embeddings)

    def decode_unit(self, latents: torch.Tensor) -> np.ndarray:
        """Latents [B, 4, h, w] -> float images [B, H, W, 3] in [0, 1]; retried in fp32 if reduced precision
        overflows to NaN (with a warning)."""
        vae_dtype = next(self.vae.parameters()).dtype
        with torch.inference_mode():
            images = self.vae.decode(latents.to(vae_dtype) / self.vae.config.scaling_factor)
            if vae_dtype != torch.float32 and bool(torch.isnan(images).any()):
                warnings.warn(
                    f"{self.name}: the VAE decoded NaN in {str(vae_dtype).removeprefix('torch.')}; "
                    "decoding in fp32 from now on",
                    UserWarning,
                    stacklevel=2,
                )
                self.vae.float()
                images = self.vae.decode(latents.float() / self.vae.config.scaling_factor)
            if not bool(torch.isfinite(images).all()):
                raise NonFiniteError(f"{self.name}: the VAE decoded NaN or infinite pixels from finite latents; "
                                     "its weights may be broken (check the vae folder or file)")
        return to_unit_images(images)

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Latents [B, 4, h, w] -> one RGB image each."""
        return to_pil_images(self.decode_unit(latents))

    def compile(self, mode: str | None = None) -> None:
        """torch.compile the UNet (the first call of each new batch shape pays the compilation)."""
        self.unet = torch.compile(self.unet, mode=mode)
