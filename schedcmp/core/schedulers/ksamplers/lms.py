"""Linear multistep in sigma (k-diffusion ``sample_lms``): the Adams-Bashforth idea (Hairer, Norsett & Wanner,
*Solving ODEs I*, sec. III.1) on the probability-flow ODE dx/dsigma = (x - D) / sigma of Karras et al. 2022,
arXiv:2206.00364, eq. 3, with the coefficients of the uneven sigma grid found by quadrature."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from ...configuration import PositiveInt
from ..k_sampler import KSampler, Program, sampler_config


def multistep_coefficients(sigmas: Sequence[float], order: int) -> list[list[float]]:
    """Per step i, the weights of the slopes d_i, d_(i-1), ...: the integrals over [sigma_i, sigma_(i+1)] of the
    Lagrange basis polynomials through the last min(i + 1, order) grid sigmas (Gauss-Legendre, exact for them)."""
    nodes, weights = (values.tolist() for values in np.polynomial.legendre.leggauss(order))
    table = []
    for i in range(len(sigmas) - 1):  # Python floats: a handful of nodes, where numpy's overhead would dominate
        a, b = sigmas[i], sigmas[i + 1]
        taus = [(a + b) / 2 + (b - a) / 2 * node for node in nodes]
        past = [sigmas[i - k] for k in range(min(i + 1, order))]
        row = []
        for j, sigma_j in enumerate(past):
            basis = [1.0] * len(taus)
            for k, sigma_k in enumerate(past):
                if k != j:
                    basis = [value * (tau - sigma_k) / (sigma_j - sigma_k) for value, tau in zip(basis, taus,
                                                                                                 strict=True)]
            row.append((b - a) / 2 * sum(w * v for w, v in zip(weights, basis, strict=True)))
        table.append(row)
    return table


class LMSSampler(KSampler):
    """x <- x + sum_j c_(i,j) d_(i-j) over the last min(i + 1, order) slopes d = (x - D) / sigma, c_(i,j) the
    integral of the j-th Lagrange basis polynomial in sigma over the step; one model call per step.

    The coefficients depend only on the grid, so ``set_timesteps`` computes them once.
    """

    @sampler_config
    def __init__(self, order: PositiveInt = 4, last_step: Literal["multistep", "denoised"] = "multistep"):
        """LMS of ``order``; last_step "multistep" takes the multistep step to sigma = 0 too (k-diffusion, A1111),
        "denoised" returns the last prediction D there instead (ComfyUI)."""

    def prepare_grid(self) -> None:
        """The multistep coefficients of every step of the grid."""
        self._coefficients = multistep_coefficients(self.grid, self.config.order)

    def program(self, x: torch.Tensor) -> Program:
        sigmas = self.grid
        slopes: deque[torch.Tensor] = deque(maxlen=self.config.order)
        for i, coefficients in enumerate(self._coefficients):
            denoised = yield x
            if sigmas[i + 1] == 0 and self.config.last_step == "denoised":
                return denoised
            slopes.appendleft((x - denoised) / sigmas[i])
            x = x + sum(c * d for c, d in zip(coefficients, slopes, strict=True))
        return x
