"""DPM-Solver-2 on sigma: an Euler half step to a log-midpoint noise level, then a full step with its slope.

Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"
(arXiv:2206.00364), Algorithm 1 with the second-order update of Lu et al. 2022, "DPM-Solver" (arXiv:2206.00927)
as k-diffusion's ``sample_dpm_2`` writes it: the midpoint is the geometric mean of sigma_i and sigma_{i+1}.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..configuration import NonNegativeInt, PositiveInt, register_to_config
from .base import SchedulerOutput, step_scalars
from .schedules import Beta, BetaSchedule, TimestepSpacing, TrainedBetas, sigma_to_t_float32
from .sigma_space import Device, SigmaSchedule, TwoStageScheduler, interleave_midpoints, kdpm2_layout, with_final_sigma


class KDPM2DiscreteScheduler(TwoStageScheduler):
    """DPM-Solver-2 (k-diffusion ``sample_dpm_2``) on sigma = sqrt((1 - abar) / abar): two model calls per step.

    ``timesteps`` interleaves the two stages (t_0, t_mid_0, t_1, t_mid_1, ...): even counter positions take the
    Euler half step to the midpoint noise level, odd ones the full step with the midpoint slope.
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
        """False: DPM-Solver-2 is deterministic."""
        return False

    def _lay_out(self, schedule: SigmaSchedule, index: torch.Tensor, device: Device) -> None:
        """Each step's log-midpoint interleaved: even positions half-step to it, odd ones use its slope."""
        base = with_final_sigma(schedule.sigmas)  # [n + 1]
        # midpoint sqrt(s_{k-1} s_k) as exp(lerp(log s_k, log s_{k-1}, 1/2)); entry 0 pairs s_0 with the final 0
        midpoints = base.log().lerp(base.roll(1).log(), 0.5).exp()  # [n + 1]
        self.sigmas, self.sigmas_interpol = kdpm2_layout(base), kdpm2_layout(midpoints)  # [2n + 2]
        timesteps = torch.from_numpy(schedule.timesteps)  # float32, float64 when respaced (diffusers' dtypes)
        mid_timesteps = sigma_to_t_float32(midpoints, schedule.log_train)
        self.timesteps = interleave_midpoints(timesteps, mid_timesteps[1:-1]).to(device)

        # Per counter position: even -> half step from sigma to the midpoint, odd -> full step with its slope.
        first = index % 2 == 0
        sigma = self.sigmas[index - (~first).long()]
        sigma_mid = self.sigmas_interpol[index + first.long()]
        sigma_next = self.sigmas[index + first.long()]
        self._set_model_sigmas(torch.where(first, sigma, sigma_mid))  # the noise level the model saw
        self._dt = step_scalars(torch.where(first, sigma_mid - sigma, sigma_next - sigma))

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor | None,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One stage of DPM-Solver-2: Euler to the midpoint, or the full step with the midpoint slope."""
        # Notation (k-diffusion sample_dpm_2; Lu et al. 2022 Alg. 1 with r = 1/2 in log-sigma):
        # x_i        -> sample at the first stage, at noise level s = sigma_i
        # s_mid      -> exp((log sigma_i + log sigma_{i+1}) / 2), s' -> sigma_{i+1}
        # x0         -> pred_original_sample, D(x; sigma) recovered from the model output
        # d          -> (x - x0) / sigma, the ODE slope dx/dsigma (Karras et al. 2022 eq. 3)
        i = self._current_step_index()
        sigma = self._model_sigma[i]

        # 1. x0 from the model output: eps or v (Salimans & Ho 2022 sec. 4)
        pred_original_sample = self._predicted_x0(model_output, sample, i, sigma)

        # 2. first stage: d at s, x_mid = x_i + (s_mid - s) d, x_i kept for the second stage;
        # 3. second stage: d_mid at s_mid, x_{i+1} = x_i + (s' - s) d_mid (the midpoint rule)
        # (diffusers' operations in its order, in place on the fresh slope tensor)
        derivative = (sample - pred_original_sample).div_(sigma)
        prev_sample = derivative.mul_(self._dt[i]).add_(self._stage_start(i, sample))
        return self._finish_step(i, prev_sample, pred_original_sample, return_dict)
