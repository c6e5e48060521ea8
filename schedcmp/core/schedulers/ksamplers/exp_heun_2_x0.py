"""Exponential Heun, second order, in data prediction (x0) and half-logSNR time (ComfyUI ``exp_heun_2_x0`` and
``exp_heun_2_x0_sde``, PR #11360: presets of ``seeds_2`` with r = 1 and the phi_2 weights; SEEDS, Gonzalez et al.
2023, arXiv:2305.14267, eq. 53, on the DPM-Solver++ exponential integrator, Lu et al. 2022, arXiv:2211.01095).

With r = 1 the stage lands on sigma_next: an exponential Euler predictor there, a second denoiser call at the
predicted point, and the corrector weights D with 1 - e^(-y) - w and D(sigma_next) with w = (e^(-y) - 1 + y) / y,
y = (1 + eta) h. In the SDE form the predictor's noise is reused by the corrector; the second draw SEEDS-2 makes
per step has weight 0 at r = 1, and is still drawn so a seed gives ComfyUI's noise stream.
"""

from __future__ import annotations

from typing import Literal

from ..k_sampler import sampler_config
from .seeds import SEEDS2Sampler

SolverType = Literal["phi_1", "phi_2"]


class ExpHeun2X0Sampler(SEEDS2Sampler):
    """Deterministic exponential Heun (SEEDS-2 with eta = 0, s_noise = 0, r = 1): two model calls per step, at
    sigma and at sigma_next; the last step to sigma = 0 returns D. ``solver_type`` "phi_2" (ComfyUI's default)
    weights the two predictions as the exponential integrator does, "phi_1" averages them (trapezoidal)."""

    stochastic = False
    noise_options = ()

    @sampler_config
    def __init__(self, solver_type: SolverType = "phi_2"):
        """Deterministic exponential Heun in x0 / half-logSNR form (ComfyUI's exp_heun_2_x0)."""

    def options(self) -> tuple[float, float, float, str]:
        return 0.0, 0.0, 1.0, self.config.solver_type


class ExpHeun2X0SDESampler(SEEDS2Sampler):
    """Stochastic exponential Heun (SEEDS-2 with r = 1): ``eta`` the SDE's noise strength, ``s_noise`` the noise
    scale (either at 0: ``ExpHeun2X0Sampler``), ``solver_type`` as there; two model calls per step."""

    @sampler_config
    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, solver_type: SolverType = "phi_2"):
        """Stochastic exponential Heun in x0 / half-logSNR form (ComfyUI's exp_heun_2_x0_sde)."""

    def options(self) -> tuple[float, float, float, str]:
        config = self.config
        return config.eta, config.s_noise, 1.0, config.solver_type
