"""Multistep consistency sampling (ComfyUI ``sample_lcm``; Luo et al. 2023, "Latent Consistency Models",
arXiv:2310.04378, Alg. 1, after Song et al. 2023, arXiv:2303.01469, Alg. 1), on the model's denoiser D."""

from __future__ import annotations

import torch

from ..k_sampler import KSampler, Program, sampler_config


class LCMSampler(KSampler):
    """One model call per step: x <- D(x, sigma), then x <- x + sigma_next z with fresh noise z (ComfyUI's
    ``noise_scaling`` at sigma_next); the last step to sigma = 0 returns D."""

    stochastic = True

    @sampler_config
    def __init__(self):
        """LCM sampling: jump to the prediction, re-noise to the next level (ComfyUI's lcm)."""

    def program(self, x: torch.Tensor) -> Program:
        for sigma_next in self.grid[1:]:
            x = yield x
            if sigma_next > 0:
                x = x + self.noise_like(x) * sigma_next
        return x
