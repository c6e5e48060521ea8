"""Make diffusers' DPMSolverSDEScheduler consume our Brownian path, so the parity test compares the math exactly.

diffusers draws its SDE noise from a torchsde Brownian tree and ignores the generator; ours draws a Brownian path
from the generator given to ``step``. Installing our ``BrownianNoiseSampler`` (built from the same seed the
harness gives our ``step``) as diffusers' ``noise_sampler`` makes both libraries add exactly the same noise.
"""

from __future__ import annotations

from typing import Any

import torch

from schedcmp.core.schedulers.dpmsolver_sde import BrownianNoiseSampler


def share_brownian_noise(scheduler: Any, generator_seed: int = 1234, ours: bool = False) -> None:
    """Call right after ``set_timesteps``: give diffusers' scheduler our sampler; ours needs nothing.

    The sampler needs the sample's shape, known only at the first ``step``, so it is installed there, exactly
    where diffusers would build its own: with the sigma range diffusers uses and a fresh generator seeded like
    the one the harness passes to our ``step``.
    """
    if not ours:
        install_brownian_sampler(scheduler, torch.Generator().manual_seed(generator_seed))


def install_brownian_sampler(scheduler: Any, generator: torch.Generator) -> None:
    """Make diffusers' SDE scheduler draw its Brownian path with our sampler from ``generator`` at its first step."""
    original_step = scheduler.step

    def step_with_shared_noise(model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args, **kwargs):
        if scheduler.noise_sampler is None:
            sigmas = scheduler.sigmas
            sigma_min, sigma_max = sigmas[sigmas > 0].min().item(), sigmas.max().item()
            scheduler.noise_sampler = BrownianNoiseSampler(sample, sigma_min, sigma_max, generator=generator)
        return original_step(model_output, timestep, sample, *args, **kwargs)

    scheduler.step = step_with_shared_noise
