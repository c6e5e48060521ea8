"""Variable-step improved PNDM: Adams-Bashforth-type steps on dx/dsigma whose weights follow the actual sigma
spacing (ComfyUI ``sample_ipndm_v``, from zju-pi/diff-sampler; Zhou et al. 2024, arXiv:2312.00094, the AMED
paper's iPNDM baseline)."""

from __future__ import annotations

from typing import Annotated

import torch

from ...configuration import Range
from ..k_sampler import KSampler, Program, sampler_config


def variable_step_weights(steps: list[float]) -> tuple[float, ...]:
    """Slope weights, newest first, from the signed sigma steps [sigma_next - sigma, sigma - sigma_prev, ...]."""
    # diff-sampler's formulas (ComfyUI's), one weight per step given (1 to 4), kept as they are: order 2 is
    # exact for a linear slope on any spacing and order 3 reduces to Adams-Bashforth on equal steps (exact for
    # a quadratic only there); the order-4 weights are (57, -65, 43, -11) / 24 on equal steps, not AB4's, and
    # on unequal steps they do not even sum to 1.
    if len(steps) == 1:
        return (1.0,)
    h, h1 = steps[0], steps[1]
    r1 = h / h1
    w1, w2 = 1 + r1 / 2, -r1 / 2  # second order
    if len(steps) == 2:
        return w1, w2
    h2 = steps[2]
    r2 = h1 / h2
    a = (1 - h * h / (3 * h1 * (h1 + h2))) / 2  # third-order correction
    w1, w2, w3 = w1 + a, w2 - (1 + r2) * a, a * r2
    if len(steps) == 3:
        return w1, w2, w3
    h3 = steps[3]
    q = h1 * (h1 + h2) / (h2 * (h2 + h3))
    span, span2 = h + h1, h + h1 + h2
    b = ((1 - h / (3 * span)) / 2 + (1 - h / (2 * span)) * h / (6 * span2)) * (
        h * span * span2 / (h1 * (h1 + h2) * (h1 + h2 + h3))
    )  # fourth-order correction
    return w1 + b, w2 - (1 + r2 + q) * b, w3 + (r2 + q * (1 + h2 / h3)) * b, -b * q * r2


class IPNDMVSampler(KSampler):
    """One model call per step: x <- x + (sigma_next - sigma) sum_k w_k d_{i-k}, d = (x - D) / sigma, with
    weights w_k of order min(i + 1, max_order) computed from the last steps of the sigma grid
    (``variable_step_weights``); the step to sigma = 0 returns D itself.
    """

    @sampler_config
    def __init__(self, max_order: Annotated[int, Range(ge=1, le=4)] = 4):
        """Variable-step iPNDM using up to ``max_order`` slopes (ComfyUI's ``ipndm_v``, which fixes 4)."""

    def program(self, x: torch.Tensor) -> Program:
        sigmas, keep = self.grid, self.config.max_order - 1
        earlier: list[torch.Tensor] = []  # the previous slopes, newest first, at most max_order - 1
        for i in range(len(sigmas) - 1):
            denoised = yield x
            d = (x - denoised) / sigmas[i]
            if sigmas[i + 1] == 0:
                x = denoised
            else:
                slopes = [d, *earlier]
                steps = [sigmas[i + 1 - k] - sigmas[i - k] for k in range(len(slopes))]
                weights = variable_step_weights(steps)
                x = x + sum(w * s for w, s in zip(weights, slopes, strict=True)) * steps[0]
            earlier = [d, *earlier][:keep]
        return x
