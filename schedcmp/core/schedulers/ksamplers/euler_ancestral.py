"""Ancestral Euler on the sigma grid (k-diffusion ``sample_euler_ancestral``): each step splits the move to
sigma_next into a deterministic Euler step of the probability-flow ODE dx/dsigma = (x - D) / sigma down to
sigma_down (Karras et al. 2022, arXiv:2206.00364) and fresh Gaussian noise of std sigma_up: the ancestral
sampling of Song et al. 2021 (arXiv:2011.13456) written in sigma. At eta = 1 the step is DDPM's posterior draw
(Ho et al. 2020, arXiv:2006.11239, eq. 6-7).

This module also holds ``AncestralKSampler``, the base of the samplers that draw independent fresh noise, and
its choice of noise stream (``noise_source``): A1111 continues each image's seeded generator after the initial
latents (its ``randn_like`` hijack); ComfyUI's default noise sampler is a new generator on the latents' device,
seeded with the run's seed, so the stream restarts (with latents on the CPU its first draw repeats the
initial latents).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Annotated, Literal

import torch

from ...configuration import Range
from ..base import randn_tensor
from ..k_sampler import KSampler, Program, ancestral_split, sampler_config

NonNegativeFloat = Annotated[float, Range(ge=0)]
NoiseSource = Literal["generator", "seed"]


def reseeded(
    generator: torch.Generator | list[torch.Generator] | None, device: torch.device
) -> torch.Generator | list[torch.Generator] | None:
    """ComfyUI's noise stream: for each run generator a new one on ``device`` seeded with its seed."""
    if generator is None:  # no seed: ComfyUI then draws from torch's global generator, as randn_tensor does
        return None
    if isinstance(generator, list):
        return [torch.Generator(device=device).manual_seed(g.initial_seed()) for g in generator]
    return torch.Generator(device=device).manual_seed(generator.initial_seed())


class AncestralKSampler(KSampler):
    """A sampler that adds independent fresh noise draws; ``noise_source`` says which stream they come from."""

    stochastic = True
    noise_options = ("eta", "s_noise")

    def noise_stream(self, x: torch.Tensor) -> Callable[[], torch.Tensor]:
        """One standard normal draw shaped like ``x`` per call: the run's generator continued ("generator"), or
        a generator re-seeded with the run's seed on x's device ("seed", ComfyUI's default noise sampler)."""
        if self.config.noise_source == "generator":
            return lambda: self.noise_like(x)
        generator = reseeded(self._generator, x.device)
        return lambda: randn_tensor(x.shape, generator, x.device, x.dtype)


class EulerAncestralSampler(AncestralKSampler):
    """One model call per step: (sigma_down, sigma_up) = ancestral_split(sigma, sigma_next, eta), then

    x <- x + (sigma_down - sigma) (x - D) / sigma + s_noise sigma_up z   (no noise into sigma_next = 0).

    ``renoise_capped=False`` is ComfyUI's variant: a step whose split leaves sigma_down = 0 returns D without
    noise. The two differ only at eta > 1, where sigma_up is capped at sigma_next on large steps.
    """

    @sampler_config
    def __init__(
        self,
        eta: NonNegativeFloat = 1.0,
        s_noise: NonNegativeFloat = 1.0,
        noise_source: NoiseSource = "generator",
        renoise_capped: bool = True,
    ):
        """Euler ancestral: noise amount eta, noise scale s_noise; noise_source "seed" and renoise_capped False are
        ComfyUI's (noise restarted from the seed; a step capped at sigma_down = 0 ends at D without noise)."""

    def program(self, x: torch.Tensor) -> Program:
        config, sigmas = self.config, self.grid
        noisy = self.is_stochastic
        noise = self.noise_stream(x)
        for sigma, sigma_next in pairwise(sigmas):
            denoised = yield x
            sigma_down, sigma_up = ancestral_split(sigma, sigma_next, config.eta)
            if sigma_down == 0 and not config.renoise_capped:
                x = denoised
                continue
            x = x + (x - denoised) * ((sigma_down - sigma) / sigma)
            if noisy and sigma_next > 0:
                x = x + noise() * (config.s_noise * sigma_up)
        return x
