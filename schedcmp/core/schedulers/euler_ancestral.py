"""Euler ancestral sampling: an Euler step down to sigma_down, then fresh noise up to sigma_{i+1}.

k-diffusion's ``sample_euler_ancestral`` (Crowson), the ancestral split of Song et al. 2021 ("Score-Based
Generative Modeling through SDEs", arXiv:2011.13456) applied in the sigma space of Karras et al. 2022.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..configuration import NonNegativeInt, PositiveInt, register_to_config
from .base import SchedulerOutput, cast, randn_tensor, step_scalars
from .schedules import Beta, BetaSchedule, TimestepSpacing, TrainedBetas
from .sigma_space import (
    SigmaScheduler,
    init_noise_sigma_of,
    sigma_schedule,
    train_alphas_cumprod,
    training_sigmas,
    with_final_sigma,
)


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    """Ancestral Euler steps on sigma = sqrt((1 - abar) / abar); stochastic (draws noise every step).

    diffusers refuses ``prediction_type='sample'`` only in ``step``; we refuse it when the scheduler is built.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: PositiveInt = 1000,
        beta_start: Beta = 0.0001,
        beta_end: Beta = 0.02,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: TrainedBetas | None = None,
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
        timestep_spacing: TimestepSpacing = "linspace",
        steps_offset: NonNegativeInt = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self.alphas_cumprod = train_alphas_cumprod(self.config, rescale_betas_zero_snr)
        self.num_inference_steps: int | None = None
        sigmas, timesteps = training_sigmas(self.alphas_cumprod)  # diffusers' state; float64 timesteps (its quirk)
        self._install(sigmas, torch.from_numpy(timesteps), None)

    @property
    def is_stochastic(self) -> bool:
        """True: every step adds fresh noise drawn from the generator."""
        return True

    def _install(self, sigmas: torch.Tensor, timesteps: torch.Tensor, device: torch.device | str | None) -> None:
        """Keep the float32 CPU sigmas, place the timesteps and precompute every per-step coefficient."""
        config = self.config
        self.sigmas = sigmas
        self.timesteps = timesteps.to(device)
        self.init_noise_sigma = init_noise_sigma_of(sigmas, config.timestep_spacing)
        self._prediction_type = config.prediction_type
        sigma_from, sigma_to = sigmas[:-1], sigmas[1:]
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        self._set_model_sigmas(sigmas)
        self._sigma_up = step_scalars(sigma_up)
        self._dt = step_scalars(sigma_down - sigma_from)
        self._reset_step_counter()

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Spaced timesteps (Lin et al. 2023 Table 2) and their sigmas, linearly interpolated in t."""
        config = self.config
        n = self._checked_steps(num_inference_steps, config.num_train_timesteps)
        self.num_inference_steps = n
        timesteps, sigmas, _ = sigma_schedule(config, self.alphas_cumprod, n, respace=False)  # no grids here
        self._install(with_final_sigma(sigmas), torch.from_numpy(timesteps), device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor | None,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One ancestral Euler step: deterministic to sigma_down, then noise of std sigma_up (k-diffusion)."""
        # Notation:
        # x          -> sample at noise level sigma_i
        # x0         -> pred_original_sample, the denoised estimate from the model output
        # sigma_up   -> sqrt(sigma_{i+1}^2 (sigma_i^2 - sigma_{i+1}^2) / sigma_i^2), the std of the fresh noise
        # sigma_down -> sqrt(sigma_{i+1}^2 - sigma_up^2), where the deterministic part of the step lands
        i = self._current_step_index()
        sigma = self._model_sigma[i]
        sample = cast(sample, torch.float32)

        # 1. x0 from the model output: eps or v (Salimans & Ho 2022 sec. 4)
        pred_original_sample = self._predicted_x0(model_output, sample, i, sigma)

        # 2. Euler step of the probability-flow ODE (Karras et al. 2022 eq. 3) from sigma_i to sigma_down,
        #    diffusers' operations in its order, in place on the fresh slope tensor
        derivative = (sample - pred_original_sample).div_(sigma)
        prev_sample = derivative.mul_(self._dt[i]).add_(sample)

        # 3. ancestral noise: x_{i+1} = x_down + sigma_up * z, z ~ N(0, I) (drawn even when sigma_up = 0,
        #    so the generator advances as diffusers' does)
        noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
        prev_sample = cast(prev_sample.add_(noise.mul_(self._sigma_up[i])), model_output.dtype)
        return self._finish_step(i, prev_sample, pred_original_sample, return_dict)
