"""SEEDS-2 and SEEDS-3, stochastic explicit exponential derivative-free solvers in data prediction and half-logSNR
time (ComfyUI ``sample_seeds_2`` / ``sample_seeds_3``; Gonzalez et al. 2023, "SEEDS: Exponential SDE Solvers for
Fast High-Quality Sampling from Diffusion Models", arXiv:2305.14267, VP data-prediction schemes; the phi_2 form of
SEEDS-2 is their eq. 53, ComfyUI PR #11309).

ComfyUI's half-logSNR of a VP (eps / v) model is lambda = log(alpha_t / sigma_t) = -log sigma at k-diffusion's
noise level sigma, and alpha = 1 in these coordinates. With eta the SDE's noise strength, a sub-step from sigma to
s = sigma e^(-r h) (h = lambda_next - lambda) keeps x with weight (s / sigma) e^(-eta r h), moves D with weight
1 - e^(-(1 + eta) r h) and adds noise of std s sqrt(1 - e^(-2 eta r h)); the noise of later stages continues
the first stage's Brownian increment (scaled by e^(eta (r_a - r_b) h)) plus a fresh part.
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Annotated, Literal

import torch

from ...configuration import Range
from ..k_sampler import KSampler, Program, sampler_config

Fraction = Annotated[float, Range(gt=0, le=1)]


def half_log_snr(sigma: float) -> float:
    """ComfyUI's ``sigma_to_half_log_snr`` for a VP model at noise level sigma: log(alpha_t / sigma_t)."""
    return -math.log(sigma)


def stage_sigma(sigma: float, sigma_next: float, r: float) -> float:
    """The noise level a fraction r of the step from sigma to sigma_next in half-logSNR (ComfyUI's lerp of
    lambda, then ``half_log_snr_to_sigma``): sigma^(1 - r) sigma_next^r."""
    return math.exp(-((1 - r) * half_log_snr(sigma) + r * half_log_snr(sigma_next)))


def carried_noise(noise: torch.Tensor, fresh: torch.Tensor, exponent: float) -> torch.Tensor:
    """The next stage's noise (before its sigma s_noise factor): the previous stage's decayed by e^exponent
    (exponent <= 0) plus ``fresh``, a standard normal draw, times sqrt(1 - e^(2 exponent))."""
    return noise * math.exp(exponent) + fresh * math.sqrt(-math.expm1(2 * exponent))


def phi_weights(step: float, fraction: float) -> tuple[float, float]:
    """Weights (on D at the start, on D a ``fraction`` of the way) of the phi_2-corrected exponential step over
    ``step`` = (1 + eta) times the half-logSNR span: they sum to 1 - e^(-step), the second is step phi_2(-step) /
    fraction with step phi_2(-step) = (e^(-step) - 1 + step) / step."""
    total = -math.expm1(-step)
    second = (math.expm1(-step) + step) / (step * fraction)
    return total - second, second


class SEEDS2Sampler(KSampler):
    """Two model calls per step: an exponential Euler stage to s = sigma^(1-r) sigma_next^r, then the full step
    with D and D(s) mixed by the phi_1 weights (D + (D(s) - D) / (2r)) or the phi_2 weights of the exponential
    integrator; noise as the module docstring says. The last step to sigma = 0 returns D (one call).

    Options (ComfyUI's names and defaults): ``eta`` the SDE's noise strength (0: the ODE), ``s_noise`` the scale
    of the added noise, ``r`` the stage's fraction of the step, ``solver_type`` the final weights ("phi_1" or
    "phi_2"; ComfyUI added it after its 2025-10 release, PR #11309, default "phi_1").
    """

    calls_per_step = 2
    stochastic = True
    noise_options = ("eta", "s_noise")

    @sampler_config
    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, r: Fraction = 0.5,
                 solver_type: Literal["phi_1", "phi_2"] = "phi_1"):
        """SEEDS-2 (ComfyUI's seeds_2 and its options)."""

    def options(self) -> tuple[float, float, float, str]:
        """(eta, s_noise, r, solver_type) of this sampler."""
        config = self.config
        return config.eta, config.s_noise, config.r, config.solver_type

    def call_sigmas(self, sigmas: list[float]) -> list[float]:
        r = self.options()[2]
        calls = []
        for sigma, sigma_next in pairwise(sigmas):
            calls += [sigma, stage_sigma(sigma, sigma_next, r)] if sigma_next > 0 else [sigma]
        return calls

    def program(self, x: torch.Tensor) -> Program:
        eta, s_noise, r, solver_type = self.options()
        inject = eta > 0 and s_noise > 0
        sigmas = self.grid
        for sigma, sigma_next in pairwise(sigmas):
            denoised = yield x
            if sigma_next == 0:
                return denoised
            h = half_log_snr(sigma_next) - half_log_snr(sigma)
            sigma_mid = stage_sigma(sigma, sigma_next, r)
            x_mid = (sigma_mid / sigma * math.exp(-eta * r * h)) * x - math.expm1(-(1 + eta) * r * h) * denoised
            if inject:
                noise = self.noise_like(x) * math.sqrt(-math.expm1(-2 * eta * r * h))
                x_mid = x_mid + noise * (sigma_mid * s_noise)
            denoised_mid = yield x_mid
            if solver_type == "phi_1":  # one exponential Euler step with D + (D(s) - D) / (2r)
                weight_mid = -math.expm1(-(1 + eta) * h) / (2 * r)
                weight = -math.expm1(-(1 + eta) * h) - weight_mid
            else:
                weight, weight_mid = phi_weights((1 + eta) * h, r)
            x = (sigma_next / sigma * math.exp(-eta * h)) * x + weight * denoised + weight_mid * denoised_mid
            if inject:
                noise = carried_noise(noise, self.noise_like(x), eta * (r - 1) * h)
                x = x + noise * (sigma_next * s_noise)
        return x


class SEEDS3Sampler(KSampler):
    """Three model calls per step: exponential stages to the half-logSNR fractions r_1 and r_2 of the step, then
    the full step with the phi_2-corrected weights of D, D(s_1), D(s_2) (SEEDS-3); noise as the module docstring
    says. The last step to sigma = 0 returns D (one call).

    Options (ComfyUI's names and defaults): ``eta`` the SDE's noise strength (0: the ODE), ``s_noise`` the scale
    of the added noise, ``r_1`` < ``r_2`` the stages' fractions of the step.
    """

    calls_per_step = 3
    stochastic = True
    noise_options = ("eta", "s_noise")

    @sampler_config
    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, r_1: Fraction = 1 / 3, r_2: Fraction = 2 / 3):
        """SEEDS-3 (ComfyUI's seeds_3 and its options)."""

    def call_sigmas(self, sigmas: list[float]) -> list[float]:
        r_1, r_2 = self.config.r_1, self.config.r_2
        calls = []
        for sigma, sigma_next in pairwise(sigmas):
            if sigma_next > 0:
                calls += [sigma, stage_sigma(sigma, sigma_next, r_1), stage_sigma(sigma, sigma_next, r_2)]
            else:
                calls.append(sigma)
        return calls

    def program(self, x: torch.Tensor) -> Program:
        config = self.config
        eta, s_noise, r_1, r_2 = config.eta, config.s_noise, config.r_1, config.r_2
        inject = eta > 0 and s_noise > 0
        sigmas = self.grid
        for sigma, sigma_next in pairwise(sigmas):
            denoised = yield x
            if sigma_next == 0:
                return denoised
            h = half_log_snr(sigma_next) - half_log_snr(sigma)
            sigma_1, sigma_2 = stage_sigma(sigma, sigma_next, r_1), stage_sigma(sigma, sigma_next, r_2)

            x_1 = (sigma_1 / sigma * math.exp(-eta * r_1 * h)) * x - math.expm1(-(1 + eta) * r_1 * h) * denoised
            if inject:
                noise = self.noise_like(x) * math.sqrt(-math.expm1(-2 * eta * r_1 * h))
                x_1 = x_1 + noise * (sigma_1 * s_noise)
            denoised_1 = yield x_1

            weight, weight_1 = phi_weights((1 + eta) * r_2 * h, r_1 / r_2)
            x_2 = (sigma_2 / sigma * math.exp(-eta * r_2 * h)) * x + weight * denoised + weight_1 * denoised_1
            if inject:
                noise = carried_noise(noise, self.noise_like(x), eta * (r_1 - r_2) * h)
                x_2 = x_2 + noise * (sigma_2 * s_noise)
            denoised_2 = yield x_2

            weight, weight_2 = phi_weights((1 + eta) * h, r_2)
            x = (sigma_next / sigma * math.exp(-eta * h)) * x + weight * denoised + weight_2 * denoised_2
            if inject:
                noise = carried_noise(noise, self.noise_like(x), eta * (r_2 - 1) * h)
                x = x + noise * (sigma_next * s_noise)
        return x
