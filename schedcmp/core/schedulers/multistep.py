"""What DEIS and UniPC share: multistep exponential integrators on the VP noise-level grid, in float32.

Both convert each model output (to x0, then to eps for DEIS), keep the last ``solver_order`` of them, raise the
order by one per step while that history fills up, refuse flow-matching options, and place their timesteps as
DPM-Solver does (n + 1 points, the last dropped; Lin et al. 2023 Table 2). The final sigma is 0 or the smallest
of the schedule (see ``vp_noise_levels``).
"""

from __future__ import annotations

from typing import Literal

import torch

from ..errors import ConfigError
from .schedules import (
    check_sigma_grid_choice,
    chosen_sigma_grid,
    dynamic_threshold,
    multistep_timesteps,
    vp_alpha_sigma,
)
from .vp import VPSigmaScheduler, predicted_x0, reject_flow_options, vp_noise_levels


class MultistepScheduler(VPSigmaScheduler):
    """Base of DEIS and UniPC: options, training schedule, timesteps and the x0 of a model output."""

    def _setup(self, rescale_betas_zero_snr: bool = False, **flow_options: tuple[object, object]) -> None:
        """Check the options, build the training schedule and diffusers' state before ``set_timesteps``."""
        name, config = type(self).__name__, self.config
        order = config.solver_order
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ConfigError(f"{name}: solver_order must be a whole number >= 1 (1, 2 or 3); got {order!r}")
        check_sigma_grid_choice(name, config)
        reject_flow_options(
            name,
            use_flow_sigmas=(config.use_flow_sigmas, False),
            flow_shift=(config.flow_shift, 1.0),
            use_dynamic_shifting=(config.use_dynamic_shifting, False),
            **flow_options,
        )
        # Read by every step: cached here, since the config is frozen and a property lookup costs microseconds.
        self._solver_order = order
        self._prediction_type = config.prediction_type
        self._threshold = (config.dynamic_thresholding_ratio, config.sample_max_value) if config.thresholding else None
        self._set_configured_schedule(rescale_betas_zero_snr)
        self.num_inference_steps: int | None = None
        self.model_outputs: list[torch.Tensor] = []
        self.lower_order_nums = 0

    @property
    def is_stochastic(self) -> bool:
        """False: the solver integrates the probability-flow ODE, no noise is drawn."""
        return False

    def _place_timesteps(
        self,
        num_inference_steps: int,
        device: str | torch.device | None,
        final: Literal["zero", "schedule_min"],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Set timesteps, sigmas [n + 1] and their float32 alpha_t / sigma_t (returned), and clear the history."""
        config = self.config
        total = config.num_train_timesteps
        n = self._checked_steps(num_inference_steps, total)
        spaced = multistep_timesteps(config.timestep_spacing, total, n, config.steps_offset)
        grid = chosen_sigma_grid(config)
        timesteps, sigmas = vp_noise_levels(config, self.alphas_cumprod, spaced, n, grid, round_grid=True, final=final)
        self._set_noise_levels(timesteps, sigmas, device)
        alpha, sigma_t = vp_alpha_sigma(self.sigmas)  # [n + 1] float32, as diffusers computes them
        self._alpha, self._sigma, self._sigma_t = alpha.tolist(), self.sigmas.tolist(), sigma_t.tolist()
        self.model_outputs = []
        self.lower_order_nums = 0
        return alpha, sigma_t

    def _x0(self, model_output: torch.Tensor, sample: torch.Tensor, i: int) -> torch.Tensor:
        """x0 of a model output at step ``i`` (``predicted_x0``), dynamically thresholded if configured."""
        x0 = predicted_x0(self._prediction_type, model_output, sample, self._alpha[i], self._sigma_t[i], self._sigma[i])
        if self._threshold is not None:
            x0 = dynamic_threshold(x0, *self._threshold)
        return x0

