"""Ancestral DPM-Solver++(2S) (k-diffusion ``sample_dpmpp_2s_ancestral``): the singlestep second-order
data-prediction solver (Lu et al. 2022, "DPM-Solver++", arXiv:2211.01095, Alg. 1 with r = 1/2) in
t = -log sigma, taken down to sigma_down, then fresh noise of std sigma_up (the ancestral split of Song et al.
2021, arXiv:2011.13456). ComfyUI's ``sample_dpmpp_2s_ancestral`` is the same for eps / v models.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch

from ..k_sampler import KSampler, Program, ancestral_split, sampler_config
from .euler_ancestral import AncestralKSampler, NoiseSource, NonNegativeFloat


class SingleStepAncestral(KSampler):
    """The step plan DPM++ 2S ancestral and its CFG++ variant share: each step to the ancestral sigma_down calls the
    model at sigma and, unless sigma_down is 0, at the log-midpoint sqrt(sigma sigma_down)."""

    def _steps(self, sigmas: list[float]) -> list[tuple[float, float, float, float]]:
        """(sigma, sigma_next, sigma_down, sigma_up) of every step."""
        eta = self.config.eta
        return [(s, n, *ancestral_split(s, n, eta)) for s, n in pairwise(sigmas)]

    def call_sigmas(self, sigmas: list[float]) -> list[float]:
        calls = []
        for sigma, _, sigma_down, _ in self._steps(sigmas):
            calls.append(sigma)
            if sigma_down > 0:
                calls.append(math.sqrt(sigma * sigma_down))
        return calls


class DPMPP2SAncestralSampler(SingleStepAncestral, AncestralKSampler):
    """Two model calls per step (one into sigma_down = 0): with (sigma_down, sigma_up) the ancestral split,
    h = log(sigma / sigma_down) and sigma_mid = sigma e^(-h/2) = sqrt(sigma sigma_down),

    x_mid = e^(-h/2) x + (1 - e^(-h/2)) D,   x <- e^(-h) x + (1 - e^(-h)) D_mid,

    then s_noise sigma_up z unless sigma_next = 0. A step with sigma_down = 0 is an Euler step (it lands on D).
    """

    calls_per_step = 2

    @sampler_config
    def __init__(
        self, eta: NonNegativeFloat = 1.0, s_noise: NonNegativeFloat = 1.0, noise_source: NoiseSource = "generator"
    ):
        """DPM++ 2S ancestral: noise amount eta, noise scale s_noise; noise_source "seed" is ComfyUI's stream."""

    def program(self, x: torch.Tensor) -> Program:
        noisy, s_noise = self.is_stochastic, self.config.s_noise
        noise = self.noise_stream(x)
        for sigma, sigma_next, sigma_down, sigma_up in self._steps(self.grid):
            denoised = yield x
            if sigma_down == 0:
                x = x + (x - denoised) * ((sigma_down - sigma) / sigma)
            else:
                h = math.log(sigma / sigma_down)
                x_mid = denoised + (x - denoised) * math.exp(-h / 2)
                denoised_mid = yield x_mid
                x = x * math.exp(-h) - denoised_mid * math.expm1(-h)
            if noisy and sigma_next > 0:
                x = x + noise() * (s_noise * sigma_up)
        return x
