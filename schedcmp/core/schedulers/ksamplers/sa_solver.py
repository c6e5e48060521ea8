"""SA-Solver, the stochastic Adams predictor-corrector in data prediction and half-logSNR time (ComfyUI
``sample_sa_solver`` / ``sample_sa_solver_pece``, ``comfy/k_diffusion/sa_solver.py``; Xue et al. 2023, "SA-Solver:
Stochastic Adams Solver for Fast Sampling of Diffusion Models", arXiv:2309.05019: the b coefficients of its
eqs. 15 (predictor) and 18 (corrector), the simple order-2 ones of its Appendix D).

ComfyUI's half-logSNR of a VP (eps / v) model is lambda = -log sigma at k-diffusion's noise level sigma, and
alpha = 1 in these coordinates. A step from lambda_s to lambda_t = lambda_s + h with noise strength tau is

    x_t = (sigma_t / sigma_s) e^(-tau^2 h) x_s + sum_j b_j D_j + s_noise sigma_t sqrt(1 - e^(-2 tau^2 h)) z,

b_j = k int_{lambda_s}^{lambda_t} e^(-k (lambda_t - l)) L_j(l) dl with k = 1 + tau^2 and L_j the Lagrange basis
on the half-logSNRs of the D_j used. The predictor extrapolates the last ``predictor_order`` outputs to the next
level; the corrector redoes the previous step with the same noise and up to ``corrector_order`` outputs including
the one at its end. Every b_j depends on the grid only, so the whole plan is computed in ``set_timesteps``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, ClassVar, NamedTuple

import torch

from ...configuration import Fraction, Range
from ..k_sampler import KSampler, Program, sampler_config
from ..schedule_types import t_to_sigma
from .seeds import half_log_snr

Order = Annotated[int, Range(ge=1, le=6)]
CorrectorOrder = Annotated[int, Range(ge=0, le=6)]


class Update(NamedTuple):
    """One linear update of the plan: decay x + sum_j weights[j] D_j (+ noise of std ``noise_std``, predictor)."""

    decay: float  # weight of the state the update starts from
    weights: tuple[float, ...]  # of the last len(weights) denoised outputs, oldest first
    noise_std: float = 0.0  # std of the fresh noise it adds; 0: it draws none


def percent_to_sigma(percent: float, log_sigmas: torch.Tensor) -> float:
    """ComfyUI's ``ModelSamplingDiscrete.percent_to_sigma``: the noise level at fractional timestep
    (1 - percent) 999 (clamped to the schedule), huge at 0 and 0 at 1."""
    if percent <= 0.0:
        return 999999999.9
    if percent >= 1.0:
        return 0.0
    t = torch.tensor((1.0 - percent) * 999.0).clamp(0, len(log_sigmas) - 1)
    return float(t_to_sigma(t, log_sigmas))


def exponential_moments(z: float, count: int) -> list[float]:
    """G_q(z) = int_0^1 e^(-z v) v^q dv for q < count (z > 0): a power series below z = 1, else the upward
    recursion G_q = (q G_{q-1} - e^(-z)) / z, which is stable there for the orders used."""
    if z < 1.0:
        moments = []
        for q in range(count):
            total, term, m = 0.0, 1.0, 0  # term = (-z)^m / m!
            while True:
                part = term / (m + q + 1)
                total += part
                if abs(part) <= 1e-17 * abs(total):
                    break
                m += 1
                term *= -z / m
            moments.append(total)
        return moments
    moments = [-math.expm1(-z) / z]
    for q in range(1, count):
        moments.append((q * moments[-1] - math.exp(-z)) / z)
    return moments


def adams_weights(nodes: Sequence[float], lambda_s: float, lambda_t: float, tau: float) -> tuple[float, ...]:
    """The b_j of one step from lambda_s to lambda_t for outputs at half-logSNRs ``nodes`` (SA-Solver eqs. 15 /
    18). In v = (lambda_t - l) / h the integral is z int_0^1 e^(-z v) L_j(v) dv with z = (1 + tau^2) h: each
    Lagrange basis polynomial is expanded in powers of v and integrated with ``exponential_moments``."""
    h = lambda_t - lambda_s
    z = (1 + tau**2) * h
    points = [(lambda_t - node) / h for node in nodes]
    moments = exponential_moments(z, len(points))
    weights = []
    for j, v_j in enumerate(points):
        coefficients = [1.0]  # of the polynomial prod_{m != j} (v - v_m) / (v_j - v_m), ascending powers
        for m, v_m in enumerate(points):
            if m != j:
                shifted = [0.0, *coefficients]
                coefficients = [(high - v_m * low) / (v_j - v_m)
                                for high, low in zip(shifted, [*coefficients, 0.0], strict=True)]
        weights.append(z * sum(c * g for c, g in zip(coefficients, moments, strict=True)))
    return tuple(weights)


def simple_order_2_weights(nodes: Sequence[float], lambda_s: float, lambda_t: float, tau: float,
                           corrector: bool) -> tuple[float, float]:
    """The simplified two-output b_j of SA-Solver's Appendix D (ComfyUI's ``simple_order_2``), oldest first."""
    k, h = 1 + tau**2, lambda_t - lambda_s
    total = -math.expm1(-k * h)
    if corrector:
        newest = 0.5 * k * h
        return total - newest, newest
    older = 0.5 * k * h**2 / (nodes[0] - lambda_s)
    return older, total - older


class SASolverSampler(KSampler):
    """One model call per step (``SASolverPECESampler``: two): evaluate D at the predicted point, correct the last
    step with it, predict the next level. Orders rise with the available history and fall near a final sigma of 0
    (as ComfyUI); the last step returns the last D. The final step has no corrector unless PECE.

    Options (ComfyUI's SamplerSASolver names and defaults): ``eta`` the noise strength tau inside the window
    ``sde_start_percent`` .. ``sde_end_percent`` of the training schedule (tau = 0 outside: the ODE),
    ``s_noise`` the noise scale, ``predictor_order`` / ``corrector_order`` the Adams orders (corrector 0: none),
    ``simple_order_2`` the paper's simplified order-2 coefficients.
    """

    stochastic = True
    noise_options = ("eta", "s_noise")
    use_pece: ClassVar[bool] = False  # re-evaluate D at the corrected point and use it for the prediction

    @sampler_config
    def __init__(self, eta: float = 1.0, sde_start_percent: Fraction = 0.2, sde_end_percent: Fraction = 0.8,
                 s_noise: float = 1.0, predictor_order: Order = 3, corrector_order: CorrectorOrder = 4,
                 simple_order_2: bool = False):
        """SA-Solver, stochastic Adams predictor-corrector (ComfyUI's sa_solver)."""

    @property
    def is_stochastic(self) -> bool:
        if not super().is_stochastic:
            return False
        return not len(self.sigmas) or any(predictor and predictor.noise_std > 0 for _, predictor in self._plan)

    def call_sigmas(self, sigmas: list[float]) -> list[float]:
        # PECE evaluates again after every corrector, which runs at each step after the first when it has an order
        again = self.use_pece and self.config.corrector_order > 0
        calls = []
        for i, sigma in enumerate(sigmas[:-1]):
            calls += [sigma, sigma] if again and i > 0 else [sigma]
        return calls

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas: Sequence[float] | torch.Tensor | None = None,
                      timesteps: Sequence[float] | torch.Tensor | None = None) -> None:
        """The base's grid and calls, then every step's corrector and predictor coefficients."""
        super().set_timesteps(num_inference_steps, device, sigmas, timesteps)
        self._plan = self._build_plan()

    def _tau(self, sigma: float, window: tuple[float, float]) -> float:
        """ComfyUI's default tau function: eta inside the sigma window, else 0."""
        eta = self.config.eta
        return eta if eta > 0 and window[0] >= sigma >= window[1] else 0.0

    def _weights(self, nodes: Sequence[float], lambda_s: float, lambda_t: float, tau: float,
                 corrector: bool) -> tuple[float, ...]:
        if self.config.simple_order_2 and len(nodes) == 2:
            return simple_order_2_weights(nodes, lambda_s, lambda_t, tau, corrector)
        return adams_weights(nodes, lambda_s, lambda_t, tau)

    def _build_plan(self) -> list[tuple[Update | None, Update | None]]:
        """(corrector, predictor) of every step; None where ComfyUI skips it."""
        config, sigmas = self.config, self.grid
        window = (percent_to_sigma(config.sde_start_percent, self.log_sigmas),
                  percent_to_sigma(config.sde_end_percent, self.log_sigmas))
        lambdas = [half_log_snr(s) if s > 0 else math.inf for s in sigmas]
        n, keep = len(sigmas) - 1, max(config.predictor_order, config.corrector_order)
        lower_order_to_end = sigmas[-1] == 0
        plan = []
        for i in range(n):
            history = min(i + 1, keep)
            predictor_order = min(config.predictor_order, history)
            final = sigmas[i + 1] == 0
            corrector_order = 0 if i == 0 or (final and not self.use_pece) else min(config.corrector_order, history)
            if lower_order_to_end:
                predictor_order = min(predictor_order, n - 1 - i)
                corrector_order = min(corrector_order, n - i)
            corrector = predictor = None
            if corrector_order:
                tau, h = self._tau(sigmas[i], window), lambdas[i] - lambdas[i - 1]
                nodes = lambdas[i - corrector_order + 1: i + 1]
                corrector = Update(sigmas[i] / sigmas[i - 1] * math.exp(-(tau**2) * h),
                                   self._weights(nodes, lambdas[i - 1], lambdas[i], tau, corrector=True))
            if not final:
                tau, h = self._tau(sigmas[i + 1], window), lambdas[i + 1] - lambdas[i]
                nodes = lambdas[i - predictor_order + 1: i + 1]
                noisy = tau > 0 and config.s_noise > 0
                std = sigmas[i + 1] * math.sqrt(-math.expm1(-2 * tau**2 * h)) * config.s_noise if noisy else 0.0
                predictor = Update(sigmas[i + 1] / sigmas[i] * math.exp(-(tau**2) * h),
                                   self._weights(nodes, lambdas[i], lambdas[i + 1], tau, corrector=False), std)
            plan.append((corrector, predictor))
        return plan

    def program(self, x: torch.Tensor) -> Program:
        keep = max(self.config.predictor_order, self.config.corrector_order)
        history: list[torch.Tensor] = []  # the last ``keep`` denoised outputs, oldest first
        x_pred, noise = x, None
        for corrector, predictor in self._plan:
            denoised = yield x_pred
            history = [*history, denoised][-keep:]
            if corrector is None:
                x = x_pred
            else:
                x = _apply(corrector, x, history)
                if noise is not None:  # the previous prediction's noise
                    x = x + noise
                if self.use_pece:
                    denoised = yield x
                    history[-1] = denoised
            if predictor is None:
                x_pred = denoised
            else:
                x_pred = _apply(predictor, x, history)
                noise = self.noise_like(x) * predictor.noise_std if predictor.noise_std > 0 else None
                if noise is not None:
                    x_pred = x_pred + noise
        return x_pred


class SASolverPECESampler(SASolverSampler):
    """SA-Solver in PECE mode: predict, evaluate, correct, evaluate again at the corrected point (whose D replaces
    the first one for the next prediction): two model calls per step after the first."""

    calls_per_step = 2
    use_pece = True

    @sampler_config
    def __init__(self, eta: float = 1.0, sde_start_percent: Fraction = 0.2, sde_end_percent: Fraction = 0.8,
                 s_noise: float = 1.0, predictor_order: Order = 3, corrector_order: CorrectorOrder = 4,
                 simple_order_2: bool = False):
        """SA-Solver, stochastic Adams in PECE mode (ComfyUI's sa_solver_pece)."""


def _apply(update: Update, x: torch.Tensor, history: list[torch.Tensor]) -> torch.Tensor:
    """decay x + sum_j b_j D_j over the newest len(weights) outputs."""
    outputs = history[-len(update.weights):]
    return sum((w * d for w, d in zip(update.weights, outputs, strict=True)), x * update.decay)
