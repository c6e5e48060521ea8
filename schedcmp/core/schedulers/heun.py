"""Heun's second-order sampler on the probability-flow ODE in sigma space.

Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"
(arXiv:2206.00364), Algorithm 1 (deterministic, gamma = 0); k-diffusion's ``sample_heun``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from ..configuration import NonNegativeInt, PositiveFloat, PositiveInt, register_to_config
from ..errors import ConfigError
from .base import SchedulerOutput, step_scalars
from .schedules import Beta, TimestepSpacing, TrainedBetas
from .sigma_space import (
    Device,
    SigmaSchedule,
    TwoStageScheduler,
    check_no_grid_with_custom_timesteps,
    repeat_after_first,
    with_final_sigma,
)


class HeunDiscreteScheduler(TwoStageScheduler):
    """Heun's method (Karras et al. 2022 Alg. 1) on sigma = sqrt((1 - abar) / abar): two model calls per step.

    ``timesteps`` interleaves the two stages (t_0, t_1, t_1, t_2, t_2, ...): even counter positions run the Euler
    predictor, odd ones the trapezoidal corrector, so a loop over ``timesteps`` calling ``step`` each time is a
    full Heun solve.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: PositiveInt = 1000,
        beta_start: Beta = 0.00085,
        beta_end: Beta = 0.012,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "exp"] = "linear",
        trained_betas: TrainedBetas | None = None,
        prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        clip_sample: bool = False,
        clip_sample_range: PositiveFloat = 1.0,
        timestep_spacing: TimestepSpacing = "linspace",
        steps_offset: NonNegativeInt = 0,
    ) -> None:
        self._stage_derivative: torch.Tensor | None = None
        self._clip_range = clip_sample_range if clip_sample else None  # read by every step
        self._setup()

    @property
    def is_stochastic(self) -> bool:
        """False: Heun's method is deterministic."""
        return False

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        num_train_timesteps: int | None = None,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        """Spaced timesteps (Lin et al. 2023 Table 2) or custom ones, each sigma but the first visited twice."""
        name = type(self).__name__
        if (num_inference_steps is None) == (timesteps is None):
            raise ConfigError(f"{name}.set_timesteps: pass exactly one of num_inference_steps and timesteps")
        if timesteps is not None:
            check_no_grid_with_custom_timesteps(name, self.config)
            if len(timesteps) == 0:
                raise ConfigError(f"{name}.set_timesteps: timesteps must not be empty")
            num_inference_steps = len(timesteps)
        else:
            num_inference_steps = self._checked_steps(num_inference_steps, num_train_timesteps)
        self._build(num_inference_steps, device, num_train_timesteps, respace=True, timesteps=timesteps)

    def _lay_out(self, schedule: SigmaSchedule, index: torch.Tensor, device: Device) -> None:
        """Each sigma but the first and the last visited twice; a step runs from sigma to sigma_next."""
        base = with_final_sigma(schedule.sigmas)  # [n + 1]
        # [s_0, s_1, s_1, ..., s_{n-1}, s_{n-1}, 0]: [2n]; timesteps [t_0, t_1, t_1, ...]: [2n - 1]
        self.sigmas = repeat_after_first(base)[:-1]
        timesteps = torch.from_numpy(np.asarray(schedule.timesteps))
        self.timesteps = repeat_after_first(timesteps).to(device, torch.float32)
        # Per counter position: both stages of a step share sigma and sigma_next; the model sees (and x0 / the
        # slope use) sigma at the predictor, sigma_next at the corrector. The corrector's halving of d_i + d' is
        # folded into its dt: (d / 2) dt and d (dt / 2) round alike, halving being exact in binary floating point
        start = index - index % 2
        predictor = index % 2 == 0
        sigma, sigma_next = self.sigmas[start], self.sigmas[start + 1]
        self._set_model_sigmas(torch.where(predictor, sigma, sigma_next))
        self._dt = step_scalars(torch.where(predictor, sigma_next - sigma, (sigma_next - sigma) / 2))
        self._stage_derivative = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor | None,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One stage of a Heun step: Euler predictor or trapezoidal corrector (Karras et al. 2022 Alg. 1 lines 4-8)."""
        # Notation (Karras et al. 2022, Algorithm 1 with gamma = 0):
        # x_i      -> sample at the predictor; x'_{i+1} -> sample at the corrector (the Euler estimate)
        # s, s'    -> sigma_i, sigma_{i+1}; the model saw x at s (predictor) or at s' (corrector)
        # x0       -> pred_original_sample, D(x; sigma) recovered from the model output
        # d_i, d'  -> (x - x0) / sigma, the ODE slope dx/dsigma (eq. 3) at s and at s'
        i = self._current_step_index()
        sigma = self._model_sigma[i]

        # 1. x0 from the model output: eps, v (Salimans & Ho 2022 sec. 4) or x0 itself
        pred_original_sample = self._predicted_x0(model_output, sample, i, sigma)
        if self._clip_range is not None:
            pred_original_sample = pred_original_sample.clamp(-self._clip_range, self._clip_range)

        # (diffusers' operations in its order, in place on the fresh slope tensor)
        derivative = (sample - pred_original_sample).div_(sigma)
        start = self._stage_start(i, sample)
        if i % 2 == 0:
            # 2. predictor: d_i at s, Euler x'_{i+1} = x_i + (s' - s) d_i (Alg. 1 lines 4-5); keep x_i, d_i
            self._stage_derivative = derivative
            prev_sample = derivative * self._dt[i]
        else:
            # 3. corrector: x_{i+1} = x_i + (s' - s) / 2 (d_i + d') (Alg. 1 lines 7-8)
            prev_sample = derivative.add_(self._stage_derivative).mul_(self._dt[i])
            self._stage_derivative = None
        prev_sample = prev_sample.add_(start)
        return self._finish_step(i, prev_sample, pred_original_sample, return_dict)
