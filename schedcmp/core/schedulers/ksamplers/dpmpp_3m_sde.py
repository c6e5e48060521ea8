"""DPM-Solver++(3M) SDE (k-diffusion ``sample_dpmpp_3m_sde``): Katherine Crowson's third-order extension of the
SDE-DPM-Solver++(2M) update (see ``dpmpp_2m_sde``; Lu et al. 2022, "DPM-Solver++", arXiv:2211.01095, for the
multistep data-prediction solvers): the exponential integral of the SDE's linear part in t = -log sigma, with
the data prediction extrapolated from the last three denoised outputs by divided differences, weighted by the
phi_2 / phi_3 functions of the exponential integrator at (1 + eta) h. ComfyUI's ``sample_dpmpp_3m_sde`` is the
same for eps / v models.

This is k-diffusion's algorithm, not diffusers' third-order SDE update (``DPMSolverMultistepScheduler`` with
``algorithm_type="sde-dpmsolver++", solver_order=3``), which weighs the second difference differently and
gives other samples even with the noise off. The noise is Brownian (``BrownianKSampler``: schedcmp's path
stands in for A1111's and ComfyUI's torchsde trees).
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch

from ..k_sampler import Program, sampler_config
from .dpmpp_sde import BrownianKSampler
from .euler_ancestral import NonNegativeFloat


class DPMPP3MSDESampler(BrownianKSampler):
    """One model call per step. With h = log(sigma / sigma_next), g = (1 + eta) h, phi_2 = 1 - (1 - e^(-g)) / g
    and phi_3 = phi_2 / g - 1/2:

    x <- e^(-g) x + (1 - e^(-g)) D + phi_2 d_1 - phi_3 d_2 + s_noise sigma_next sqrt(1 - e^(-2 eta h)) dW,

    where, with r_0 = h_prev / h and r_1 = h_prev2 / h, s_0 = (D - D_prev) / r_0, s_1 = (D_prev - D_prev2) / r_1,
    d_2 = (s_0 - s_1) / (r_0 + r_1) and d_1 = s_0 + r_0 d_2 (second step: d_1 = s_0, d_2 = 0; first: both 0).
    dW is the normalised Brownian increment over [sigma_next, sigma]; the last step, into sigma = 0, is x <- D.
    """

    @sampler_config
    def __init__(self, eta: NonNegativeFloat = 1.0, s_noise: NonNegativeFloat = 1.0):
        """DPM++ 3M SDE (k-diffusion's): noise amount eta, noise scale s_noise."""

    def program(self, x: torch.Tensor) -> Program:
        config, sigmas = self.config, self.grid
        noisy = self.is_stochastic
        noise = self.brownian_noise(x)
        history: list[tuple[torch.Tensor, float]] = []  # (D, h) of the previous steps, latest first
        for sigma, sigma_next in pairwise(sigmas):
            denoised = yield x
            if sigma_next == 0:
                x = denoised
                continue
            h = math.log(sigma / sigma_next)
            g = (1 + config.eta) * h
            phi_2 = 1 + math.expm1(-g) / g
            x = x * math.exp(-g) - denoised * math.expm1(-g)
            if history:
                (previous, h_0), *older = history
                r_0 = h_0 / h
                slope = (denoised - previous) / r_0
                if older:
                    previous_2, h_1 = older[0]
                    r_1 = h_1 / h
                    d_2 = (slope - (previous - previous_2) / r_1) / (r_0 + r_1)
                    x = x + (slope + d_2 * r_0) * phi_2 - d_2 * (phi_2 / g - 0.5)
                else:
                    x = x + slope * phi_2
            if noisy:
                scale = config.s_noise * sigma_next * math.sqrt(-math.expm1(-2 * config.eta * h))
                x = x + noise(sigma, sigma_next) * scale
            history = [(denoised, h), *history[:1]]
        return x
