"""A1111 1.10's LCM (``modules/sd_samplers_lcm.py``: ``sample_lcm`` with its ``LCMCompVisDenoiser``; Luo et al.
2023, "Latent Consistency Models", arXiv:2310.04378, Algorithm 1 with the consistency parametrisation of its eq. 9).

A1111 wraps the eps model in a denoiser of its own: the noise levels are the training sigmas of the 50 "original"
timesteps 19, 39, ..., 999 (every T // 50-th, ending at T - 1), the UNet gets the integer original timestep
nearest each sigma (in log), and the eps denoiser's D is mixed with the input as LCM's consistency function does:
f(x) = c_out(10 t) D + c_skip(10 t) x, c_skip = 0.25 / ((10 t)^2 + 0.25), c_out = 10 t / sqrt((10 t)^2 + 0.25)
(sigma_data 0.5, timestep scaling 10). The schedule types run on those 50 sigmas, as A1111's do (Automatic,
Uniform and Normal: evenly spaced original timesteps from 999 to 19).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ...configuration import PositiveInt
from ...errors import ConfigError
from ..k_sampler import KSampler, Program, sampler_config
from ..schedule_types import nearest_timestep

_SIGMA_DATA, _TIMESTEP_SCALING = 0.5, 10.0


class A1111LCMSampler(KSampler):
    """LCM: x <- f(x) at each grid sigma, then, unless the next sigma is 0, x <- x + sigma_next z.

    One model call per step, one noise draw per step that does not end at 0.
    """

    stochastic = True

    @sampler_config
    def __init__(self, original_inference_steps: PositiveInt = 50):
        """A1111's LCM (original_inference_steps: the distilled model's timestep count, 50 as A1111 fixes it)."""

    def original_timesteps(self) -> list[int]:
        """The LCM wrapper's timesteps, ascending: T - 1 - k (T // n) for k = n - 1, ..., 0."""
        total, count = len(self.train_sigmas), self.config.original_inference_steps
        if count > total:
            raise ConfigError(f"{type(self).__name__}: original_inference_steps must be at most the {total} training "
                              f"timesteps, got {count}")
        skip = total // count
        return [total - 1 - k * skip for k in reversed(range(count))]

    def _nearest_original(self, sigmas: Sequence[float]) -> list[int]:
        """The original timestep whose sigma is nearest each of ``sigmas`` in log (A1111's ``sigma_to_t``)."""
        timesteps = self.original_timesteps()
        log_sigmas = self.log_sigmas[timesteps]
        index = nearest_timestep(torch.tensor(list(sigmas), dtype=torch.float32), log_sigmas)
        return [timesteps[i] for i in index.tolist()]

    def schedule_sigmas(self) -> torch.Tensor:
        """The schedule types run on the original timesteps' sigmas, as A1111's LCM denoiser holds them."""
        return self.train_sigmas[self.original_timesteps()]

    def model_timesteps(self, sigmas: Sequence[float]) -> torch.Tensor:
        """The original timestep nearest each call's sigma, whatever ``timestep_type`` says (A1111's wrapper)."""
        return torch.tensor(self._nearest_original(sigmas), dtype=torch.float32)

    def program(self, x: torch.Tensor) -> Program:
        grid = self.grid
        for sigma_next, t in zip(grid[1:], self._nearest_original(grid[:-1]), strict=True):
            denoised = yield x
            scaled = _TIMESTEP_SCALING * t
            c_skip = _SIGMA_DATA**2 / (scaled**2 + _SIGMA_DATA**2)
            c_out = scaled / math.sqrt(scaled**2 + _SIGMA_DATA**2)
            x = denoised * c_out + x * c_skip
            if sigma_next > 0:
                x = x + self.noise_like(x) * sigma_next
        return x
