"""``builtin:shapes``: the exactly solvable model as a pipeline (no weights, no downloads)."""

from __future__ import annotations

import torch
from PIL import Image

from .errors import ConfigError
from .load import BUILTIN_SHAPES, SD15_SCHEDULER_CONFIG
from .models.shapes import (
    ShapesDenoiser,
    ShapesTextEncoder,
    nearest_images,
    probability_flow_reference,
    shapes_dataset,
    to_pil,
)
from .pipeline import DenoisingPipeline
from .schedulers import PNDMScheduler


class ShapesPipeline(DenoisingPipeline):
    """``builtin:shapes``: the exactly solvable model over a drawn data set of captioned shapes (no weights)."""

    # Its calls are two small matmuls (~0.4 ms): extra OpenMP threads only add barriers, and on a busy machine
    # they stall (measured 70 ms a call with 2 threads against 0.4 ms with 1 while another process ran).
    cpu_threads = 1

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

    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """Log-weights over the data set for the prompt and for the negative prompt ("" = the whole set)."""
        cond = self.text_encoder([prompt], device=self.device)  # [1, N]
        uncond = self.text_encoder([negative_prompt], device=self.device)  # [1, N]
        return cond, uncond

    def latent_shape(self, width: int, height: int) -> tuple[int, ...]:
        """builtin:shapes samples in pixel space at its drawn size."""
        if (width, height) != self.default_size:
            raise ConfigError(
                f"builtin:shapes draws its data set at {self.size}x{self.size}; got size {width}x{height} "
                f"(use --size {self.size}x{self.size} or leave --size out)"
            )
        return (3, height, width)

    def denoise(self, latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """The exact posterior-mean noise prediction (epsilon) for each sample."""
        return self.denoiser(latents, timesteps, embeddings)

    def compile(self, mode: str | None = None) -> None:
        """torch.compile the exact denoiser."""
        self.denoiser = torch.compile(self.denoiser, mode=mode)

    def exact_solution(self, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                       guidance: float) -> torch.Tensor:
        """The float64 RK4 solution of the guided PF-ODE (Karras et al. 2022, eq. 3) from x_T = noise at t = T-1,
        the start every schedule converges to as its steps grow."""
        abar_last = self.scheduler.alphas_cumprod[-1].double()
        sigma_max = float(((1 - abar_last) / abar_last).sqrt())
        x_T = noise.double() * (1 + sigma_max**2) ** 0.5  # DDPM-space x_T -> sigma space x_T / sqrt(abar)
        solution = probability_flow_reference(x_T, cond, sigma_max, guidance, uncond, dataset=self.dataset)
        return solution.to(noise.dtype)

    def nearest_training_image(self, latents: torch.Tensor) -> tuple[float, str]:
        """RMSE to the closest of the drawn data-set images and its caption."""
        rmse, index = nearest_images(latents[:1], self.dataset)
        return float(rmse[0]), self.dataset.items[int(index[0])].caption

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Pixel space is the latent space here: map [-1, 1] to 8-bit RGB."""
        return to_pil(latents)
