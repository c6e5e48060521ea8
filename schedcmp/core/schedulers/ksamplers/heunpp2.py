"""Heun++ 2: a Heun step whose slope averages up to three Euler-chained slopes with weights proportional to
their sigmas (ComfyUI ``sample_heunpp2``, from Carzit/sd-webui-samplers-scheduler; no paper; the optional churn is
Karras et al. 2022, arXiv:2206.00364, Alg. 2 lines 4-6)."""

from __future__ import annotations

import math

import torch

from ..k_sampler import Program, sampler_config
from .churn import ChurnSampler


class HeunPP2Sampler(ChurnSampler):
    """Step i from sigma_hat (the churned sigma_i) with d = (x - D) / sigma_hat and dt = sigma_{i+1} - sigma_hat:

    - to the last sigma: Euler, x <- x + d dt (one call);
    - to the one before it: x_2 = x + d dt, d_2 its slope at sigma_{i+1}; x <- x + ((1 - w_2) d + w_2 d_2) dt
      with w_2 = sigma_{i+1} / (2 sigma_0) (two calls);
    - otherwise also x_3 = x_2 + d_2 (sigma_{i+2} - sigma_{i+1}) and its slope d_3 at sigma_{i+2};
      x <- x + ((1 - w_2 - w_3) d + w_2 d_2 + w_3 d_3) dt with w_k = sigma_{i+k-1} / (3 sigma_0) (three calls).

    ``s_churn`` > 0 raises sigma to sigma_hat = sigma (1 + gamma) with fresh noise where s_tmin <= sigma <= s_tmax
    (``ChurnSampler``); as in ComfyUI, a noise draw is then made at every step, used or not.
    """

    calls_per_step = 3

    @sampler_config
    def __init__(self, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0):
        """Heun++ 2 with optional churn (ComfyUI's ``heunpp2``)."""

    def call_sigmas(self, sigmas: list[float]) -> list[float]:
        end, calls = sigmas[-1], []
        for i, gamma in enumerate(self._gammas()):
            calls.append(sigmas[i] * (gamma + 1))
            calls.extend(s for s in sigmas[i + 1 : i + 3] if s != end)
        return calls

    def program(self, x: torch.Tensor) -> Program:
        sigmas, end = self.grid, self.grid[-1]
        for i, (sigma_hat, draws) in enumerate(self._churned()):  # ComfyUI draws at every step once churn is on
            x = self._churn(x, i, sigma_hat, draws)
            denoised = yield x
            d = (x - denoised) / sigma_hat
            dt = sigmas[i + 1] - sigma_hat
            if sigmas[i + 1] == end:
                x = x + d * dt
                continue
            x_2 = x + d * dt
            denoised_2 = yield x_2
            d_2 = (x_2 - denoised_2) / sigmas[i + 1]
            if sigmas[i + 2] == end:
                w_2 = sigmas[i + 1] / (2 * sigmas[0])
                slope = d * (1 - w_2) + d_2 * w_2
            else:
                x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
                denoised_3 = yield x_3
                d_3 = (x_3 - denoised_3) / sigmas[i + 2]
                w_2, w_3 = sigmas[i + 1] / (3 * sigmas[0]), sigmas[i + 2] / (3 * sigmas[0])
                slope = d * (1 - w_2 - w_3) + d_2 * w_2 + d_3 * w_3
            x = x + slope * dt
        return x
