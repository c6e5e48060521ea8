"""Gradient estimation: Euler on dx/dsigma with the slope extrapolated from the previous step's (ComfyUI
``sample_gradient_estimation``; Permenter & Yuan 2024, "Interpreting and improving diffusion models from an
optimization perspective", ICML 2024, arXiv:2306.04848 / openreview o2ND9v0CeK)."""

from __future__ import annotations

import torch

from ..k_sampler import KSampler, Program, sampler_config


class GradientEstimationSampler(KSampler):
    """One model call per step: x <- x + (sigma_next - sigma) (d + (ge_gamma - 1) (d - d_prev)), d = (x - D) /
    sigma, with plain Euler at the first step; the step to sigma = 0 returns D itself.
    """

    @sampler_config
    def __init__(self, ge_gamma: float = 2.0):
        """Gradient estimation with extrapolation weight ``ge_gamma`` (ComfyUI's ``gradient_estimation``)."""

    def program(self, x: torch.Tensor) -> Program:
        sigmas, gamma = self.grid, self.config.ge_gamma
        d_prev: torch.Tensor | None = None
        for i in range(len(sigmas) - 1):
            denoised = yield x
            d = (x - denoised) / sigmas[i]
            dt = sigmas[i + 1] - sigmas[i]
            if sigmas[i + 1] == 0:
                x = denoised
            elif d_prev is None:
                x = x + d * dt
            else:
                x = x + d * dt + (d - d_prev) * ((gamma - 1) * dt)
            d_prev = d
        return x
