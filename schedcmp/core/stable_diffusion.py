"""Stable Diffusion 1.x / 2.x (Rombach et al. 2022): CLIP text encoder, UNet, VAE and a scheduler, driven by the
engine or called as diffusers' ``StableDiffusionPipeline`` is."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .conditioning import Conditioning
from .errors import ConfigError, NonFiniteError
from .generation import Sampling, check_callback_inputs, sample
from .load import read_model_index, resolve_model_folder
from .models.clip import CLIPTextConfig, CLIPTextModel, convert_state_dict
from .models.loading import load_weights, weight_files
from .models.tokenizer import CLIPTokenizer
from .models.unet import UNet2DConditionConfig, UNet2DConditionModel
from .models.vae import AutoencoderKL, AutoencoderKLConfig, convert_legacy_vae_keys
from .pipeline import DiffusionPipeline, OutputType, PipelineOutput, negative_list, prompt_list
from .schedulers import SchedulerMixin, resolve_scheduler


def load_scheduler(folder: Path) -> SchedulerMixin:
    """The scheduler ``<folder>/scheduler/scheduler_config.json`` names, built from that config."""
    config = SchedulerMixin.load_config(folder, subfolder="scheduler")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # keys of other scheduler families in the file are expected
        return resolve_scheduler(config.get("_class_name", "PNDMScheduler")).cls.from_config(config)


def load_vae(folder: Path, dtype: torch.dtype, device: torch.device | str, variant: str | None,
             allow_pickle: bool) -> AutoencoderKL:
    """The VAE of a diffusers folder, kept in fp32 under an fp16 pipeline when its config says ``force_upcast``."""
    config = AutoencoderKLConfig.from_file(folder / "vae" / "config.json")
    vae_dtype = torch.float32 if dtype == torch.float16 and config.force_upcast else dtype
    return load_weights(lambda: AutoencoderKL(config), weight_files(folder / "vae", "diffusion_pytorch_model",
                                                                     variant, allow_pickle),
                        vae_dtype, device, convert_legacy_vae_keys)


def load_unet(folder: Path, dtype: torch.dtype, device: torch.device | str, variant: str | None,
              allow_pickle: bool) -> UNet2DConditionModel:
    """The UNet of a diffusers folder (channels-last on CUDA, where cuDNN's convolutions are faster)."""
    config = UNet2DConditionConfig.from_file(folder / "unet" / "config.json")
    unet = load_weights(lambda: UNet2DConditionModel(config), weight_files(folder / "unet", "diffusion_pytorch_model",
                                                                            variant, allow_pickle), dtype, device)
    return unet.to(memory_format=torch.channels_last) if torch.device(device).type == "cuda" else unet


def load_text_encoder(folder: Path, name: str, model: type[CLIPTextModel], dtype: torch.dtype,
                      device: torch.device | str, variant: str | None, allow_pickle: bool) -> CLIPTextModel:
    """The CLIP text encoder in ``<folder>/<name>``."""
    config = CLIPTextConfig.from_file(folder / name / "config.json")
    return load_weights(lambda: model(config), weight_files(folder / name, "model", variant, allow_pickle), dtype,
                        device, convert_state_dict)


def pick_dtype(torch_dtype: torch.dtype | None, dtype: torch.dtype | None) -> torch.dtype:
    """``torch_dtype`` or its newer name ``dtype`` (fp32 when neither is given, as diffusers loads)."""
    if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
        raise ConfigError(f"torch_dtype={torch_dtype} and dtype={dtype} disagree; pass one of them")
    return torch_dtype or dtype or torch.float32


class LatentDiffusionPipeline(DiffusionPipeline):
    """What SD and SDXL share: a UNet denoising VAE latents, decoded by the VAE (Rombach et al. 2022)."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL

    def _set_geometry(self) -> None:
        self.device = next(self.unet.parameters()).device
        self.dtype = next(self.unet.parameters()).dtype
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        sample_size = self.unet.config.sample_size or 64
        self.default_size = (sample_size * self.vae_scale_factor, sample_size * self.vae_scale_factor)

    SINGLE_FILE_FAMILIES: tuple[str, ...] = ()

    @classmethod
    def from_single_file(
        cls,
        path: str | Path,
        torch_dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        allow_pickle: bool = False,
        clip_skip: int | None = None,
        prediction_type: str | None = None,
        dtype: torch.dtype | None = None,
    ) -> LatentDiffusionPipeline:
        """Load one original-layout checkpoint file as A1111 and ComfyUI keep them, of a family this class builds
        (``SINGLE_FILE_FAMILIES``); the architecture is read from its tensors."""
        from .single_file.loader import load_single_file

        return load_single_file(path, cls.SINGLE_FILE_FAMILIES, dtype=pick_dtype(torch_dtype, dtype), device=device,
                                allow_pickle=allow_pickle, clip_skip=clip_skip, prediction_type=prediction_type)

    def replace_vae(self, vae: AutoencoderKL, source: str) -> None:
        """Decode with another VAE (A1111's VAE swap); it must make the latents this UNet denoises."""
        if vae.config.latent_channels != self.unet.config.in_channels:
            raise ConfigError(f"{source}: its VAE makes {vae.config.latent_channels}-channel latents; "
                              f"{self.name}'s UNet denoises {self.unet.config.in_channels}")
        self.vae = vae
        self._set_geometry()

    def latent_shape(self, width: int, height: int) -> tuple[int, ...]:
        """(latent channels, height / f, width / f) with f the VAE's downsampling factor."""
        f = self.vae_scale_factor
        if width % f or height % f:
            raise ConfigError(f"{self.name}: size must be a multiple of {f} on both sides, got {width}x{height}")
        return (self.unet.config.in_channels, height // f, width // f)

    def decode_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, 4, h, w] -> images [B, 3, H, W]; retried in fp32 if reduced precision overflows to NaN (with
        a warning)."""
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
        return images

    def compile(self, mode: str | None = None) -> None:
        """torch.compile the UNet (the first call of each new batch shape pays the compilation)."""
        self.unet = torch.compile(self.unet, mode=mode)

    def _move(self, name: str, module: torch.nn.Module, device: torch.device | None, dtype: torch.dtype | None) -> None:
        """Move a module; the VAE stays fp32 under fp16 when its config says ``force_upcast`` (it overflows)."""
        if name == "vae" and dtype == torch.float16 and self.vae.config.force_upcast:
            dtype = torch.float32
        module.to(device=device, dtype=dtype)
        if name == "unet" and device is not None and device.type == "cuda":
            module.to(memory_format=torch.channels_last)


class StableDiffusionPipeline(LatentDiffusionPipeline):
    """Text-to-image latent diffusion (Rombach et al. 2022): CLIP text encoder, UNet, VAE, and a scheduler."""

    SINGLE_FILE_FAMILIES = ("sd1", "sd2")  # the checkpoint families from_single_file builds as this class
    REQUIRED_COMPONENTS = ("scheduler", "text_encoder", "tokenizer", "unet", "vae")

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
        self._set_geometry()

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        torch_dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        variant: str | None = None,
        allow_pickle: bool = False,
        clip_skip: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> StableDiffusionPipeline:
        """Load a diffusers-format folder or hub id; weights from safetensors (pickles only with ``allow_pickle``)."""
        folder = resolve_model_folder(str(model), variant)
        read_model_index(folder, cls.REQUIRED_COMPONENTS)
        dtype = pick_dtype(torch_dtype, dtype)
        text_encoder = load_text_encoder(folder, "text_encoder", CLIPTextModel, dtype, device, variant, allow_pickle)
        return cls(
            CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
            text_encoder,
            load_unet(folder, dtype, device, variant, allow_pickle),
            load_vae(folder, dtype, device, variant, allow_pickle),
            load_scheduler(folder),
            name=str(model),
            clip_skip=clip_skip,
        )

    def modules(self) -> dict[str, torch.nn.Module]:
        """text_encoder, unet and vae."""
        return {"text_encoder": self.text_encoder, "unet": self.unet, "vae": self.vae}

    def _encode(self, prompts: list[str], clip_skip: int | None) -> torch.Tensor:
        """CLIP hidden states [B, 77, D] of ``prompts`` (tokenized together, as diffusers does)."""
        ids = self.tokenizer(prompts, max_length=self.tokenizer.model_max_length)  # [B, 77]
        with torch.inference_mode():
            return self.text_encoder(ids.to(self.device), clip_skip=clip_skip).to(self.text_dtype)

    @property
    def text_dtype(self) -> torch.dtype:
        return next(self.text_encoder.parameters()).dtype

    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> tuple[Conditioning, Conditioning]:
        """CLIP hidden states [1, 77, D] of the prompt and of the negative prompt ("" = unconditional), both with
        the pipeline's ``clip_skip`` (as A1111 applies it), encoded as one batch."""
        states = self._encode([prompt, negative_prompt], self.clip_skip).to(self.dtype)  # [2, 77, D]
        return Conditioning(states[:1]), Conditioning(states[1:])

    def denoise(self, latents: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        """One UNet call with a timestep per sample (or one for all)."""
        return self.unet(latents, timesteps, conditioning.embeddings)

    def __call__(
        self,
        prompt: str | list[str],
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: OutputType = "pil",
        return_dict: bool = True,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[..., dict[str, torch.Tensor]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> PipelineOutput | tuple[Any, ...]:
        """Generate images as diffusers' ``StableDiffusionPipeline.__call__`` does, with ``self.scheduler``.

        As in diffusers, ``clip_skip`` applies to the prompt only, not to the negative prompt.
        """
        height, width = height or self.default_size[1], width or self.default_size[0]
        self.check_size(height, width)
        check_callback_inputs(callback_on_step_end_tensor_inputs, tuple(self.CALLBACK_TENSORS))
        prompts = prompt_list(prompt)
        settings = Sampling(num_inference_steps, guidance_scale, guidance_rescale, eta, generator, latents,
                            callback_on_step_end, tuple(callback_on_step_end_tensor_inputs))
        cond = Conditioning(self._encode(prompts, clip_skip)).repeat_each(num_images_per_prompt)
        uncond = None
        if settings.guided:
            negatives = negative_list(negative_prompt, prompts)
            uncond = Conditioning(self._encode(negatives, None)).repeat_each(num_images_per_prompt)
        final = sample(self, cond, uncond, self.latent_shape(width, height), settings, self.CALLBACK_TENSORS)
        output = PipelineOutput(self.postprocess(final, output_type))
        return output if return_dict else output.to_tuple()
