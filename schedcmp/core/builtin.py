"""``builtin:shapes``: the exactly solvable model as a pipeline (no weights, no downloads)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .conditioning import Conditioning
from .errors import ConfigError
from .generation import Sampling, check_callback_inputs, sample
from .load import BUILTIN_SHAPES, SD15_SCHEDULER_CONFIG
from .models.shapes import (
    ShapesDenoiser,
    ShapesTextEncoder,
    nearest_images,
    parse_prompt,
    probability_flow_reference,
    shapes_dataset,
)
from .pipeline import DiffusionPipeline, NearestImage, OutputType, PipelineOutput, negative_list, prompt_list
from .schedulers import PNDMScheduler


class ShapesPipeline(DiffusionPipeline):
    """``builtin:shapes``: the exactly solvable model over a drawn data set of captioned shapes (no weights),
    driven by the engine or called as a diffusers pipeline is."""

    # Its calls are two small matmuls (~0.4 ms): extra OpenMP threads only add barriers, and on a busy machine
    # they stall (measured 70 ms a call with 2 threads against 0.4 ms with 1 while another process ran).
    cpu_threads = 1
    # Its float64 RK4 solve costs what about 600 of its denoiser calls do (0.21 s against 0.34 ms, 2 CPU cores).
    exact_solution_calls = 600

    def __init__(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, size: int = 64):
        if dtype != torch.float32:
            raise ConfigError(
                f"builtin:shapes computes exactly in fp32; got dtype {str(dtype).removeprefix('torch.')} "
                "(use --dtype fp32 or auto)"
            )
        self.name = BUILTIN_SHAPES
        self.device = torch.device(device)
        self.dtype = dtype
        self.default_size = (size, size)
        self.size = size
        self.scheduler = PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG)
        self.dataset = shapes_dataset(size)
        self.text_encoder = ShapesTextEncoder(self.dataset)
        self.denoiser = ShapesDenoiser(self.dataset, self.scheduler.alphas_cumprod).to(self.device)

    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> tuple[Conditioning, Conditioning]:
        """Log-weights [1, N] over the data set for the prompt and for the negative prompt ("" = the whole set)."""
        return self._encode([prompt]), self._encode([negative_prompt])

    def _encode(self, prompts: list[str]) -> Conditioning:
        return Conditioning(self.text_encoder(prompts, device=self.device))  # [B, N]

    def latent_shape(self, width: int, height: int) -> tuple[int, ...]:
        """builtin:shapes samples in pixel space at its drawn size."""
        if (width, height) != self.default_size:
            raise ConfigError(
                f"builtin:shapes draws its data set at {self.size}x{self.size}; got size {width}x{height} "
                f"(use --size {self.size}x{self.size} or leave --size out)"
            )
        return (3, height, width)

    def denoise(self, latents: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        """The exact posterior-mean noise prediction (epsilon) for each sample."""
        return self.denoiser(latents, timesteps, conditioning.embeddings)

    def decode_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixel space is the latent space here: the samples are the images, in [-1, 1]."""
        return latents

    def modules(self) -> dict[str, torch.nn.Module]:
        """The exact denoiser (its data set moves with it)."""
        return {"denoiser": self.denoiser}

    def _move(self, name: str, module: torch.nn.Module, device: torch.device | None, dtype: torch.dtype | None) -> None:
        """Move the denoiser; builtin:shapes computes in fp32 only."""
        if dtype is not None and dtype != torch.float32:
            raise ConfigError(f"builtin:shapes computes exactly in fp32; got dtype {str(dtype).removeprefix('torch.')}")
        module.to(device=device)

    def compile(self, mode: str | None = None) -> None:
        """torch.compile the exact denoiser."""
        self.denoiser = torch.compile(self.denoiser, mode=mode)

    def exact_solution(self, noise: torch.Tensor, cond: Conditioning, uncond: Conditioning,
                       guidance: float) -> torch.Tensor:
        """The float64 RK4 solution of the guided PF-ODE (Karras et al. 2022, eq. 3) from x_T = noise at t = T-1,
        the start every schedule converges to as its steps grow."""
        abar_last = self.scheduler.alphas_cumprod[-1].double()
        sigma_max = float(((1 - abar_last) / abar_last).sqrt())
        x_T = noise.double() * (1 + sigma_max**2) ** 0.5  # DDPM-space x_T -> sigma space x_T / sqrt(abar)
        solution = probability_flow_reference(x_T, cond.embeddings, sigma_max, guidance, uncond.embeddings,
                                              dataset=self.dataset)
        return solution.to(noise.dtype)

    def nearest_training_image(self, latents: torch.Tensor) -> NearestImage:
        """RMSE to the closest of the drawn data-set images, its caption and its index."""
        rmse, index = nearest_images(latents[:1], self.dataset)
        return NearestImage(float(rmse[0]), self.dataset.items[int(index[0])].caption, int(index[0]))

    def matches_prompt(self, prompt: str, index: int) -> bool | None:
        """Whether data-set image ``index`` has what the prompt names (None: the prompt names nothing it knows)."""
        query = parse_prompt(prompt)
        return query.matches(self.dataset.items[index]) if query.names_anything else None

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
        callback_on_step_end: Callable[..., dict[str, torch.Tensor]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> PipelineOutput | tuple[Any, ...]:
        """Sample images with ``self.scheduler`` as diffusers' ``StableDiffusionPipeline.__call__`` would, from the
        exact denoiser (64x64 only)."""
        height, width = height or self.size, width or self.size
        check_callback_inputs(callback_on_step_end_tensor_inputs, tuple(self.CALLBACK_TENSORS))
        shape = self.latent_shape(width, height)
        prompts = prompt_list(prompt)
        settings = Sampling(num_inference_steps, guidance_scale, guidance_rescale, eta, generator, latents,
                            callback_on_step_end, tuple(callback_on_step_end_tensor_inputs))
        cond = self._encode(prompts).repeat_each(num_images_per_prompt)
        uncond = self._encode(negative_list(negative_prompt, prompts)).repeat_each(num_images_per_prompt)
        final = sample(self, cond, uncond if settings.guided else None, shape, settings, self.CALLBACK_TENSORS)
        output = PipelineOutput(self.postprocess(final, output_type))
        return output if return_dict else output.to_tuple()
