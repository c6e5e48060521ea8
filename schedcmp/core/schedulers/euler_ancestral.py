"""Euler ancestral sampling: an Euler step down to sigma_down, then fresh noise up to sigma_{i+1}.

k-diffusion's ``sample_euler_ancestral`` (Crowson), the ancestral split of Song et al. 2021 ("Score-Based
Generative Modeling through SDEs", arXiv:2011.13456) applied in the sigma space of Karras et al. 2022.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from ..configuration import register_to_config
from .base import SchedulerMixin, SchedulerOutput, randn_tensor
from .euler import add_noise_by_sigma, train_alphas_cumprod, train_sigmas
from .schedules import BetaSchedule, TimestepSpacing, check_num_inference_steps, spaced_timesteps


class EulerAncestralDiscreteScheduler(SchedulerMixin):
    """Ancestral Euler steps on sigma = sqrt((1 - abar) / abar); stochastic (draws noise every step).

    ``step`` and ``scale_model_input`` follow the schedule by the step counter: their ``timestep`` argument is
    accepted for diffusers' contract and ignored. Per-step coefficients are Python floats computed in
    ``set_timesteps``, so a step makes no host-device synchronisation. diffusers refuses
    ``prediction_type='sample'`` only in ``step``; we refuse it when the scheduler is built.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
        timestep_spacing: TimestepSpacing = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self.alphas_cumprod = train_alphas_cumprod(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )
        self.num_inference_steps: int | None = None
        # Before set_timesteps: every training step, sigma_max first, then 0; float64 timesteps (diffusers' quirk).
        sigmas = np.concatenate([train_sigmas(self.alphas_cumprod)[::-1], [0.0]]).astype(np.float32)
        timesteps = np.linspace(0, num_train_timesteps - 1, num_train_timesteps)[::-1].copy()
        self._install(torch.from_numpy(sigmas), torch.from_numpy(timesteps), None)

    @property
    def is_stochastic(self) -> bool:
        """True: every step adds fresh noise drawn from the generator."""
        return True

    def _install(self, sigmas: torch.Tensor, timesteps: torch.Tensor, device: torch.device | str | None) -> None:
        """Keep the float32 CPU sigmas, place the timesteps and precompute every per-step Python float."""
        self.sigmas = sigmas
        self.timesteps = timesteps.to(device)
        max_sigma = sigmas.max()
        if self.config.timestep_spacing not in ("linspace", "trailing"):
            max_sigma = (max_sigma**2 + 1) ** 0.5
        self.init_noise_sigma = max_sigma.item()
        self._input_scale = ((sigmas**2 + 1) ** 0.5).tolist()
        sigma_from, sigma_to = sigmas[:-1], sigmas[1:]
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        self._sigma = sigma_from.tolist()
        self._sigma_up = sigma_up.tolist()
        self._dt = (sigma_down - sigma_from).tolist()
        # v-prediction's x0 = out * c_out + x / c_den, with diffusers' float32 factors.
        self._c_out = (-sigma_from / (sigma_from**2 + 1) ** 0.5).tolist()
        self._c_den = (sigma_from**2 + 1).tolist()
        self._reset_step_counter()

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Spaced timesteps (Lin et al. 2023 Table 2) and their sigmas, linearly interpolated in t."""
        config = self.config
        n = check_num_inference_steps(type(self).__name__, num_inference_steps, config.num_train_timesteps)
        self.num_inference_steps = n
        timesteps = spaced_timesteps(config.timestep_spacing, config.num_train_timesteps, n, config.steps_offset)
        timesteps = timesteps.astype(np.float32)
        train = train_sigmas(self.alphas_cumprod)
        sigmas = np.interp(timesteps, np.arange(len(train)), train)
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self._install(torch.from_numpy(sigmas), torch.from_numpy(timesteps), device)

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Divide by sqrt(sigma^2 + 1): the VP model's input scale (Karras et al. 2022 Table 1, c_in)."""
        return sample / self._input_scale[self._current_step_index()]

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
        sigma = self._sigma[i]
        sample = sample.to(torch.float32)

        # 1. x0 from the model output: eps or v (Salimans & Ho 2022 sec. 4)
        if self.config.prediction_type == "epsilon":
            pred_original_sample = sample - sigma * model_output
        else:
            pred_original_sample = model_output * self._c_out[i] + sample / self._c_den[i]

        # 2. Euler step of the probability-flow ODE (Karras et al. 2022 eq. 3) from sigma_i to sigma_down,
        #    in diffusers' operation order
        derivative = (sample - pred_original_sample) / sigma
        prev_sample = sample + derivative * self._dt[i]

        # 3. ancestral noise: x_{i+1} = x_down + sigma_up * z, z ~ N(0, I) (drawn even when sigma_up = 0,
        #    so the generator advances as diffusers' does)
        noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
        prev_sample = (prev_sample + noise * self._sigma_up[i]).to(model_output.dtype)

        self._step_index = i + 1
        if not return_dict:
            return prev_sample, pred_original_sample
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = x0 + sigma_t * noise (Karras et al. 2022 eq. 1) at the sigmas of ``timesteps``."""
        return add_noise_by_sigma(self, original_samples, noise, timesteps)
