"""DPM-Solver++(2M): the second-order multistep solver in the data prediction (Lu et al. 2022b, arXiv:2211.01095,
Alg. 2), in k-diffusion's sigma form ``sample_dpmpp_2m`` with lambda = -log sigma."""

from __future__ import annotations

import math

import torch

from ..k_sampler import KSampler, Program, sampler_config


class DPMPP2MSampler(KSampler):
    """With h = log(sigma / sigma_next): x <- (sigma_next / sigma) x + (1 - e^-h) D', where D' = D on the first step
    and on a step to sigma = 0 (there x <- D), else D' = (1 + 1/(2r)) D - 1/(2r) D_prev with r = h_prev / h.
    One model call per step.
    """

    @sampler_config
    def __init__(self):
        """DPM++ 2M (A1111 "DPM++ 2M", ComfyUI dpmpp_2m: the same algorithm, no options)."""

    def program(self, x: torch.Tensor) -> Program:
        sigmas = self.grid
        previous: torch.Tensor | None = None
        for i in range(len(sigmas) - 1):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            denoised = yield x
            if sigma_next == 0:  # h is infinite: the step lands on the prediction
                x = denoised
                continue
            h = math.log(sigma / sigma_next)
            if previous is None:
                target = denoised
            else:
                r = math.log(sigmas[i - 1] / sigma) / h
                target = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
            x = (sigma_next / sigma) * x - math.expm1(-h) * target
            previous = denoised
        return x
