"""A1111 1.10's PLMS (``modules/sd_samplers_timesteps_impl.py`` ``plms``): the pseudo linear multistep method of
PNDM (Liu et al. 2022, arXiv:2202.09778, eqs. 11-12) on A1111's DDIM timesteps, with its pseudo improved Euler
first step."""

from __future__ import annotations

from itertools import pairwise

import torch

from ...errors import ConfigError
from ..k_sampler import Program, sampler_config
from .a1111_ddim import A1111TimestepSampler

# Adams-Bashforth weights on (eps_i, eps_{i-1}, ...) once 1, 2 or 3 earlier predictions exist (eq. 12).
_ADAMS_BASHFORTH = {1: (3 / 2, -1 / 2), 2: (23 / 12, -16 / 12, 5 / 12), 3: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


class A1111PLMSSampler(A1111TimestepSampler):
    """PLMS on A1111's timesteps: x <- x + (sigma_next - sigma) eps', eps = (x - D) / sigma.

    The first step is Heun's (a second call at the Euler predictor, eps' the mean of both); later steps take
    eps' from the Adams-Bashforth weights on up to four predictions, one call each: a grid of n steps makes n + 1
    calls (A1111's 20 steps: 19 grid steps, 20 calls).
    The fixed weights ignore the uneven step sizes, as PNDM does.
    """

    @sampler_config
    def __init__(self):
        """A1111's PLMS (no options)."""

    def call_sigmas(self, sigmas: list[float]) -> list[float]:
        if sigmas[1] == 0:
            raise ConfigError(f"{type(self).__name__}: a single step to sigma 0 would call the model at sigma 0 "
                              "(PLMS's first step evaluates its end point); give at least two steps")
        return [sigmas[0], sigmas[1], *sigmas[1:-1]]  # the first step's second call is at its end point

    def program(self, x: torch.Tensor) -> Program:
        grid, history = self.grid, []
        for sigma, sigma_next in pairwise(grid):
            denoised = yield x
            eps = (x - denoised) / sigma
            if history:
                weights = _ADAMS_BASHFORTH[len(history)]
                eps_prime = eps * weights[0]
                for weight, earlier in zip(weights[1:], reversed(history), strict=True):
                    eps_prime = eps_prime + earlier * weight
            else:  # pseudo improved Euler: Heun's step
                predictor = x + eps * (sigma_next - sigma)
                denoised_next = yield predictor
                eps_prime = (eps + (predictor - denoised_next) / sigma_next) / 2
            x = x + eps_prime * (sigma_next - sigma)
            history = [*history, eps][-3:]
        return self.vp_sample(x)
