"""Stochastic DPM-Solver++ (k-diffusion ``sample_dpmpp_sde``): the singlestep second-order data-prediction solver
(Lu et al. 2022, "DPM-Solver++", arXiv:2211.01095, Alg. 1, intermediate point at r h in t = -log sigma) with
both sub-steps made ancestral (the split of Song et al. 2021, arXiv:2011.13456) and their noise taken from one
Brownian path, as in Katherine Crowson's k-diffusion. ComfyUI's ``sample_dpmpp_sde`` is the same for eps / v
models.

This module also holds ``BrownianKSampler``, the base of the samplers whose noise is the increments of one
Brownian path over sigma. A1111 draws that path from a torchsde Brownian tree seeded with the image seeds, and
ComfyUI from one seeded with the run's seed; schedcmp's ``BrownianNoiseSampler`` stands in for both (the same
kind of path, drawn from the run's generator), so runs have the tools' noise statistics, not their exact noise.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Annotated

import torch

from ...configuration import Range
from ..dpmsolver_sde import BrownianNoiseSampler
from ..k_sampler import KSampler, Program, ancestral_split, sampler_config
from .euler_ancestral import NonNegativeFloat


class BrownianKSampler(KSampler):
    """A sampler whose noise is the normalised increments of one Brownian path W(sigma) (``brownian_noise``)."""

    stochastic = True
    brownian = True
    noise_options = ("eta", "s_noise")

    def brownian_noise(self, x: torch.Tensor) -> Callable[[float, float], torch.Tensor]:
        """(sigma, sigma_next) -> (W(sigma_next) - W(sigma)) / sqrt|sigma_next - sigma|, shaped like ``x``: a
        ``BrownianNoiseSampler`` over [smallest positive grid sigma, largest], built from the run's generator at
        the first query (so a run without noise builds none)."""
        path: list[BrownianNoiseSampler] = []

        def increment(sigma: float, sigma_next: float) -> torch.Tensor:
            if not path:
                positive = [s for s in self.grid if s > 0]
                path.append(BrownianNoiseSampler(x, min(positive), max(positive), self._generator))
            return path[0](sigma, sigma_next)

        return increment


class DPMPPSDESampler(BrownianKSampler):
    """Two model calls per step (one into sigma_next = 0). With t = -log sigma, h = t_next - t and the
    intermediate level sigma_r = exp(-(t + r h)): a sub-step from sigma towards a level s with (s_down, s_up) =
    ancestral_split(sigma, s, eta) is

    x -> E + (s_down / sigma) (x - E) + s_noise s_up W-increment(sigma, s)

    with E = D for the first sub-step (to sigma_r, where the model gives D_r) and E = (1 - 1/(2r)) D + D_r / (2r)
    for the second (to sigma_next, restarting from the step's x). The last step is an Euler step to 0 (x <- D).
    """

    calls_per_step = 2

    @sampler_config
    def __init__(
        self,
        eta: NonNegativeFloat = 1.0,
        s_noise: NonNegativeFloat = 1.0,
        r: Annotated[float, Range(gt=0, le=1)] = 0.5,
    ):
        """DPM++ SDE: noise amount eta, noise scale s_noise, intermediate point r of each step in log sigma."""

    def _intermediate(self, sigma: float, sigma_next: float) -> float:
        """sigma_r = exp(-(t + r h)) = sigma (sigma_next / sigma)^r, where the second call of a step is made."""
        return sigma * (sigma_next / sigma) ** self.config.r

    def call_sigmas(self, sigmas: list[float]) -> list[float]:
        calls = []
        for sigma, sigma_next in pairwise(sigmas):
            calls.append(sigma)
            if sigma_next > 0:
                calls.append(self._intermediate(sigma, sigma_next))
        return calls

    def program(self, x: torch.Tensor) -> Program:
        config, sigmas = self.config, self.grid
        noisy = self.is_stochastic
        noise = self.brownian_noise(x)
        weight = 1 / (2 * config.r)  # of D_r in the second sub-step's data estimate

        def sub_step(x: torch.Tensor, estimate: torch.Tensor, sigma: float, level: float) -> torch.Tensor:
            level_down, level_up = ancestral_split(sigma, level, config.eta)
            x = estimate + (x - estimate) * (level_down / sigma)
            return x + noise(sigma, level) * (config.s_noise * level_up) if noisy else x

        for sigma, sigma_next in pairwise(sigmas):
            denoised = yield x
            if sigma_next == 0:
                x = denoised
                continue
            sigma_r = self._intermediate(sigma, sigma_next)
            denoised_r = yield sub_step(x, denoised, sigma, sigma_r)
            x = sub_step(x, denoised + (denoised_r - denoised) * weight, sigma, sigma_next)
        return x
