"""DPM-Solver-fast: DPM-Solver-3 steps, uniform in lambda = -log sigma, with a second- or first-order tail so the
model calls total exactly the step count (Lu et al. 2022, arXiv:2206.00927: DPM-Solver-2 and -3, its Alg. 1 and 2,
and its fixed-budget step schedule "DPM-Solver-fast"; k-diffusion ``sample_dpm_fast``, with its optional ancestral
noise). Also the DPM-Solver steps ``DPMAdaptiveSampler`` shares."""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from typing import Literal

import torch

from ...errors import ConfigError
from ..base import randn_tensor
from ..k_sampler import KSampler, Program, ancestral_split, sampler_config
from .euler_ancestral import NoiseSource, reseeded

SigmaRange = Literal["grid", "model"]  # where sigma_min / sigma_max come from: the grid (ComfyUI), the model (A1111)
Stages = Generator[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor | None]]


def _sigma(lam: float) -> float:
    return math.exp(-lam)


def _first_order(x: torch.Tensor, eps: torch.Tensor, lam: float, lam_next: float) -> torch.Tensor:
    """DPM-Solver-1 (DDIM) from lambda to lam_next with the noise prediction eps at (x, lambda)."""
    return x - _sigma(lam_next) * math.expm1(lam_next - lam) * eps


class DPMSolverSampler(KSampler):
    """What DPM fast and DPM adaptive share: the sigma range taken from the grid, the ancestral split in lambda,
    and DPM-Solver-1/2/3 steps in the noise prediction eps = (x - D) / sigma."""

    noise_options = ("eta", "s_noise")

    @property
    def is_stochastic(self) -> bool:
        return all(self.config[key] != 0 for key in self.noise_options)

    def noise_stream(self, x: torch.Tensor) -> Callable[[], torch.Tensor]:
        """One standard normal draw shaped like ``x`` per call: the run's generator continued ("generator", A1111's
        and k-diffusion's randn_like), or a new generator seeded with the run's seed ("seed", ComfyUI's default
        noise sampler)."""
        if self.config.noise_source == "generator":
            return lambda: self.noise_like(x)
        generator = reseeded(self._generator, x.device)
        return lambda: randn_tensor(x.shape, generator, x.device, x.dtype)

    def sigma_range(self, sigmas: list[float]) -> tuple[float, float]:
        """(sigma_min, sigma_max): the smallest positive and the largest grid sigma, as ComfyUI passes them, or
        with ``sigma_range="model"`` the model's training range whatever the grid, as A1111 passes it."""
        if self.config.sigma_range == "model":
            return float(self.train_sigmas[0]), float(self.train_sigmas[-1])
        positive = [s for s in sigmas if s > 0]
        return min(positive), max(positive)

    def target(self, lam: float, lam_next: float, lam_end: float) -> tuple[float, float]:
        """(lambda the step solves to, std of the noise added after it): lam_next and 0 without eta, else the
        ancestral split's sigma_down in lambda (at most lam_end) and the noise that brings x back to lam_next."""
        if not self.config.eta:
            return lam_next, 0.0
        sigma_down, _ = ancestral_split(_sigma(lam), _sigma(lam_next), self.config.eta)
        lam_down = min(lam_end, -math.log(sigma_down)) if sigma_down > 0 else lam_end
        return lam_down, math.sqrt(max(_sigma(lam_next) ** 2 - _sigma(lam_down) ** 2, 0.0))

    @staticmethod
    def stage_lambdas(lam: float, lam_next: float, order: int) -> list[float]:
        """The lambdas of a step's model calls: its start, then lambda + r h at r = 1/2 (order 2) or 1/3, 2/3."""
        h = lam_next - lam
        return [lam] + [lam + r * h for r in {1: (), 2: (1 / 2,), 3: (1 / 3, 2 / 3)}[order]]

    def _eps(self, x: torch.Tensor, lam: float) -> Generator[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The noise prediction at (x, lambda): one model call, announced as ``next_sigma``."""
        self.next_sigma = _sigma(lam)
        denoised = yield x
        return (x - denoised) / self.next_sigma

    def solver_step(self, x: torch.Tensor, lam: float, lam_next: float, order: int, embedded: bool = False) -> Stages:
        """One DPM-Solver-``order`` step from (x, lambda) to lam_next, yielding each model input (``next_sigma``
        set before each); returns the result and, if ``embedded``, the lower-order solution from the same calls
        (DPM-Solver-1 for order 2, DPM-Solver-2 with r1 = 1/3 for order 3), else None."""
        h = lam_next - lam
        stages = self.stage_lambdas(lam, lam_next, order)
        eps = yield from self._eps(x, lam)
        x_1 = _first_order(x, eps, lam, lam_next)
        if order == 1:
            return x_1, None
        r1 = 1 / 2 if order == 2 else 1 / 3
        u_1 = _first_order(x, eps, lam, stages[1])
        eps_1 = yield from self._eps(u_1, stages[1])
        x_2 = x_1 - _sigma(lam_next) / (2 * r1) * math.expm1(h) * (eps_1 - eps)
        if order == 2:
            return x_2, x_1 if embedded else None
        r2 = 2 / 3
        phi = math.expm1(r2 * h) / (r2 * h) - 1
        u_2 = _first_order(x, eps, lam, stages[2]) - _sigma(stages[2]) * (r2 / r1) * phi * (eps_1 - eps)
        eps_2 = yield from self._eps(u_2, stages[2])
        x_3 = x_1 - _sigma(lam_next) / r2 * (math.expm1(h) / h - 1) * (eps_2 - eps)
        return x_3, x_2 if embedded else None


class DPMFastSampler(DPMSolverSampler):
    """n model calls between sigma_max and sigma_min: m = floor(n / 3) + 1 lambda-uniform intervals, solved by
    DPM-Solver-3 except the last one or two (orders ..., 3, n mod 3, or ..., 3, 2, 1 when 3 divides n). The result
    is x at sigma_min, as in k-diffusion, A1111 and ComfyUI (no step to sigma = 0).

    ``eta`` > 0 solves each interval to the ancestral sigma_down and adds noise back up to its end.
    """

    @sampler_config
    def __init__(self, eta: float = 0.0, s_noise: float = 1.0, noise_source: NoiseSource = "generator",
                 sigma_range: SigmaRange = "grid"):
        """DPM fast: ancestral noise amount eta (A1111 passes its "Eta for ancestral samplers", default 1), noise
        scale s_noise; noise_source "seed" is ComfyUI's noise stream; sigma_range "model" is A1111's range."""

    def plan(self, sigmas: list[float]) -> list[tuple[float, float, int, float]]:
        """Per interval: its start lambda, the lambda it solves to, the noise std added after it, its order."""
        sigma_min, sigma_max = self.sigma_range(sigmas)
        # A1111 hands it the steps asked for, ComfyUI the grid's (they differ on DDIM's grid, 7 steps -> 8)
        n = self.requested_steps if self.config.sigma_range == "model" else len(sigmas) - 1
        lam_start, lam_end = -math.log(sigma_max), -math.log(sigma_min)
        m = n // 3 + 1
        lams = [lam_start + (lam_end - lam_start) * k / m for k in range(m)] + [lam_end]
        orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
        return [(lams[i], *self.target(lams[i], lams[i + 1], lam_end), order) for i, order in enumerate(orders)]

    def call_sigmas(self, sigmas: list[float]) -> list[float]:
        if not any(s > 0 for s in sigmas):
            raise ConfigError(f"{type(self).__name__}: the grid has no positive sigma to sample from")
        return [_sigma(lam_call) for lam, lam_to, _, order in self.plan(sigmas)
                for lam_call in self.stage_lambdas(lam, lam_to, order)]

    def program(self, x: torch.Tensor) -> Program:
        noise = self.noise_stream(x) if self.is_stochastic else None
        for lam, lam_to, noise_std, order in self.plan(self.grid):
            x, _ = yield from self.solver_step(x, lam, lam_to, order)
            if noise is not None:
                x = x + noise_std * self.config.s_noise * noise()
        return x
