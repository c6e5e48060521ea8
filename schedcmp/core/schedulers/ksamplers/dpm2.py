"""DPM2: a second-order step in sigma whose slope is taken at the log-sigma midpoint (k-diffusion ``sample_dpm_2``,
inspired by DPM-Solver-2 of Lu et al. 2022, arXiv:2206.00927, but with Euler steps in sigma in the frame of Karras
et al. 2022, arXiv:2206.00364, Alg. 2, including its optional churn; the last step, to sigma = 0, is Euler)."""

from __future__ import annotations

import math

import torch

from ..k_sampler import Program, sampler_config
from .churn import ChurnDraws, ChurnSampler


def _log_midpoint(sigma: float, sigma_next: float) -> float:
    """The midpoint of sigma and sigma_next in log sigma (their geometric mean)."""
    return math.exp((math.log(sigma) + math.log(sigma_next)) / 2)


class DPM2Sampler(ChurnSampler):
    """DPM2 steps: with d = (x - D(x, sigma_hat)) / sigma_hat, go to the log midpoint sigma_mid with Euler,
    x' = x + (sigma_mid - sigma_hat) d, then take the whole step with the slope there:
    x <- x + (sigma_next - sigma_hat) (x' - D(x', sigma_mid)) / sigma_mid. Two model calls per step, one on a step
    to sigma = 0 (Euler there).

    ``s_churn`` > 0 raises sigma to sigma_hat before each step where s_tmin <= sigma <= s_tmax (see
    ``ChurnSampler``).
    """

    calls_per_step = 2

    @sampler_config
    def __init__(self, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
                 churn_draws: ChurnDraws = "every_step"):
        """DPM2 with optional churn (A1111's sigma churn settings); churn_draws "every_step" is k-diffusion's and
        A1111's noise order (a randn each step once churn is on), "churn_steps" ComfyUI's (a randn only where a
        step churns)."""

    def call_sigmas(self, sigmas: list[float]) -> list[float]:
        calls = []
        for i, gamma in enumerate(self._gammas()):
            sigma_hat = sigmas[i] * (gamma + 1)
            calls.append(sigma_hat)
            if sigmas[i + 1] != 0:
                calls.append(_log_midpoint(sigma_hat, sigmas[i + 1]))
        return calls

    def program(self, x: torch.Tensor) -> Program:
        sigmas = self.grid
        for i, (sigma_hat, draws) in enumerate(self._churned()):
            x = self._churn(x, i, sigma_hat, draws)
            denoised = yield x
            d = (x - denoised) / sigma_hat
            if sigmas[i + 1] == 0:
                x = x + d * (sigmas[i + 1] - sigma_hat)
                continue
            sigma_mid = _log_midpoint(sigma_hat, sigmas[i + 1])
            x_2 = x + d * (sigma_mid - sigma_hat)
            denoised_2 = yield x_2
            d_2 = (x_2 - denoised_2) / sigma_mid
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
        return x
