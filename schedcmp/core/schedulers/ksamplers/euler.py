"""Euler on the probability-flow ODE in sigma (k-diffusion ``sample_euler``; Karras et al. 2022, arXiv:2206.00364,
Alg. 2 with the optional churn of its lines 4-6)."""

from __future__ import annotations

import math

import torch

from ..k_sampler import Program, sampler_config
from .churn import ChurnDraws, ChurnSampler


class EulerSampler(ChurnSampler):
    """One Euler step per model call: x <- x + (sigma_next - sigma_hat) (x - D(x, sigma_hat)) / sigma_hat.

    ``s_churn`` > 0 raises sigma to sigma_hat before each step where s_tmin <= sigma <= s_tmax (see
    ``ChurnSampler``).
    """

    @sampler_config
    def __init__(self, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
                 churn_draws: ChurnDraws = "every_step"):
        """Euler with optional churn (A1111's sigma churn settings); churn_draws "every_step" is k-diffusion's and
        A1111's noise order, "churn_steps" ComfyUI's."""

    def call_sigmas(self, sigmas: list[float]) -> list[float]:
        return [sigma_hat for sigma_hat, _ in self._churned()]

    def program(self, x: torch.Tensor) -> Program:
        sigmas = self.grid
        for i, (sigma_hat, draws) in enumerate(self._churned()):
            x = self._churn(x, i, sigma_hat, draws)
            denoised = yield x
            d = (x - denoised) / sigma_hat  # eq. 3, dx/dsigma
            x = x + d * (sigmas[i + 1] - sigma_hat)
        return x
