"""RES multistep: the second-order multistep exponential integrator in lambda = -log sigma on the denoised
prediction, optionally ancestral (ComfyUI ``sample_res_multistep`` / ``sample_res_multistep_ancestral``; Zhang
et al. 2023, "Improved order analysis and design of exponential integrator for diffusion models",
arXiv:2308.02157, its second-order multistep method)."""

from __future__ import annotations

import math

import torch

from ..k_sampler import KSampler, Program, ancestral_split, sampler_config


class ResMultistepSampler(KSampler):
    """One model call per step to sigma_down (= sigma_next without noise), h = log(sigma / sigma_down):
    x <- (sigma_down / sigma) x + h (b1 D + b2 D_prev), with b2 = phi2(-h) / c2, b1 = phi1(-h) - b2 and c2 =
    log(sigma_down_prev / sigma_prev) / h (the previous step's own lambda step over this one, negative);
    an Euler step first and at the step to sigma = 0.
    """

    @sampler_config
    def __init__(self):
        """RES second-order multistep, deterministic (ComfyUI's ``res_multistep``)."""

    def _noise(self) -> tuple[float, float]:
        """(eta, s_noise) of the fresh noise: none."""
        return 0.0, 0.0

    def program(self, x: torch.Tensor) -> Program:
        sigmas = self.grid
        eta, s_noise = self._noise()
        previous: tuple[torch.Tensor, float, float] | None = None  # (D, sigma, sigma_down) of the last step
        for i in range(len(sigmas) - 1):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            denoised = yield x
            sigma_down, sigma_up = ancestral_split(sigma, sigma_next, eta)
            if sigma_down == 0 or previous is None:
                x = x + (x - denoised) * ((sigma_down - sigma) / sigma)
            else:
                denoised_prev, sigma_prev, sigma_down_prev = previous
                h = math.log(sigma / sigma_down)
                c2 = math.log(sigma_down_prev / sigma_prev) / h
                phi1 = -math.expm1(-h) / h
                phi2 = (1 - phi1) / h
                b2 = phi2 / c2
                x = x * (sigma_down / sigma) + denoised * (h * (phi1 - b2)) + denoised_prev * (h * b2)
            if sigma_next > 0 and sigma_up > 0:
                x = x + self.noise_like(x) * (s_noise * sigma_up)
            previous = denoised, sigma, sigma_down
        return x


class ResMultistepAncestralSampler(ResMultistepSampler):
    """``ResMultistepSampler`` stepping to sigma_down of the ancestral split, then adding fresh noise of std
    s_noise sigma_up (one draw per step above sigma = 0; k-diffusion's get_ancestral_step with ``eta``).
    """

    stochastic = True
    noise_options = ("eta", "s_noise")

    @sampler_config
    def __init__(self, eta: float = 1.0, s_noise: float = 1.0):
        """RES multistep with ancestral noise (ComfyUI's ``res_multistep_ancestral``)."""

    def _noise(self) -> tuple[float, float]:
        """(eta, s_noise) of the fresh noise: the config's."""
        return self.config.eta, self.config.s_noise
