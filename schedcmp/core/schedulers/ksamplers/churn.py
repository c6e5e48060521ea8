"""Churn (Karras et al. 2022, arXiv:2206.00364, Alg. 2 lines 4-6): the noise raise Euler, Heun and DPM2 share."""

from __future__ import annotations

import math
from typing import Literal

import torch

from ..k_sampler import KSampler

ChurnDraws = Literal["every_step", "churn_steps"]


class ChurnSampler(KSampler):
    """The churn Euler, Heun, DPM2 and Heun++ 2 share (Karras et al. 2022 Alg. 2 lines 4-6): before step i, where
    s_tmin <= sigma_i <= s_tmax, sigma rises to sigma_hat = sigma_i (1 + gamma) with fresh noise of std
    sqrt(sigma_hat^2 - sigma_i^2), gamma = min(s_churn / n, sqrt 2 - 1). Subclasses declare the options s_churn,
    s_tmin, s_tmax, s_noise and, where the tools differ, churn_draws (k-diffusion's "every_step" without it)."""

    @property
    def is_stochastic(self) -> bool:
        if self.config.s_noise == 0:
            return False
        return any(gamma > 0 for gamma in self._gammas()) if len(self.sigmas) else self.config.s_churn > 0

    def _gammas(self) -> list[float]:
        """Churn gamma_i of every step."""
        config, sigmas = self.config, self._grid
        n = len(sigmas) - 1
        gamma = min(config.s_churn / n, 2**0.5 - 1) if n else 0.0
        return [gamma if config.s_tmin <= s <= config.s_tmax else 0.0 for s in sigmas[:-1]]

    def first_point_moves(self) -> bool:
        return self._gammas()[0] > 0

    def _churned(self) -> list[tuple[float, bool]]:
        """Per step: sigma_hat, and whether a randn is drawn before it. k-diffusion draws one at every step once
        any step churns (used only where gamma > 0); ComfyUI (``churn_draws="churn_steps"``) only where gamma > 0.
        Without churn no draw matters, so none is made."""
        gammas = self._gammas()
        every = self.config.get("churn_draws", "every_step") == "every_step" and any(gamma > 0 for gamma in gammas)
        return [(s * (gamma + 1), every or gamma > 0) for s, gamma in zip(self._grid[:-1], gammas, strict=True)]

    def _churn(self, x: torch.Tensor, i: int, sigma_hat: float, draws: bool) -> torch.Tensor:
        """x with step i's churn noise added (x itself where the step does not churn)."""
        if not draws:
            return x
        eps = self.noise_like(x) * self.config.s_noise
        rise = sigma_hat**2 - self.grid[i] ** 2
        return x + eps * math.sqrt(rise) if rise > 0 else x
