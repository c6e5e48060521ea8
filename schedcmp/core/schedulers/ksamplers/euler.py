"""Euler on the probability-flow ODE in sigma (k-diffusion ``sample_euler``; Karras et al. 2022, arXiv:2206.00364,
Alg. 2 with the optional churn of its lines 4-6)."""

from __future__ import annotations

import math

import torch

from ..k_sampler import KSampler, Program, sampler_config


class EulerSampler(KSampler):
    """One Euler step per model call: x <- x + (sigma_next - sigma) (x - D) / sigma.

    ``s_churn`` > 0 raises sigma to sigma_hat = sigma (1 + gamma) with fresh noise before each step where
    s_tmin <= sigma <= s_tmax (gamma = min(s_churn / n, sqrt 2 - 1)).
    """

    @sampler_config
    def __init__(self, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0):
        """Euler with optional churn (A1111's sigma churn settings, ComfyUI's defaults)."""

    @property
    def is_stochastic(self) -> bool:
        return any(gamma > 0 for gamma in self._gammas()) if len(self.sigmas) else self.config.s_churn > 0

    def _gammas(self) -> list[float]:
        """Churn gamma_i of every step (Karras et al. 2022 Alg. 2 line 4)."""
        config, sigmas = self.config, self._grid
        n = len(sigmas) - 1
        gamma = min(config.s_churn / n, 2**0.5 - 1) if n else 0.0
        return [gamma if config.s_tmin <= s <= config.s_tmax else 0.0 for s in sigmas[:-1]]

    def call_sigmas(self, sigmas: list[float]) -> list[float]:
        return [s * (gamma + 1) for s, gamma in zip(sigmas[:-1], self._gammas(), strict=True)]

    def first_point_moves(self) -> bool:
        return self._gammas()[0] > 0

    def program(self, x: torch.Tensor) -> Program:
        sigmas = self.grid
        for i, gamma in enumerate(self._gammas()):
            sigma_hat = sigmas[i] * (gamma + 1)
            if gamma > 0:
                eps = self.noise_like(x) * self.config.s_noise
                x = x + eps * math.sqrt(sigma_hat**2 - sigmas[i] ** 2)
            denoised = yield x
            d = (x - denoised) / sigma_hat  # eq. 3, dx/dsigma
            x = x + d * (sigmas[i + 1] - sigma_hat)
        return x
