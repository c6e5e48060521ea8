"""Improved PNDM: explicit Adams-Bashforth steps on dx/dsigma with fixed, equal-step weights (ComfyUI
``sample_ipndm``, from zju-pi/diff-sampler; iPNDM of Zhang & Chen 2022, arXiv:2204.13902, the DEIS paper)."""

from __future__ import annotations

import itertools
from typing import Annotated

import torch

from ...configuration import Range
from ..k_sampler import KSampler, Program, sampler_config

# Adams-Bashforth weights of the newest slope first, by the number of slopes used (1 = Euler).
_ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


class IPNDMSampler(KSampler):
    """One model call per step: x <- x + (sigma_next - sigma) sum_k w_k d_{i-k}, d = (x - D) / sigma.

    The w_k are the constant-step Adams-Bashforth weights of order min(i + 1, max_order), whatever the actual
    spacing of the sigmas; the step to sigma = 0 returns D itself.
    """

    @sampler_config
    def __init__(self, max_order: Annotated[int, Range(ge=1, le=4)] = 4):
        """iPNDM using up to ``max_order`` slopes (ComfyUI's ``ipndm``, which fixes 4)."""

    def program(self, x: torch.Tensor) -> Program:
        sigmas, keep = self.grid, self.config.max_order - 1
        earlier: list[torch.Tensor] = []  # the previous slopes, newest first, at most max_order - 1
        for sigma, sigma_next in itertools.pairwise(sigmas):
            denoised = yield x
            d = (x - denoised) / sigma
            if sigma_next == 0:
                x = denoised
            else:
                slopes = [d, *earlier]
                slope = sum(w * s for w, s in zip(_ADAMS_BASHFORTH[len(slopes)], slopes, strict=True))
                x = x + slope * (sigma_next - sigma)
            earlier = [d, *earlier][:keep]
        return x
