"""UniPC as ComfyUI runs it (``uni_pc`` / ``uni_pc_bh2``), and the multistep predictor-corrector both tools share.

UniPC (Zhao et al. 2023, arXiv:2302.04867): with the data prediction D and the half-log-SNR lambda = -log sigma,
one step from lambda_s to lambda_t (h = lambda_t - lambda_s) is the exponential-integrator predictor UniP,
x_t = (sigma_t / sigma_s) x_s + (1 - e^-h) D_s - B(h) sum_m a_m D1_m, with divided differences
D1_m = (D_{s_m} - D_s) / r_m of the earlier outputs (r_m = (lambda_{s_m} - lambda_s) / h) and coefficients a_m
from the order conditions (B(h) = h for "bh1", e^h - 1 for "bh2"). The corrector UniC repeats the update with the
model output at the predicted point as one more difference, and that output, not one at the corrected point,
enters the history: one model call per step, none after the last (predictor-only) step. The code's third
variant "vary_coeff" (A1111 offers it) solves the order conditions with an inverse Taylor matrix.

ComfyUI (``comfy/extra_samplers/uni_pc.py`` @ a125cd84, ``sample_unipc``): the sigmas are the solver's times
(``SigmaConvert``: alpha = 1 / sqrt(1 + sigma^2)) with a final 0 replaced by 0.001; the model is called at every
sigma but the last; order min(3, n - 1), lower order at the last two steps; it starts from the scaled noise that
``KSAMPLER`` hands every sampler (sqrt(1 + sigma_0^2) z at full denoise) and, ComfyUI discarding the penultimate
sigma for these samplers, usually sees a grid of n + 1 steps with one removed. It evaluates alpha, the VP std and
lambda in float32 from the sigmas; at sigma = 0.001, 1 - alpha^2 = 1e-6 keeps about two significant digits there,
which moves the result by ~1e-4 of its std, so the noise levels the solver uses are ComfyUI's float32 ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..k_sampler import KSampler, Program, sampler_config

Variant = Literal["bh1", "bh2", "vary_coeff"]
COMFY_LAST_SIGMA = 0.001  # ComfyUI's stand-in for a final sigma of 0


@dataclass(frozen=True)
class UniPCStep:
    """One step's coefficients in sigma form: x_next = ratio x + sum_j w_j D_j over the history (newest first)."""

    ratio: float  # sigma_t / sigma_s
    predictor: tuple[float, ...]  # weights of the history in the predicted point
    corrector: tuple[float, ...] | None  # weights of the history, then of the output at the predicted point


def unipc_orders(steps: int, order: int, lower_order_final: bool) -> list[int]:
    """Order of each of ``steps`` steps: warm-up at orders 1 .. order - 1, then ``order``, falling to 2 and 1 at
    the last two steps with ``lower_order_final`` (the UniPC code's ``min(order, steps + 1 - step)``)."""
    return [step if step < order else min(order, steps + 1 - step) if lower_order_final else order
            for step in range(1, steps + 1)]


def _phi_chain(hh: float, count: int) -> list[float]:
    """h phi_1(hh) = e^hh - 1, then g_k = g_{k-1} / hh - 1 / k! (g_0 = h phi_1): the Taylor remainders of e^hh."""
    chain = [math.expm1(hh)]
    factorial = 1
    for k in range(1, count + 1):
        chain.append(chain[-1] / hh - 1 / factorial)
        factorial *= k + 1
    return chain


def _step(sigmas: Sequence[float], target: int, order: int, variant: Variant, corrector: bool) -> UniPCStep:
    """Coefficients of the step to ``sigmas[target]`` from the ``order`` points before it (UniP, then UniC)."""
    lambdas = [-math.log(sigmas[target - 1 - m]) for m in range(order)]  # history points, newest first
    h = -math.log(sigmas[target]) - lambdas[0]
    hh = -h  # the data-prediction form integrates e^-lambda
    r = [(lam - lambdas[0]) / h for lam in lambdas[1:]]
    chain = _phi_chain(hh, order)
    base = [-chain[0]] + [0.0] * (order - 1)  # (1 - e^-h) on D_s

    def weights(difference_coefficients: Sequence[float], new: float | None) -> tuple[float, ...]:
        """History weights for sum_m c_m D1_m (+ new (D_t - D_s))."""
        w = list(base)
        for m, c in enumerate(difference_coefficients, start=1):
            w[m] += c / r[m - 1]
            w[0] -= c / r[m - 1]
        if new is None:
            return tuple(w)
        w[0] -= new
        return (*w, new)

    nodes = [*r, 1.0]
    if variant == "vary_coeff":  # the UniPC code's C-matrix form; its last corrector term takes row order - 2 of C^-1
        c_matrix = np.array([[node**k / math.factorial(k + 1) for k in range(order)] for node in nodes])
        if order > 1:
            a_p = np.linalg.inv(c_matrix[:-1, :-1])
            predictor = weights([-sum(chain[k + 1] * a_p[k][m] for k in range(order - 1))
                                 for m in range(order - 1)], None)
        else:
            predictor = tuple(base)
        if not corrector:
            return UniPCStep(sigmas[target] / sigmas[target - 1], predictor, None)
        a_c = np.linalg.inv(c_matrix)
        last_row = max(order - 2, 0)
        return UniPCStep(sigmas[target] / sigmas[target - 1], predictor, weights(
            [-sum(chain[k + 1] * a_c[k][m] for k in range(order - 1)) for m in range(order - 1)],
            -chain[order] * a_c[last_row][-1]))
    b_h = hh if variant == "bh1" else math.expm1(hh)
    b = [chain[i] * math.factorial(i) / b_h for i in range(1, order + 1)]
    r_matrix = np.array([[node**i for node in nodes] for i in range(order)])
    if order == 1:
        predictor = tuple(base)
    else:
        rho_p = [0.5] if order == 2 else np.linalg.solve(r_matrix[:-1, :-1], b[:-1]).tolist()
        predictor = weights([-b_h * rho for rho in rho_p], None)
    if not corrector:
        return UniPCStep(sigmas[target] / sigmas[target - 1], predictor, None)
    rho_c = [0.5] if order == 1 else np.linalg.solve(r_matrix, b).tolist()
    return UniPCStep(sigmas[target] / sigmas[target - 1], predictor,
                     weights([-b_h * rho for rho in rho_c[:-1]], -b_h * rho_c[-1]))


def unipc_steps(sigmas: Sequence[float], orders: Sequence[int], variant: Variant) -> list[UniPCStep]:
    """Coefficients of every step through the positive noise levels ``sigmas`` (one step per gap, of the given
    orders), the corrector at every step but the last."""
    last = len(sigmas) - 1
    return [_step(sigmas, s, order, variant, corrector=s < last) for s, order in enumerate(orders, start=1)]


def unipc_program(x: torch.Tensor, steps: Sequence[UniPCStep]) -> Program:
    """The shared loop: model call at the start, then per step the predictor, a model call there and the
    corrector (the last step predicts only); returns the point after the last step."""
    history = [(yield x)]
    keep = max((len(step.predictor) for step in steps), default=1)
    for step in steps:
        predicted = x * step.ratio
        for w, d in zip(step.predictor, history, strict=False):
            predicted.add_(d, alpha=w)
        if step.corrector is None:
            x = predicted
            continue
        denoised = yield predicted
        *history_weights, new = step.corrector
        x = x * step.ratio
        for w, d in zip(history_weights, history, strict=False):
            x.add_(d, alpha=w)
        x.add_(denoised, alpha=new)
        history = [denoised, *history[: keep - 1]]
    return x


class ComfyUniPCSampler(KSampler):
    """UniPC multistep predictor-corrector on the sigma grid (ComfyUI's ``uni_pc`` and ``uni_pc_bh2``).

    Per step from sigma_s to sigma_t: predictor x' = (sigma_t / sigma_s) x + (1 - sigma_t / sigma_s) D_s - B(h)
    sum a_m D1_m, model call at x', corrector with D(x') as one more difference; the last step predicts only. Order
    min(3, n - 1), lowered to 2 and 1 at the last two steps; a final sigma of 0 is solved as 0.001.
    """

    @sampler_config
    def __init__(self, variant: Literal["bh1", "bh2"] = "bh1"):
        """UniPC as ComfyUI runs it: variant "bh1" (``uni_pc``, B(h) = h) or "bh2" (``uni_pc_bh2``, e^h - 1)."""

    def prepare_grid(self) -> None:
        """Every step's coefficients on the grid."""
        grid = self.sigmas.clone()
        if grid[-1] == 0:
            grid[-1] = COMFY_LAST_SIGMA
        # SigmaConvert's float32 arithmetic: log alpha = log(1 / (sigma^2 + 1)) / 2, std = sqrt(1 - alpha^2)
        log_alpha = 0.5 * torch.log(1 / (grid * grid + 1))
        std = torch.sqrt(1.0 - torch.exp(2.0 * log_alpha))
        sigmas = (std.double() / torch.exp(log_alpha).double()).tolist()
        n = len(sigmas) - 1
        order = min(3, n - 1)
        self._steps = unipc_steps(sigmas, unipc_orders(n, order, True), self.config.variant) if order > 0 else []
        # one step: order 0, so ComfyUI makes no step and returns its VP start divided by alpha at the end
        start, end = self._grid[0], float(grid[-1])
        self._final_scale = 1.0 if n > 1 else math.sqrt((1 + end**2) / (1 + start**2))

    def program(self, x: torch.Tensor) -> Program:
        x = yield from unipc_program(x, self._steps)
        return x * self._final_scale if self._final_scale != 1.0 else x
