"""Euler sampler on the probability-flow ODE in sigma space, with optional churn.

Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"
(arXiv:2206.00364), Algorithm 2 without the Heun correction; k-diffusion's ``sample_euler``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from ..configuration import NonNegativeInt, PositiveFloat, PositiveInt, register_to_config
from ..errors import ConfigError
from .base import SchedulerOutput, cast
from .schedules import (
    Beta,
    BetaSchedule,
    TimestepSpacing,
    TrainedBetas,
    check_sigma_grid_choice,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
)
from .sigma_space import (
    ChurnTables,
    SigmaScheduler,
    check_no_grid_with_custom_timesteps,
    init_noise_sigma_of,
    sigma_schedule,
    train_alphas_cumprod,
    training_sigmas,
    with_final_sigma,
)


class EulerDiscreteScheduler(SigmaScheduler):
    """Euler steps on sigma = sqrt((1 - abar) / abar), optionally churned (Karras et al. 2022 Alg. 2).

    Each churn setting (s_churn, s_tmin, s_tmax) gets its table of per-step coefficients on first use.
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
        prediction_type: Literal["epsilon", "sample", "v_prediction", "original_sample"] = "epsilon",
        interpolation_type: Literal["linear", "log_linear"] = "linear",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        sigma_min: PositiveFloat | None = None,
        sigma_max: PositiveFloat | None = None,
        timestep_spacing: TimestepSpacing = "linspace",
        timestep_type: Literal["discrete", "continuous"] = "discrete",
        steps_offset: NonNegativeInt = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
    ) -> None:
        check_sigma_grid_choice(type(self).__name__, self.config)
        self.alphas_cumprod = train_alphas_cumprod(self.config, rescale_betas_zero_snr)
        self.num_inference_steps: int | None = None
        sigmas, timesteps = training_sigmas(self.alphas_cumprod)  # diffusers' state before set_timesteps
        self._install(sigmas, torch.from_numpy(timesteps).float(), None)

    @property
    def is_stochastic(self) -> bool:
        """False: Euler is deterministic unless ``step`` is given ``s_churn > 0``."""
        return False

    def draws_noise(self, step_options: Mapping[str, Any] | None = None) -> bool:
        """True when ``s_churn > 0`` raises the noise level with fresh noise (Karras et al. 2022 Alg. 2 line 5)."""
        return float((step_options or {}).get("s_churn", 0.0)) > 0

    @staticmethod
    def _continuous_v(config: Mapping[str, Any]) -> bool:
        """Whether timesteps are EDM's c_noise = log(sigma) / 4 (continuous-time v-prediction models)."""
        return config.timestep_type == "continuous" and config.prediction_type == "v_prediction"

    def _install(self, sigmas: torch.Tensor, timesteps: torch.Tensor, device: torch.device | str | None) -> None:
        """Keep the float32 CPU sigmas, place the timesteps and precompute every per-step coefficient."""
        config = self.config
        self.sigmas = sigmas
        if self._continuous_v(config):
            timesteps = 0.25 * sigmas[:-1].log()  # c_noise of Karras et al. 2022 Table 1
        self.timesteps = timesteps.to(device)
        self.init_noise_sigma = init_noise_sigma_of(sigmas, config.timestep_spacing)
        self._prediction_type = config.prediction_type
        # v-prediction's factors are those of the un-churned sigma (diffusers' choice, matched)
        self._set_model_sigmas(sigmas)
        self._tables = ChurnTables(sigmas)
        self._reset_step_counter()

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        """Choose the sampling sigmas: spaced timesteps (Lin et al. 2023 Table 2) mapped to sigma, or custom ones."""
        name = type(self).__name__
        config = self.config
        if timesteps is not None and sigmas is not None:
            raise ConfigError(f"{name}.set_timesteps: pass either timesteps or sigmas, not both")
        if (num_inference_steps is None) == (timesteps is None and sigmas is None):
            raise ConfigError(f"{name}.set_timesteps: pass exactly one of num_inference_steps, timesteps, sigmas")
        if timesteps is not None:
            check_no_grid_with_custom_timesteps(name, config)
            if self._continuous_v(config):
                raise ConfigError(
                    f"{name}.set_timesteps: custom timesteps cannot be used with timestep_type='continuous' "
                    "and prediction_type='v_prediction'; pass sigmas instead"
                )
        if sigmas is not None:
            if len(sigmas) < 2:
                raise ConfigError(f"{name}.set_timesteps: sigmas needs at least 2 values (the last is the end)")
            self.num_inference_steps = len(sigmas) - 1
            sigma_arr = np.array(sigmas).astype(np.float32)
            log_train = np.log(sigmas_from_alphas_cumprod(self.alphas_cumprod).numpy())
            timestep_arr = sigma_to_t(sigma_arr[:-1], log_train).astype(np.float32)
            self._install(torch.from_numpy(sigma_arr), torch.from_numpy(timestep_arr), device)
            return
        if timesteps is None:
            n = self._checked_steps(num_inference_steps, config.num_train_timesteps)
        else:
            n = len(timesteps)
        self.num_inference_steps = n
        timestep_arr, sigma_arr, _ = sigma_schedule(
            config,
            self.alphas_cumprod,
            n,
            timesteps=timesteps,
            log_linear=config.interpolation_type == "log_linear",
            sigma_min=config.sigma_min,
            sigma_max=config.sigma_max,
        )
        if config.final_sigmas_type == "sigma_min":
            last = float(sigmas_from_alphas_cumprod(self.alphas_cumprod[0]))
        else:
            last = 0.0
        self._install(with_final_sigma(sigma_arr, last), torch.from_numpy(timestep_arr.astype(np.float32)), device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor | None,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One Euler step from sigma_i to sigma_{i+1} (Karras et al. 2022 Algorithm 2, lines 4-8)."""
        # Notation (Karras et al. 2022):
        # x       -> sample, the current x_i at noise level sigma_i
        # gamma   -> churn, min(s_churn / N, sqrt(2) - 1) where s_tmin <= sigma_i <= s_tmax, else 0
        # sigma^  -> sigma_hat = (1 + gamma) sigma_i, the raised noise level
        # x0      -> pred_original_sample, D(x^; sigma^) recovered from the model output
        # d       -> (x^ - x0) / sigma^, the ODE slope dx/dsigma (eq. 3)
        i = self._current_step_index()
        table = self._tables.get_table(s_churn, s_tmin, s_tmax)
        sigma_hat = table.sigma_hat[i]

        # 1. churn: x^ = x + sqrt(sigma^2 - sigma_i^2) * s_noise * eps (Alg. 2 lines 5-6)
        sample = table.churn(i, sample, s_noise, model_output, generator)

        # 2. x0 from the model output: eps at sigma^, v (Salimans & Ho 2022 sec. 4; diffusers uses the un-churned
        #    sigma there, matched) or x0 itself
        pred_original_sample = self._predicted_x0(model_output, sample, i, sigma_hat)

        # 3. Euler step x_{i+1} = x^ + (sigma_{i+1} - sigma^) d, d = (x^ - x0) / sigma^ (Alg. 2 lines 7-8, eq. 3);
        #    diffusers' operations in its order, whose float32 rounding matters when sigma_max is large, in place
        #    on the fresh slope tensor
        derivative = (sample - pred_original_sample).div_(sigma_hat)
        prev_sample = cast(derivative.mul_(table.dt[i]).add_(sample), model_output.dtype)
        return self._finish_step(i, prev_sample, pred_original_sample, return_dict)
