"""DPM-Solver++(2M) SDE (k-diffusion ``sample_dpmpp_2m_sde``): the second-order multistep data-prediction solver
(Lu et al. 2022, "DPM-Solver++", arXiv:2211.01095, Alg. 2) for the reverse SDE instead of the ODE, as Cheng Lu
wrote it for diffusers (huggingface/diffusers#3344, ``algorithm_type="sde-dpmsolver++"``) and Katherine Crowson
ported it to k-diffusion (crowsonkb/k-diffusion#59): the exact exponential integral of the SDE's linear part,
eta scaling the noise, plus the multistep correction from the previous step's denoised output ("midpoint" or
"heun" form). ComfyUI's ``sample_dpmpp_2m_sde`` (and ``_heun``) is the same for eps / v models. The noise is
Brownian (``BrownianKSampler``: schedcmp's path stands in for A1111's and ComfyUI's torchsde trees).
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Literal

import torch

from ..k_sampler import Program, sampler_config
from .dpmpp_sde import BrownianKSampler
from .euler_ancestral import NonNegativeFloat


class DPMPP2MSDESampler(BrownianKSampler):
    """One model call per step. With h = log(sigma / sigma_next), g = (1 + eta) h and phi = 1 - e^(-g):

    x <- (sigma_next / sigma) e^(-eta h) x + phi D + c (D - D_prev) + s_noise sigma_next sqrt(1 - e^(-2 eta h)) dW,

    c = phi / (2 r) ("midpoint") or (1 - phi / g) / r ("heun"), r = h_prev / h, from the second step on; dW is
    the normalised Brownian increment over [sigma_next, sigma]. The last step, into sigma = 0, is x <- D.
    """

    @sampler_config
    def __init__(
        self,
        eta: NonNegativeFloat = 1.0,
        s_noise: NonNegativeFloat = 1.0,
        solver_type: Literal["midpoint", "heun"] = "midpoint",
    ):
        """DPM++ 2M SDE: noise amount eta, noise scale s_noise, second-order term's solver_type (heun: 2M SDE Heun)."""

    def program(self, x: torch.Tensor) -> Program:
        config, sigmas = self.config, self.grid
        noisy = self.is_stochastic
        noise = self.brownian_noise(x)
        old_denoised, old_h = None, 0.0
        for sigma, sigma_next in pairwise(sigmas):
            denoised = yield x
            if sigma_next == 0:
                x = denoised
                continue
            h = math.log(sigma / sigma_next)
            g = (1 + config.eta) * h
            phi = -math.expm1(-g)
            x = x * (sigma_next / sigma * math.exp(-config.eta * h)) + denoised * phi
            if old_denoised is not None:
                r = old_h / h
                c = phi / (2 * r) if config.solver_type == "midpoint" else (1 - phi / g) / r
                x = x + (denoised - old_denoised) * c
            if noisy:
                scale = config.s_noise * sigma_next * math.sqrt(-math.expm1(-2 * config.eta * h))
                x = x + noise(sigma, sigma_next) * scale
            old_denoised, old_h = denoised, h
        return x
