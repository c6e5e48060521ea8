"""SDXL (Podell et al. 2023, "SDXL: Improving Latent Diffusion Models for High-Resolution Image Synthesis"): two CLIP
text encoders, a UNet with size / crop micro-conditioning, the VAE and a scheduler, driven by the engine or called
as diffusers' ``StableDiffusionXLPipeline`` is."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from .conditioning import Conditioning
from .errors import ConfigError
from .generation import Sampling, check_callback_inputs, sample
from .load import read_model_index, resolve_model_folder
from .models.clip import CLIPTextModel, CLIPTextModelWithProjection
from .models.tokenizer import CLIPTokenizer
from .models.unet import UNet2DConditionModel
from .models.vae import AutoencoderKL
from .pipeline import OutputType, PipelineOutput, negative_list, prompt_list
from .schedulers import SchedulerMixin
from .stable_diffusion import (
    LatentDiffusionPipeline,
    load_scheduler,
    load_text_encoder,
    load_unet,
    load_vae,
    pick_dtype,
)

TIME_IDS = 6  # original (height, width), crop (top, left), target (height, width): Podell et al. 2023, sec. 2.2
# The step callback's tensors (diffusers' names) and the field of the batched conditioning each is.
SDXL_CALLBACK_TENSORS = {"latents": "latents", "prompt_embeds": "embeddings", "add_text_embeds": "pooled",
                         "add_time_ids": "time_ids"}


def hidden_state_from_end(clip_skip: int | None) -> int:
    """SDXL conditions on the penultimate layer; ``clip_skip=k`` moves k layers further back (diffusers' rule)."""
    return 2 + (clip_skip or 0)


def time_ids(original_size: Sequence[int], crop_top_left: Sequence[int], target_size: Sequence[int],
             dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """SDXL's micro-conditioning row [1, 6] (Podell et al. 2023, sec. 2.2): the training image's size, the crop's
    top-left corner and the size asked for, each (height, width)."""
    values = [*original_size, *crop_top_left, *target_size]
    if len(values) != TIME_IDS:
        raise ConfigError(f"original_size, crops_coords_top_left and target_size must be pairs, got {values}")
    return torch.tensor([values], dtype=dtype, device=device)


class StableDiffusionXLPipeline(LatentDiffusionPipeline):
    """Text-to-image SDXL (Podell et al. 2023): CLIP ViT-L and OpenCLIP bigG text encoders, whose penultimate states
    are concatenated, the pooled bigG embedding and the size / crop ids added to the UNet's time embedding."""

    SINGLE_FILE_FAMILIES = ("sdxl",)  # the checkpoint families from_single_file builds as this class
    REQUIRED_COMPONENTS = ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae")
    CALLBACK_TENSORS: ClassVar[dict[str, str]] = SDXL_CALLBACK_TENSORS
    default_guidance = 5.0
    ays_model = "sdxl"

    def __init__(
        self,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: SchedulerMixin,
        force_zeros_for_empty_prompt: bool = True,
        name: str = "stable-diffusion-xl",
        clip_skip: int | None = None,
    ):
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.text_encoder, self.text_encoder_2 = text_encoder, text_encoder_2
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self.name = name
        self.clip_skip = clip_skip
        self._check_widths()
        self._set_geometry()
        self._default_time_ids: dict[tuple[Any, ...], torch.Tensor] = {}

    def _check_widths(self) -> None:
        """Refuse encoders and a UNet that do not fit together (what diffusers finds only at the first call)."""
        unet = self.unet.config
        if unet.addition_embed_type != "text_time":
            raise ConfigError(f'{self.name}: an SDXL UNet has "addition_embed_type": "text_time", this one '
                              f"{unet.addition_embed_type!r}")
        text_width = self.text_encoder.config.hidden_size + self.text_encoder_2.config.hidden_size
        cross_width = unet.per_block("cross_attention_dim")[-1]
        if text_width != cross_width:
            raise ConfigError(f"{self.name}: the text encoders' widths add up to {text_width}, the UNet's "
                              f"cross_attention_dim is {cross_width}")
        added = unet.addition_time_embed_dim * TIME_IDS + self.text_encoder_2.config.projection_dim
        if added != unet.projection_class_embeddings_input_dim:
            raise ConfigError(
                f"{self.name}: {TIME_IDS} time ids x addition_time_embed_dim {unet.addition_time_embed_dim} + "
                f"text_encoder_2's projection_dim {self.text_encoder_2.config.projection_dim} = {added}, the UNet's "
                f"projection_class_embeddings_input_dim is {unet.projection_class_embeddings_input_dim}"
            )

    def replace_vae(self, vae: AutoencoderKL, source: str) -> None:
        """Decode with another VAE; the default time ids follow its downsampling factor."""
        super().replace_vae(vae, source)
        self._default_time_ids.clear()

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
    ) -> StableDiffusionXLPipeline:
        """Load an SDXL diffusers folder or hub id; weights from safetensors (pickles only with ``allow_pickle``)."""
        folder = resolve_model_folder(str(model), variant)
        index = read_model_index(folder, cls.REQUIRED_COMPONENTS)
        force_zeros = index.get("force_zeros_for_empty_prompt", True)
        if not isinstance(force_zeros, bool):
            raise ConfigError(f"{folder / 'model_index.json'}: force_zeros_for_empty_prompt must be true or false, "
                              f"got {force_zeros!r}")
        dtype = pick_dtype(torch_dtype, dtype)
        return cls(
            CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
            CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2"),
            load_text_encoder(folder, "text_encoder", CLIPTextModel, dtype, device, variant, allow_pickle),
            load_text_encoder(folder, "text_encoder_2", CLIPTextModelWithProjection, dtype, device, variant,
                              allow_pickle),
            load_unet(folder, dtype, device, variant, allow_pickle),
            load_vae(folder, dtype, device, variant, allow_pickle),
            load_scheduler(folder),
            force_zeros_for_empty_prompt=force_zeros,
            name=str(model),
            clip_skip=clip_skip,
        )

    def modules(self) -> dict[str, torch.nn.Module]:
        """text_encoder, text_encoder_2, unet and vae."""
        return {"text_encoder": self.text_encoder, "text_encoder_2": self.text_encoder_2, "unet": self.unet,
                "vae": self.vae}

    @property
    def text_dtype(self) -> torch.dtype:
        return next(self.text_encoder_2.parameters()).dtype

    def _encode(self, prompts: list[str], prompts_2: list[str], clip_skip: int | None) -> Conditioning:
        """Both encoders' states of one layer, concatenated [B, 77, D1 + D2], and the pooled, projected bigG
        embedding [B, P] (Podell et al. 2023, sec. 2.1); each prompt list through its own tokenizer."""
        layer = hidden_state_from_end(clip_skip)
        states = []
        with torch.inference_mode():
            for tokenizer, encoder, texts in ((self.tokenizer, self.text_encoder, prompts),
                                              (self.tokenizer_2, self.text_encoder_2, prompts_2)):
                ids = tokenizer(texts, max_length=tokenizer.model_max_length)  # [B, 77]
                encoding = encoder.encode(ids.to(self.device), layer)
                states.append(encoding.hidden_states)
            embeddings = torch.cat(states, dim=-1)  # [B, 77, D1] + [B, 77, D2] -> [B, 77, D1 + D2]
        return Conditioning(embeddings.to(self.text_dtype), encoding.pooled.to(self.text_dtype))

    def _negative(self, cond: Conditioning, negatives: list[str] | None, negatives_2: list[str] | None,
                  clip_skip: int | None) -> Conditioning:
        """The unconditional side: zeros when no negative prompt is given and the model says
        ``force_zeros_for_empty_prompt`` (SDXL base), else the encoded negative prompts."""
        if negatives is None and self.force_zeros_for_empty_prompt:
            return Conditioning(torch.zeros_like(cond.embeddings), torch.zeros_like(cond.pooled))
        negatives = negatives or [""] * cond.batch_size
        return self._encode(negatives, negatives_2 or negatives, clip_skip)

    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> tuple[Conditioning, Conditioning]:
        """(cond, uncond) with a batch of 1 each, both with the pipeline's ``clip_skip`` (as A1111 applies it); no
        negative prompt ("") is diffusers' default: zeros where ``force_zeros_for_empty_prompt``. The time ids are
        diffusers' defaults, taken from the latents' size at each call."""
        cond = self._encode([prompt], [prompt], self.clip_skip)
        uncond = self._negative(cond, [negative_prompt] if negative_prompt else None, None, self.clip_skip)
        return cond.to(dtype=self.dtype), uncond.to(dtype=self.dtype)

    def _time_ids_for(self, latents: torch.Tensor) -> torch.Tensor:
        """diffusers' default time ids for latents [B, C, h, w]: original = target = the image size, no crop."""
        key = (tuple(latents.shape), latents.device, latents.dtype)
        if key not in self._default_time_ids:
            size = (latents.shape[-2] * self.vae_scale_factor, latents.shape[-1] * self.vae_scale_factor)
            row = time_ids(size, (0, 0), size, latents.dtype, latents.device)  # [1, 6]
            self._default_time_ids[key] = row.repeat(latents.shape[0], 1)  # [B, 6]
        return self._default_time_ids[key]

    def denoise(self, latents: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        """One UNet call with a timestep per sample (or one for all), the pooled text and time ids added."""
        ids = conditioning.time_ids if conditioning.time_ids is not None else self._time_ids_for(latents)
        added = {"text_embeds": conditioning.pooled, "time_ids": ids}
        return self.unet(latents, timesteps, conditioning.embeddings, added_cond_kwargs=added)

    def __call__(
        self,
        prompt: str | list[str],
        prompt_2: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: OutputType = "pil",
        return_dict: bool = True,
        guidance_rescale: float = 0.0,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: tuple[int, int] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[..., dict[str, torch.Tensor]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> PipelineOutput | tuple[Any, ...]:
        """Generate images as diffusers' ``StableDiffusionXLPipeline.__call__`` does, with ``self.scheduler``.

        As in diffusers, ``clip_skip`` applies to the prompt only, the negative time ids are the positive ones
        unless both negative sizes are given, and the scheduler starts at index 0.
        """
        height, width = height or self.default_size[1], width or self.default_size[0]
        self.check_size(height, width)
        check_callback_inputs(callback_on_step_end_tensor_inputs, tuple(self.CALLBACK_TENSORS))
        prompts = prompt_list(prompt)
        prompts_2 = negative_list(prompt_2, prompts, "prompt_2") if prompt_2 else prompts
        settings = Sampling(num_inference_steps, guidance_scale, guidance_rescale, eta, generator, latents,
                            callback_on_step_end, tuple(callback_on_step_end_tensor_inputs), set_begin_index=True)
        cond = self._encode(prompts, prompts_2, clip_skip)
        ids = time_ids(original_size or (height, width), crops_coords_top_left, target_size or (height, width),
                       cond.embeddings.dtype, self.device)  # [1, 6]
        cond = Conditioning(cond.embeddings, cond.pooled, ids.repeat(cond.batch_size, 1))
        uncond = None
        if settings.guided:
            negatives = None if negative_prompt is None else negative_list(negative_prompt, prompts)
            negatives_2 = None if not negative_prompt_2 else negative_list(negative_prompt_2, prompts,
                                                                            "negative_prompt_2")
            uncond = self._negative(cond, negatives, negatives_2, None)
            negative_ids = ids
            if negative_original_size is not None and negative_target_size is not None:
                negative_ids = time_ids(negative_original_size, negative_crops_coords_top_left, negative_target_size,
                                        cond.embeddings.dtype, self.device)
            uncond = Conditioning(uncond.embeddings, uncond.pooled, negative_ids.repeat(uncond.batch_size, 1))
            uncond = uncond.repeat_each(num_images_per_prompt)
        cond = cond.repeat_each(num_images_per_prompt)
        final = sample(self, cond, uncond, self.latent_shape(width, height), settings, self.CALLBACK_TENSORS)
        images = self.postprocess(final, output_type)
        return PipelineOutput(images) if return_dict else (images,)
