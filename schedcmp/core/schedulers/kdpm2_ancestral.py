"""Ancestral DPM-Solver-2 on sigma: a DPM-Solver-2 step down to sigma_down, then fresh noise of std sigma_up.

Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"
(arXiv:2206.00364) sigma parametrisation, with the second-order midpoint update of Lu et al. 2022, "DPM-Solver"
(arXiv:2206.00927) and the ancestral noise split of Ho et al. 2020, as k-diffusion's ``sample_dpm_2_ancestral``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from ..configuration import register_to_config
from .base import SchedulerMixin, SchedulerOutput, randn_tensor
from .euler import add_noise_by_sigma, check_sigma_schedule_choice
from .heun import checked_step_count, init_noise_sigma_of, sigma_schedule
from .kdpm2 import repeat_inner, sigma_to_t_float32
from .schedules import BetaSchedule, TimestepSpacing, make_betas


class KDPM2AncestralDiscreteScheduler(SchedulerMixin):
    """Ancestral DPM-Solver-2 (k-diffusion ``sample_dpm_2_ancestral``): two model calls per step, noise at the end.

    ``timesteps`` interleaves the two stages (t_0, t_mid_0, t_1, t_mid_1, ...): even counter positions take the
    Euler half step towards the midpoint of sigma_i and sigma_down, odd ones the full step to sigma_down followed
    by noise of std sigma_up drawn from ``generator``. ``step`` and ``scale_model_input`` follow the schedule by
    the step counter: their ``timestep`` argument is accepted for diffusers' contract and ignored. Every per-step
    coefficient is a Python float computed in ``set_timesteps``, so a step makes no host-device synchronisation.
    """

    order = 2

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: Sequence[float] | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
        timestep_spacing: TimestepSpacing = "linspace",
        steps_offset: int = 0,
    ) -> None:
        # prediction_type "sample" is refused here: diffusers accepts it but raises NotImplementedError in step.
        check_sigma_schedule_choice(type(self).__name__, use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)
        betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self._stage_sample: torch.Tensor | None = None
        # Initial state: every training step (diffusers also respaces it here; skipped, set_timesteps does it).
        self._build(num_train_timesteps, None, num_train_timesteps, respace=False)

    @property
    def is_stochastic(self) -> bool:
        """True: every step ends with fresh noise from the generator."""
        return True

    def set_timesteps(
        self,
        num_inference_steps: int,
        device: str | torch.device | None = None,
        num_train_timesteps: int | None = None,
    ) -> None:
        """Spaced timesteps (Lin et al. 2023 Table 2) with each step's ancestral midpoint interleaved."""
        n = checked_step_count(type(self).__name__, num_inference_steps, num_train_timesteps, self.config)
        self._build(n, device, num_train_timesteps, respace=True)

    def _build(self, n: int, device: str | torch.device | None, num_train_timesteps: int | None, respace: bool) -> None:
        self.num_inference_steps = n
        timesteps, sigmas, log_train = sigma_schedule(
            self.config,
            self.alphas_cumprod,
            n,
            num_train_timesteps or self.config.num_train_timesteps,
            np.float32,
            round_karras=True,
            respace=respace,
        )
        base = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))  # [n + 1]
        # Ancestral split of each step s_k -> s_{k+1} (k-diffusion get_ancestral_step, eta = 1), diffusers' float32
        following = base.roll(-1)
        following[-1] = 0.0
        sigmas_up = (following**2 * (base**2 - following**2) / base**2) ** 0.5
        sigmas_down = (following**2 - sigmas_up**2) ** 0.5
        sigmas_down[-1] = 0.0
        midpoints = base.log().lerp(sigmas_down.log(), 0.5).exp()  # sqrt(s_k * down_k)
        midpoints[-2:] = 0.0
        self.sigmas, self.sigmas_interpol = repeat_inner(base), repeat_inner(midpoints)  # [2n + 2]
        self.sigmas_up, self.sigmas_down = repeat_inner(sigmas_up), repeat_inner(sigmas_down)
        timesteps = torch.from_numpy(timesteps)  # float32, float64 when respaced (diffusers' dtypes)
        mid_timesteps = sigma_to_t_float32(midpoints, log_train).to(timesteps.dtype)
        pairs = torch.stack([mid_timesteps[:-2], timesteps[1:]], dim=1).flatten()  # [n - 1, 2] -> [2n - 2]
        self.timesteps = torch.cat([timesteps[:1], pairs]).to(device)
        self.init_noise_sigma = init_noise_sigma_of(self.sigmas, self.config.timestep_spacing)

        # Per counter position i: even -> half step from sigma_k to its midpoint, odd -> step to sigma_down + noise.
        index = torch.arange(2 * n - 1)
        first = index % 2 == 0
        own = index - (~first).long()  # the table entry of the step this stage belongs to
        sigma, sigma_mid = self.sigmas[own], self.sigmas_interpol[own]
        sigma_x0 = torch.where(first, sigma, sigma_mid)  # the noise level the model saw
        self._input_scale = ((sigma_x0**2 + 1) ** 0.5).tolist()
        self._sigma_x0 = sigma_x0.tolist()
        self._c_out = (-sigma_x0 / (sigma_x0**2 + 1) ** 0.5).tolist()
        self._c_den = (sigma_x0**2 + 1).tolist()
        self._dt = torch.where(first, sigma_mid - sigma, self.sigmas_down[own] - sigma).tolist()
        self._noise_std = self.sigmas_up[own].tolist()
        self._stage_sample = None
        self._reset_step_counter()

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Divide by sqrt(sigma^2 + 1) at the stage's noise level (Karras et al. 2022 Table 1, c_in)."""
        return sample / self._input_scale[self._current_step_index()]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor | None,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One stage of ancestral DPM-Solver-2: Euler to the midpoint, or the full step plus fresh noise."""
        # Notation (k-diffusion sample_dpm_2_ancestral; Lu et al. 2022 Alg. 1 with r = 1/2 in log-sigma):
        # x_i          -> sample at the first stage, at noise level s = sigma_i
        # s_up, s_down -> split of sigma_{i+1}: s_down^2 + s_up^2 = sigma_{i+1}^2, s_up^2 = s'^2 (s^2 - s'^2) / s^2
        # s_mid        -> exp((log s + log s_down) / 2), the midpoint the second model call sees
        # x0           -> pred_original_sample; d -> (x - x0) / sigma, the slope dx/dsigma (Karras et al. eq. 3)
        i = self._current_step_index()
        sigma_x0 = self._sigma_x0[i]

        # 1. x0 from the model output: eps or v (Salimans & Ho 2022 sec. 4)
        if self.config.prediction_type == "epsilon":
            pred_original_sample = sample - sigma_x0 * model_output
        else:
            pred_original_sample = model_output * self._c_out[i] + sample / self._c_den[i]

        derivative = (sample - pred_original_sample) / sigma_x0
        if i % 2 == 0:
            # 2. first stage: d at s, x_mid = x_i + (s_mid - s) d; keep x_i for the second stage
            self._stage_sample = sample
            prev_sample = sample + derivative * self._dt[i]
        else:
            # 3. second stage: x_{i+1} = x_i + (s_down - s) d_mid + s_up * z, z ~ N(0, I) (ancestral sampling)
            if self._stage_sample is None:
                raise RuntimeError(f"{type(self).__name__}: a second stage needs its first stage (begin_index is odd)")
            prev_sample = self._stage_sample + derivative * self._dt[i]
            self._stage_sample = None
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            prev_sample = prev_sample + noise * self._noise_std[i]

        self._step_index = i + 1
        if not return_dict:
            return prev_sample, pred_original_sample
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = x0 + sigma_t * noise (Karras et al. 2022 eq. 1) at the sigmas of ``timesteps``."""
        return add_noise_by_sigma(self, original_samples, noise, timesteps)
