"""DPM-Solver-12 / 23 with adaptive step size: an embedded pair of DPM-Solver orders whose difference is the error
estimate, steered by a PID step-size controller (Lu et al. 2022, arXiv:2206.00927, its adaptive step size
schedule; k-diffusion ``sample_dpm_adaptive`` and its ``PIDStepSizeController``, in the manner of Söderlind 2003,
"Digital filters in adaptive time-stepping", ACM TOMS 29(1))."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch

from ...configuration import PositiveFloat, Range
from ...errors import ConfigError
from ..k_sampler import Program, sampler_config
from .dpm_fast import DPMSolverSampler, SigmaRange
from .euler_ancestral import NoiseSource

NonNegativeFloat = Annotated[float, Range(ge=0)]


class _StepSizeController:
    """The PID controller on the inverse error: h <- h (1 + atan(f - 1)), f = e_0^b1 e_1^b2 e_2^b3 over the last
    three accepted inverse errors; a step is accepted when its factor is at least ``accept_safety``."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float, accept_safety: float):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.inverse_errors: list[float] = []

    def propose(self, error: float) -> bool:
        """Whether the step with this error is accepted; updates ``h`` for the next try either way."""
        inverse = 1 / (error + 1e-8)
        if not self.inverse_errors:
            self.inverse_errors = [inverse] * 3
        errors = self.inverse_errors
        errors[0] = inverse
        factor = 1 + math.atan(errors[0] ** self.b1 * errors[1] ** self.b2 * errors[2] ** self.b3 - 1)
        accept = factor >= self.accept_safety
        if accept:
            errors[2], errors[1] = errors[1], errors[0]
        self.h *= factor
        return accept


class DPMAdaptiveSampler(DPMSolverSampler):
    """From lambda = -log sigma_max to -log sigma_min in tries of size h: each try makes ``order`` model calls for
    DPM-Solver-``order`` and its embedded DPM-Solver-(order - 1); the scaled RMS of their difference, with scale
    max(atol, rtol max(|x_low|, |x_low_prev|)), decides acceptance and the next h. A rejected try's calls are
    spent too. The step count is ignored; the grid gives only sigma_min and sigma_max, and the result is x at
    sigma_min, as in k-diffusion, A1111 and ComfyUI.
    """

    calls_per_step = 0
    dynamic_timesteps = True

    @sampler_config
    def __init__(self, order: Literal[2, 3] = 3, rtol: NonNegativeFloat = 0.05, atol: NonNegativeFloat = 0.0078,
                 h_init: PositiveFloat = 0.05, pcoeff: NonNegativeFloat = 0.0, icoeff: NonNegativeFloat = 1.0,
                 dcoeff: NonNegativeFloat = 0.0, accept_safety: PositiveFloat = 0.81, eta: float = 0.0,
                 s_noise: float = 1.0, noise_source: NoiseSource = "generator", sigma_range: SigmaRange = "grid"):
        """DPM adaptive with k-diffusion's and ComfyUI's defaults (A1111 passes its "Eta for ancestral samplers",
        default 1, as eta); noise_source "seed" is ComfyUI's noise stream; sigma_range "model" is A1111's
        range."""

    def call_sigmas(self, sigmas: list[float]) -> list[float]:
        sigma_min, sigma_max = self.sigma_range(sigmas) if any(s > 0 for s in sigmas) else (0.0, 0.0)
        if not sigma_min or math.log(sigma_max / sigma_min) <= 1e-5:
            raise ConfigError(f"{type(self).__name__} integrates from the largest to the smallest positive sigma of "
                              "the grid and needs two distinct ones: use at least 2 steps")
        return [sigma_max]  # the first call; the others are decided while sampling

    def program(self, x: torch.Tensor) -> Program:
        config = self.config
        sigma_min, sigma_max = self.sigma_range(self.grid)
        lam, lam_end = -math.log(sigma_max), -math.log(sigma_min)
        controller = _StepSizeController(config.h_init, config.pcoeff, config.icoeff, config.dcoeff,
                                         1.5 if config.eta else config.order, config.accept_safety)
        noise = self.noise_stream(x) if self.is_stochastic else None
        x_low_prev = x
        while lam < lam_end - 1e-5:
            lam_next = min(lam_end, lam + controller.h)
            lam_to, noise_std = self.target(lam, lam_next, lam_end)
            x_high, x_low = yield from self.solver_step(x, lam, lam_to, config.order, embedded=True)
            scale = (config.rtol * torch.maximum(x_low.abs(), x_low_prev.abs())).clamp(min=config.atol)
            # The step size needs the error on the host: one device sync per try, inherent to the algorithm.
            error = float(torch.linalg.vector_norm((x_low - x_high) / scale)) / math.sqrt(x.numel())
            if controller.propose(error):
                x_low_prev = x_low
                x = x_high if noise is None else x_high + noise_std * config.s_noise * noise()
                lam = lam_next
        return x
