"""DEIS: exponential-integrator Adams-Bashforth steps on dx/dsigma = eps, the slope interpolated by a Lagrange
polynomial through the last few steps (ComfyUI ``sample_deis`` and ``deis.py``, from zju-pi/diff-sampler's PyTorch
DEIS; Zhang & Chen 2022, arXiv:2204.13902: tAB-DEIS interpolates in the VP time t, rhoAB-DEIS in rho = sigma)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
import torch

from ...configuration import Range
from ..k_sampler import KSampler, Program, sampler_config

# diff-sampler's tAB maps every sigma to the time t of EDM's VP-SDE (Karras et al. 2022, Table 1), whose
# constants follow from sigma(eps_s) = 0.002 and sigma(1) = 80, whatever the model's own schedule.
_EPS_S, _VP_SIGMA_MIN, _VP_SIGMA_MAX = 1e-3, 0.002, 80.0
_VP_BETA_D = 2 * (math.log1p(_VP_SIGMA_MIN**2) / _EPS_S - math.log1p(_VP_SIGMA_MAX**2)) / (_EPS_S - 1)
_VP_BETA_MIN = math.log1p(_VP_SIGMA_MAX**2) - _VP_BETA_D / 2
_QUADRATURE_NODES = 10_000  # diff-sampler's N: the tAB integrals are a sum over this many equally spaced t


def vp_time(sigma: float) -> float:
    """The VP time t with log(1 + sigma^2) = beta_d t^2 / 2 + beta_min t (EDM's VP constants)."""
    return (math.sqrt(_VP_BETA_MIN**2 + 2 * _VP_BETA_D * math.log1p(sigma * sigma)) - _VP_BETA_MIN) / _VP_BETA_D


def _lagrange_basis(nodes: Sequence[float], j: int, at: np.ndarray) -> np.ndarray:
    """The j-th Lagrange basis polynomial of ``nodes`` evaluated at ``at``."""
    value = np.ones_like(at)
    for k, node in enumerate(nodes):
        if k != j:
            value = value * (at - node) / (nodes[j] - node)
    return value


def tab_weights(t: Sequence[float], t_next: float) -> list[float]:
    """int_{t[0]}^{t_next} (dsigma/dtau) l_j(tau) dtau, l_j the Lagrange basis of VP times ``t`` (newest first)."""
    # diff-sampler's rule, kept because it is the algorithm's: N equally spaced nodes from t[0] to t_next
    # inclusive, each weighted (t_next - t[0]) / N (a ~1e-4 relative quadrature error); float64 NumPy here.
    tau = np.linspace(t[0], t_next, _QUADRATURE_NODES)
    exponent = _VP_BETA_D * tau * tau / 2 + _VP_BETA_MIN * tau  # log(1 + sigma(tau)^2)
    sigma = np.sqrt(np.expm1(exponent))
    dsigma_dtau = (_VP_BETA_MIN + _VP_BETA_D * tau) * (1 + sigma * sigma) / (2 * sigma)
    dtau = (t_next - t[0]) / _QUADRATURE_NODES
    return [float((dsigma_dtau * _lagrange_basis(t, j, tau)).sum()) * dtau for j in range(len(t))]


def rhoab_weights(sigmas: Sequence[float], sigma_next: float) -> list[float]:
    """int_{sigmas[0]}^{sigma_next} l_j(s) ds for the Lagrange basis l_j of ``sigmas`` (newest first), exactly."""
    weights = []
    for j, node in enumerate(sigmas):
        poly = [1.0]  # coefficients, constant first, of prod_{k != j} (s - sigmas[k]) / (node - sigmas[k])
        for k, other in enumerate(sigmas):
            if k != j:
                scale = node - other
                poly = [(low - other * high) / scale for low, high in zip([0.0, *poly], [*poly, 0.0], strict=True)]
        antiderivative = [c / (n + 1) for n, c in enumerate(poly)]
        weights.append(sum(c * (sigma_next ** (n + 1) - sigmas[0] ** (n + 1)) for n, c in enumerate(antiderivative)))
    return weights


class DEISSampler(KSampler):
    """One model call per step: x <- x + sum_k C_ik d_{i-k}, d = (x - D) / sigma, the C_ik integrating the Lagrange
    interpolant of the last min(i + 1, max_order) slopes over the step (``tab_weights`` in VP time, or
    ``rhoab_weights`` in sigma); an Euler step at the first step and at the step to sigma = 0.

    The weights depend only on the grid, so ``set_timesteps`` computes them once. ComfyUI exposes only "tab";
    its ``sample_deis(deis_mode="rhoab")`` asks deis.py for one weight too many from step max_order + 1 on and
    raises there (max_order 2, 3) or reuses stale weights (4); "rhoab" here keeps the min(i + 1, max_order)-point
    rule that ComfyUI applies to the steps before.
    """

    @sampler_config
    def __init__(self, max_order: Annotated[int, Range(ge=1, le=4)] = 3, deis_mode: Literal["tab", "rhoab"] = "tab"):
        """DEIS up to order ``max_order``, ``deis_mode`` "tab" (VP time: ComfyUI's ``deis``) or "rhoab" (sigma)."""

    def prepare_grid(self) -> None:
        """Every step's DEIS weights (host floats, once per grid)."""
        grid, order, tab = self.grid, self.config.max_order, self.config.deis_mode == "tab"
        times = [vp_time(s) for s in grid] if tab else grid
        rule = tab_weights if tab else rhoab_weights
        self._weights: list[list[float]] = []  # per step; empty: an Euler step
        for i in range(len(grid) - 1):
            nodes = times[i::-1][:order]  # this step's and the earlier steps' abscissae, newest first
            usable = len(nodes) > 1 and grid[i + 1] > 0
            self._weights.append(rule(nodes, times[i + 1]) if usable else [])

    def program(self, x: torch.Tensor) -> Program:
        sigmas, keep = self.grid, self.config.max_order - 1
        earlier: list[torch.Tensor] = []  # the previous slopes, newest first, at most max_order - 1
        for i, weights in enumerate(self._weights):
            denoised = yield x
            d = (x - denoised) / sigmas[i]
            if weights:
                x = x + sum(w * s for w, s in zip(weights, [d, *earlier], strict=True))
            else:
                x = x + d * (sigmas[i + 1] - sigmas[i])
            earlier = [d, *earlier][:keep]
        return x
