"""DDPM ancestral sampling on the sigma grid (ComfyUI ``sample_ddpm``; only ComfyUI has it): every step draws from
the DDPM posterior q(x_next | x, x0 = D) between two grid levels (Ho et al. 2020, "Denoising Diffusion
Probabilistic Models", arXiv:2006.11239, eq. 6-7, with alpha_t = alphabar(sigma) / alphabar(sigma_next) for
the jump and alphabar = 1 / (1 + sigma^2)).

ComfyUI evaluates the posterior on the VP sample x / sqrt(1 + sigma^2) and scales back; in k-diffusion's VE
coordinates the same posterior is N(D + (sigma_next / sigma)^2 (x - D), sigma_next^2 (1 - (sigma_next / sigma)^2)),
which this module samples directly. In exact arithmetic that is Euler ancestral at eta = 1 (sigma_down =
sigma_next^2 / sigma); the two differ only in rounding, and in the noise stream when ComfyUI's is chosen.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch

from ..k_sampler import Program, sampler_config
from .euler_ancestral import AncestralKSampler, NoiseSource, NonNegativeFloat


class DDPMSampler(AncestralKSampler):
    """One model call per step: with q = (sigma_next / sigma)^2,

    x <- D + q (x - D) + s_noise sigma_next sqrt(1 - q) z   (no noise into sigma_next = 0).
    """

    noise_options = ("s_noise",)

    @sampler_config
    def __init__(self, s_noise: NonNegativeFloat = 1.0, noise_source: NoiseSource = "generator"):
        """DDPM (ComfyUI ddpm): noise scale s_noise (ComfyUI has none: 1; 0 keeps only the posterior mean);
        noise_source "seed" is ComfyUI's noise stream."""

    def program(self, x: torch.Tensor) -> Program:
        sigmas, s_noise = self.grid, self.config.s_noise
        noisy = self.is_stochastic
        noise = self.noise_stream(x)
        for sigma, sigma_next in pairwise(sigmas):
            denoised = yield x
            q = (sigma_next / sigma) ** 2
            x = denoised + (x - denoised) * q
            if noisy and sigma_next > 0:
                x = x + noise() * (s_noise * sigma_next * math.sqrt(1 - q))
        return x
