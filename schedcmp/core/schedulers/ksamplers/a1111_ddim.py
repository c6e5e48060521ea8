"""A1111 1.10's DDIM (``modules/sd_samplers_timesteps_impl.py`` ``ddim`` on the grid of
``sd_samplers_timesteps.py`` ``CompVisSampler.get_timesteps``; Song et al. 2021, arXiv:2010.02502, eq. 12), and the
base of A1111's other "timestep samplers".

A1111 runs these samplers in the variance-preserving form x_vp = sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) eps
with integer UNet timesteps t_0 = 1, t_1 = 1 + T // n, ... below T (every (T // n)-th: n of them when n divides
T, more otherwise), whatever the Schedule type says. It starts from unscaled noise (x_vp = z at t_max) and loops
over the grid's intervals: the smallest timestep t_0 is where sampling ends, never a model call, and the result
is the x_vp it reached there. In k-diffusion's variance-exploding form, x = x_vp / sqrt(alpha-bar_t) and
sigma = sqrt((1 - alpha-bar_t) / alpha-bar_t), so the model input c_in x is x_vp again and the DDIM step is an
(ancestral) Euler step in sigma; that is how these programs are written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch

from ...configuration import Fraction
from ...errors import ConfigError
from ..k_sampler import KSampler, Program, ancestral_split, sampler_config
from ..schedule_types import nearest_timestep


class A1111TimestepSampler(KSampler):
    """What A1111's timestep samplers share: their own integer-timestep grid, unscaled initial noise and a
    variance-preserving final sample.

    The grid holds the training sigmas of the timesteps, largest first, down to sigma(t_0) = sigma(1), where the
    last step ends: n steps asked make len(timesteps) - 1 grid steps (n - 1 when n divides T, e.g. 19 at 20, but
    7 at 7). ``discard_penultimate_sigma`` asks for one more step, as A1111's discard does for these samplers.
    Custom ``sigmas`` must be training sigmas (a final 0 ends at the clean sample); custom ``timesteps`` must be
    integers, each one a model call, ending at sigma 0.
    """

    @property
    def init_noise_sigma(self) -> float:
        """sqrt(1 + sigma_0^2): the VE form of A1111's unscaled start x_vp = z."""
        sigma_0 = float(self.sigmas[0]) if len(self.sigmas) else float(self.train_sigmas[-1])
        return math.sqrt(1.0 + sigma_0**2)

    def sigma_grid(self, num_inference_steps: int) -> torch.Tensor:
        """Training sigmas at t = clip(range(0, T, T // n) + 1, 0, T - 1), largest first (n + 1 steps with the
        discard option)."""
        owner = type(self).__name__
        steps = num_inference_steps + (1 if self.config.discard_penultimate_sigma else 0)
        last = len(self.train_sigmas) - 1
        stride = (last + 1) // steps
        if stride == 0:
            raise ConfigError(f"{owner}: at most {last + 1} steps, got {steps}")
        timesteps = [min(t + 1, last) for t in range(0, last + 1, stride)]
        if len(timesteps) < 2:
            raise ConfigError(f"{owner}: A1111's grid for {steps} step has a single timestep and makes no model "
                              "call; ask for at least 2 steps")
        return self.train_sigmas[timesteps].flip(0)

    def custom_grid(self, sigmas: Sequence[float] | torch.Tensor | None,
                    timesteps: Sequence[float] | torch.Tensor | None) -> torch.Tensor:
        """Custom training ``sigmas`` or integer ``timesteps`` only: A1111's timestep samplers call the UNet at
        training timesteps."""
        if timesteps is not None and sigmas is None:
            return super().custom_grid(self._sigmas_at(timesteps), None)
        if sigmas is not None and timesteps is None:
            return super().custom_grid(self._on_training_grid(sigmas), None)
        return super().custom_grid(sigmas, timesteps)

    def _sigmas_at(self, timesteps: Sequence[float] | torch.Tensor) -> torch.Tensor:
        """The training sigmas of integer ``timesteps`` (each a model call), then 0."""
        t = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
        last = len(self.train_sigmas) - 1
        if not bool((t == t.round()).all()) or not bool(((t >= 0) & (t <= last)).all()):
            raise ConfigError(f"{type(self).__name__}.set_timesteps: custom timesteps must be integers in 0..{last} "
                              "(A1111's timestep samplers call the UNet at training timesteps only)")
        return torch.cat([self.train_sigmas[t.long()], torch.zeros(1)])

    def _on_training_grid(self, sigmas: Sequence[float] | torch.Tensor) -> torch.Tensor:
        """Custom sigmas snapped to the training sigmas they are (a 0 stays 0); ConfigError for any other."""
        values = torch.as_tensor(sigmas, dtype=torch.float32).flatten().clone()
        positive = values > 0
        snapped = self.train_sigmas[nearest_timestep(values[positive], self.log_sigmas)]
        if not torch.allclose(snapped, values[positive], rtol=1e-5, atol=0):
            raise ConfigError(f"{type(self).__name__}.set_timesteps: custom sigmas must be the model's training "
                              "sigmas (A1111's timestep samplers call the UNet at integer timesteps); give "
                              "timesteps= instead, or use a k-diffusion sampler")
        values[positive] = snapped
        return values

    def model_timesteps(self, sigmas: Sequence[float]) -> torch.Tensor:
        """The integer training timestep of each call (its sigma is a training sigma)."""
        return nearest_timestep(torch.tensor(list(sigmas), dtype=torch.float32), self.log_sigmas).float()

    def vp_sample(self, x: torch.Tensor) -> torch.Tensor:
        """The final VE point as A1111 returns it: x_vp = x sqrt(alpha-bar) at the grid's last noise level."""
        return x / math.sqrt(1.0 + self.grid[-1] ** 2)

    def ddim_program(self, x: torch.Tensor, eta: float, cfgpp: bool) -> Program:
        """DDIM with eta (eq. 12): x <- D + sigma_down eps' + sigma_up z, eps' = (x - D') / sigma with D' = D
        (DDIM) or the unconditional D (CFG++); sigma_up = eta sigma_t / sqrt(alpha-bar_prev), sigma_down^2 =
        sigma_next^2 - sigma_up^2: k-diffusion's ancestral step, which is DDIM's sigma_t written in sigma."""
        grid = self.grid
        for sigma, sigma_next in pairwise(grid):
            denoised = yield x
            direction = self.uncond_denoised if cfgpp else denoised
            sigma_down, sigma_up = ancestral_split(sigma, sigma_next, eta)
            x = denoised + (x - direction) * (sigma_down / sigma)
            if eta:  # A1111 draws every step when eta > 0, also where sigma_up is 0 (a custom final 0)
                x = x + self.noise_like(x) * sigma_up
        return self.vp_sample(x)


class A1111DDIMSampler(A1111TimestepSampler):
    """DDIM on A1111's timesteps: x <- D + sigma_down (x - D) / sigma + sigma_up z, one model call per step.

    With eta = 0 it is Euler in sigma from sigma(t_max) down to sigma(1); eta > 0 adds DDIM's fresh noise, one
    draw per step. The grid ignores the Schedule type (see ``A1111TimestepSampler``).
    """

    noise_options = ("eta",)

    @sampler_config
    def __init__(self, eta: Fraction = 0.0):
        """A1111's DDIM (eta: A1111's "Eta DDIM" setting, default 0)."""

    @property
    def is_stochastic(self) -> bool:
        return self.config.eta > 0

    def program(self, x: torch.Tensor) -> Program:
        return self.ddim_program(x, self.config.eta, cfgpp=False)
