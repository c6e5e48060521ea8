"""Ancestral DPM-Solver-2 (k-diffusion ``sample_dpm_2_ancestral``): the second-order DPM-Solver step with its
intermediate point halfway in log sigma (Lu et al. 2022, "DPM-Solver", arXiv:2206.00927, Alg. 1 with r_1 = 1/2;
for a VE view of a DDPM model it is the midpoint rule on dx/dsigma = (x - D) / sigma of Karras et al. 2022,
arXiv:2206.00364) taken down to sigma_down, then fresh noise of std sigma_up (the ancestral split of Song et al.
2021, arXiv:2011.13456). ComfyUI's ``sample_dpm_2_ancestral`` is the same for eps / v models.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch

from ..k_sampler import Program, ancestral_split, sampler_config
from .euler_ancestral import AncestralKSampler, NoiseSource, NonNegativeFloat


class DPM2AncestralSampler(AncestralKSampler):
    """Two model calls per step (one into sigma_down = 0): with (sigma_down, sigma_up) the ancestral split and
    sigma_mid = sqrt(sigma sigma_down),

    x_mid = x + (sigma_mid - sigma) (x - D) / sigma,   x <- x + (sigma_down - sigma) (x_mid - D_mid) / sigma_mid,

    then s_noise sigma_up z. A step with sigma_down = 0 (the last one) is a plain Euler step without noise.
    """

    calls_per_step = 2

    @sampler_config
    def __init__(
        self, eta: NonNegativeFloat = 1.0, s_noise: NonNegativeFloat = 1.0, noise_source: NoiseSource = "generator"
    ):
        """DPM2 ancestral: noise amount eta, noise scale s_noise; noise_source "seed" is ComfyUI's noise stream."""

    def _steps(self, sigmas: list[float]) -> list[tuple[float, float, float]]:
        """(sigma, sigma_down, sigma_up) of every step."""
        eta = self.config.eta
        return [(s, *ancestral_split(s, n, eta)) for s, n in pairwise(sigmas)]

    def call_sigmas(self, sigmas: list[float]) -> list[float]:
        calls = []
        for sigma, sigma_down, _ in self._steps(sigmas):
            calls.append(sigma)
            if sigma_down > 0:
                calls.append(math.sqrt(sigma * sigma_down))
        return calls

    def program(self, x: torch.Tensor) -> Program:
        noisy, s_noise = self.is_stochastic, self.config.s_noise
        noise = self.noise_stream(x)
        for sigma, sigma_down, sigma_up in self._steps(self.grid):
            denoised = yield x
            slope = (x - denoised) / sigma
            if sigma_down == 0:
                x = x + slope * (sigma_down - sigma)
                continue
            sigma_mid = math.sqrt(sigma * sigma_down)
            x_mid = x + slope * (sigma_mid - sigma)
            denoised_mid = yield x_mid
            x = x + (x_mid - denoised_mid) * ((sigma_down - sigma) / sigma_mid)
            if noisy:
                x = x + noise() * (s_noise * sigma_up)
        return x
