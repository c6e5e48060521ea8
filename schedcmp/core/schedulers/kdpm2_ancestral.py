"""Ancestral DPM-Solver-2 on sigma: a DPM-Solver-2 step down to sigma_down, then fresh noise of std sigma_up.

Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"
(arXiv:2206.00364) sigma parametrisation, with the second-order midpoint update of Lu et al. 2022, "DPM-Solver"
(arXiv:2206.00927) and the ancestral noise split of Ho et al. 2020, as k-diffusion's ``sample_dpm_2_ancestral``.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..configuration import NonNegativeInt, PositiveInt, register_to_config
from .base import SchedulerOutput, randn_tensor, step_scalars
from .schedules import Beta, BetaSchedule, TimestepSpacing, TrainedBetas, sigma_to_t_float32
from .sigma_space import Device, SigmaSchedule, TwoStageScheduler, interleave_midpoints, kdpm2_layout, with_final_sigma


class KDPM2AncestralDiscreteScheduler(TwoStageScheduler):
    """Ancestral DPM-Solver-2 (k-diffusion ``sample_dpm_2_ancestral``): two model calls per step, noise at the end.

    ``timesteps`` interleaves the two stages (t_0, t_mid_0, t_1, t_mid_1, ...): even counter positions take the
    Euler half step towards the midpoint of sigma_i and sigma_down, odd ones the full step to sigma_down followed
    by noise of std sigma_up drawn from ``generator``.
    """

    _round_karras = True

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: PositiveInt = 1000,
        beta_start: Beta = 0.00085,
        beta_end: Beta = 0.012,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: TrainedBetas | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
        timestep_spacing: TimestepSpacing = "linspace",
        steps_offset: NonNegativeInt = 0,
    ) -> None:
        # prediction_type "sample" is refused here: diffusers accepts it but raises NotImplementedError in step.
        self._setup()

    @property
    def is_stochastic(self) -> bool:
        """True: every step ends with fresh noise from the generator."""
        return True

    def _lay_out(self, schedule: SigmaSchedule, index: torch.Tensor, device: Device) -> None:
        """The ancestral split of each step and its log-midpoint interleaved (even: half step, odd: step + noise)."""
        base = with_final_sigma(schedule.sigmas)  # [n + 1]
        # Ancestral split of each step s_k -> s_{k+1} (k-diffusion get_ancestral_step, eta = 1), diffusers' float32
        following = base.roll(-1)
        following[-1] = 0.0
        sigmas_up = (following**2 * (base**2 - following**2) / base**2) ** 0.5
        sigmas_down = (following**2 - sigmas_up**2) ** 0.5
        sigmas_down[-1] = 0.0
        midpoints = base.log().lerp(sigmas_down.log(), 0.5).exp()  # sqrt(s_k * down_k)
        midpoints[-2:] = 0.0
        self.sigmas, self.sigmas_interpol = kdpm2_layout(base), kdpm2_layout(midpoints)  # [2n + 2]
        self.sigmas_up, self.sigmas_down = kdpm2_layout(sigmas_up), kdpm2_layout(sigmas_down)
        timesteps = torch.from_numpy(schedule.timesteps)  # float32, float64 when respaced (diffusers' dtypes)
        mid_timesteps = sigma_to_t_float32(midpoints, schedule.log_train)
        self.timesteps = interleave_midpoints(timesteps, mid_timesteps[:-2]).to(device)

        # Per counter position: even -> half step from sigma_k to its midpoint, odd -> step to sigma_down + noise.
        first = index % 2 == 0
        own = index - (~first).long()  # the table entry of the step this stage belongs to
        sigma, sigma_mid = self.sigmas[own], self.sigmas_interpol[own]
        self._set_model_sigmas(torch.where(first, sigma, sigma_mid))  # the noise level the model saw
        self._dt = step_scalars(torch.where(first, sigma_mid - sigma, self.sigmas_down[own] - sigma))
        self._noise_std = step_scalars(self.sigmas_up[own])

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
        sigma = self._model_sigma[i]

        # 1. x0 from the model output: eps or v (Salimans & Ho 2022 sec. 4)
        pred_original_sample = self._predicted_x0(model_output, sample, i, sigma)

        # 2. first stage: d at s, x_mid = x_i + (s_mid - s) d, x_i kept for the second stage;
        # 3. second stage: x_{i+1} = x_i + (s_down - s) d_mid + s_up * z, z ~ N(0, I) (ancestral sampling)
        # (diffusers' operations in its order, in place on the fresh slope and noise tensors)
        derivative = (sample - pred_original_sample).div_(sigma)
        prev_sample = derivative.mul_(self._dt[i]).add_(self._stage_start(i, sample))
        if i % 2 == 1:
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            prev_sample = prev_sample.add_(noise.mul_(self._noise_std[i]))
        return self._finish_step(i, prev_sample, pred_original_sample, return_dict)
