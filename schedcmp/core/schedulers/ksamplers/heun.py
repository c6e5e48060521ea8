"""Heun's second-order method on the probability-flow ODE in sigma (k-diffusion ``sample_heun``; Karras et al. 2022,
arXiv:2206.00364, Alg. 2 with the optional churn of its lines 4-6; its last step, to sigma = 0, is Euler)."""

from __future__ import annotations

import math

import torch

from ..k_sampler import Program, sampler_config
from .churn import ChurnDraws, ChurnSampler


class HeunSampler(ChurnSampler):
    """Heun steps: d = (x - D(x, sigma_hat)) / sigma_hat, Euler predictor x' = x + (sigma_next - sigma_hat) d,
    corrector x <- x + (sigma_next - sigma_hat) (d + d') / 2 with d' = (x' - D(x', sigma_next)) / sigma_next; two
    model calls per step, one on a step to sigma = 0 (Euler there).

    ``s_churn`` > 0 raises sigma to sigma_hat before each step where s_tmin <= sigma <= s_tmax (see
    ``ChurnSampler``).
    """

    calls_per_step = 2

    @sampler_config
    def __init__(self, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
                 churn_draws: ChurnDraws = "every_step"):
        """Heun with optional churn (A1111's sigma churn settings); churn_draws "every_step" is k-diffusion's and
        A1111's noise order (a randn each step once churn is on), "churn_steps" ComfyUI's (a randn only where a
        step churns)."""

    def call_sigmas(self, sigmas: list[float]) -> list[float]:
        gammas = self._gammas()
        calls = []
        for i, gamma in enumerate(gammas):
            calls.append(sigmas[i] * (gamma + 1))
            if sigmas[i + 1] != 0:
                calls.append(sigmas[i + 1])
        return calls

    def program(self, x: torch.Tensor) -> Program:
        sigmas = self.grid
        for i, (sigma_hat, draws) in enumerate(self._churned()):
            x = self._churn(x, i, sigma_hat, draws)
            denoised = yield x
            d = (x - denoised) / sigma_hat  # dx/dsigma (Karras et al. 2022 eq. 3)
            dt = sigmas[i + 1] - sigma_hat
            if sigmas[i + 1] == 0:
                x = x + d * dt
                continue
            x_2 = x + d * dt
            denoised_2 = yield x_2
            d_2 = (x_2 - denoised_2) / sigmas[i + 1]
            x = x + (d + d_2) / 2 * dt
        return x
