"""A1111 1.10's Restart sampler (``modules/sd_samplers_extra.py`` ``restart_sampler``; Xu et al. 2023, "Restart
Sampling for Improving Generative Processes", arXiv:2306.14878, Algorithm 1): Heun steps down the grid, plus
restart intervals that jump back up with fresh noise and run down again.

With 20 steps or more A1111 replaces the grid by a Karras grid (rho 7) with fewer steps between the schedule's
sigma_max and its last nonzero sigma, and restarts once (9 Heun steps, 36 steps and more: twice, steps // 4
Heun steps each) from the grid's sigma nearest 0.1 back up to its sigma nearest 2. Below 20 steps it is plain
Heun on the schedule's grid (Karras et al. 2022, arXiv:2206.00364, Alg. 1).
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Annotated

import torch

from ...configuration import Range
from ..k_sampler import KSampler, Program, sampler_config
from ..schedule_types import sigma_grid

# A1111's automatic restart list: a restart starts at the grid's sigma nearest 0.1 and jumps to the one nearest 2.
_RESTART_AT, _RESTART_TO = 0.1, 2.0


def _karras(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """k-diffusion's ``get_sigmas_karras(steps, sigma_min, sigma_max)`` (rho 7, then 0), float32."""
    return sigma_grid("karras", steps, torch.tensor([sigma_min, sigma_max]))


def _nearest(sigmas: torch.Tensor, sigma: float) -> int:
    """Index of the grid entry nearest ``sigma`` (A1111's argmin |sigmas - sigma|, in float32)."""
    return int(torch.argmin((sigmas - sigma).abs(), dim=0))


class RestartSampler(KSampler):
    """Heun on each segment (old, new) of A1111's step list: d = (x - D) / old, the Euler predictor at new, then
    x <- x + (new - old) (d + d') / 2 (Euler alone where new = 0).

    Where a segment starts above the previous one's end (a restart), x first gains fresh noise of std
    s_noise sqrt(old^2 - last^2), one draw per restart.
    """

    calls_per_step = 2
    stochastic = True
    noise_options = ("s_noise",)

    @sampler_config
    def __init__(self, s_noise: Annotated[float, Range(ge=0)] = 1.0):
        """A1111's Restart (s_noise: A1111's "sigma noise" setting, default 1)."""

    @property
    def is_stochastic(self) -> bool:
        if not len(self.sigmas):
            return super().is_stochastic
        segments = self.segments(self.grid)
        jumps = any(old > last for (_, last), (old, _) in pairwise(segments))
        return jumps and self.config.s_noise != 0

    def segments(self, sigmas: list[float]) -> list[tuple[float, float]]:
        """A1111's step list for the grid ``sigmas``: (old, new) noise levels of every Heun step, in order."""
        grid = torch.tensor(sigmas, dtype=torch.float32)
        steps = len(sigmas) - 1
        restarts = {}
        if steps >= 20:
            heun_steps, times = (steps // 4, 2) if steps >= 36 else (9, 1)
            grid = _karras(steps - heun_steps * times, float(grid[-2]), float(grid[0]))
            restarts = {_nearest(grid, _RESTART_AT): (heun_steps + 1, times)}
        values = grid.tolist()
        segments = []
        for i in range(len(values) - 1):
            segments.append((values[i], values[i + 1]))
            if i + 1 in restarts:
                restart_steps, times = restarts[i + 1]
                top = _nearest(grid, _RESTART_TO)
                if top < i + 1:
                    levels = _karras(restart_steps, values[i + 1], values[top])[:-1].tolist()
                    segments.extend(list(pairwise(levels)) * times)
        return segments

    def call_sigmas(self, sigmas: list[float]) -> list[float]:
        calls = []
        for old, new in self.segments(sigmas):
            calls.extend([old, new] if new != 0 else [old])
        return calls

    def program(self, x: torch.Tensor) -> Program:
        last = None
        for old, new in self.segments(self.grid):
            if last is not None and last < old:
                x = x + self.noise_like(x) * (self.config.s_noise * math.sqrt(old**2 - last**2))
            denoised = yield x
            d = (x - denoised) / old
            if new == 0:
                x = x + d * (new - old)
            else:
                predictor = x + d * (new - old)
                denoised_next = yield predictor
                x = x + (d + (predictor - denoised_next) / new) / 2 * (new - old)
            last = new
        return x
