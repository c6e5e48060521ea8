"""DDPM ancestral sampling: Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (arXiv:2006.11239).

Learned variances follow Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models"
(arXiv:2102.09672); dynamic thresholding follows Saharia et al. 2022, Imagen (arXiv:2205.11487) sec. 2.3.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from ..configuration import Fraction, NonNegativeInt, PositiveFloat, PositiveInt, register_to_config
from ..errors import ConfigError
from .base import SchedulerOutput, randn_tensor, step_scalars
from .schedules import Beta, TimestepSpacing, TrainedBetas, make_betas
from .vp import PredictionType, VPScheduler, alpha_bars_at, check_thresholding, predicted_x0, training_timesteps

VarianceType = Literal["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"]
LEARNED_VARIANCES = ("learned", "learned_range")


class DDPMScheduler(VPScheduler):
    """Ancestral DDPM sampling: each step draws x_{t-1} from the posterior q(x_{t-1} | x_t, x0_hat).

    The posterior coefficients of every step (eq. 7) are computed in float32 by ``set_timesteps`` exactly as
    diffusers computes them and kept as 0-dim tensors (``step_scalars``); learned variances follow Nichol &
    Dhariwal 2021.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: PositiveInt = 1000,
        beta_start: Beta = 0.0001,
        beta_end: Beta = 0.02,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace"] = "linear",
        trained_betas: TrainedBetas | None = None,
        variance_type: VarianceType = "fixed_small",
        clip_sample: bool = True,
        prediction_type: PredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: Fraction = 0.995,
        clip_sample_range: PositiveFloat = 1.0,
        sample_max_value: PositiveFloat = 1.0,
        timestep_spacing: TimestepSpacing = "leading",
        steps_offset: NonNegativeInt = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        check_thresholding("DDPMScheduler", thresholding, dynamic_thresholding_ratio)
        betas = make_betas(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )
        self._set_training_schedule(betas)
        self.variance_type = variance_type
        self.custom_timesteps = False
        self.num_inference_steps: int | None = None
        # Before set_timesteps the schedule is every training timestep (diffusers steps t -> t - 1 then).
        self._set_schedule(np.arange(num_train_timesteps - 1, -1, -1, dtype=np.int64), device=None)

    @property
    def is_stochastic(self) -> bool:
        """True: every step but the last adds fresh Gaussian noise (Ho et al. 2020 Algorithm 2, line 4)."""
        return True

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        """Choose the sampling timesteps: a spacing of Lin et al. 2023 Table 2, or a custom descending list."""
        config = self.config
        num_train = config.num_train_timesteps
        if timesteps is not None:
            if num_inference_steps is not None:
                raise ConfigError("DDPMScheduler.set_timesteps: pass num_inference_steps or timesteps, not both")
            schedule = self._custom_schedule(timesteps)
            self.custom_timesteps = True
        else:
            if num_inference_steps is None:
                raise ConfigError("DDPMScheduler.set_timesteps: pass num_inference_steps or timesteps")
            num_inference_steps = self._checked_steps(num_inference_steps, num_train)
            schedule = training_timesteps(
                "DDPMScheduler", config.timestep_spacing, num_train, num_inference_steps, config.steps_offset
            )
            self.num_inference_steps = num_inference_steps
            self.custom_timesteps = False
        self._set_schedule(schedule, device)

    def _custom_schedule(self, timesteps: Sequence[int]) -> np.ndarray:
        values = np.asarray([float(t) for t in timesteps], dtype=np.float64)
        num_train = self.config.num_train_timesteps
        if values.size == 0 or not np.all(values == np.round(values)):
            raise ConfigError(
                f"DDPMScheduler: custom timesteps must be a non-empty list of integers, got {timesteps!r}"
            )
        if np.any(np.diff(values) >= 0):
            raise ConfigError(f"DDPMScheduler: custom timesteps must be strictly descending, got {timesteps!r}")
        if values[0] >= num_train or values[-1] < 0:
            raise ConfigError(
                f"DDPMScheduler: custom timesteps must lie in 0..{num_train - 1} (num_train_timesteps - 1), "
                f"got {timesteps!r}"
            )
        return values.astype(np.int64)

    def _set_schedule(self, schedule: np.ndarray, device: str | torch.device | None) -> None:
        """Precompute, for every step, the posterior coefficients of Ho et al. 2020 eq. 7 (see ``step_scalars``)."""
        previous = np.append(schedule[1:], -1)  # the step after the last one lands on "t = -1": abar = 1
        alpha_bar = self.alphas_cumprod[torch.from_numpy(schedule)]
        alpha_bar_prev = alpha_bars_at(self.alphas_cumprod, previous, torch.tensor(1.0))
        beta_bar = 1 - alpha_bar
        beta_bar_prev = 1 - alpha_bar_prev
        step_alpha = alpha_bar / alpha_bar_prev
        step_beta = 1 - step_alpha
        # Posterior variance beta-tilde (eq. 7), clamped like diffusers before any log.
        posterior_variance = torch.clamp((1 - alpha_bar_prev) / (1 - alpha_bar) * step_beta, min=1e-20)

        self._sqrt_alpha_bar = step_scalars(alpha_bar**0.5)
        self._sqrt_beta_bar = step_scalars(beta_bar**0.5)
        self._x0_coeff = step_scalars((alpha_bar_prev**0.5 * step_beta) / beta_bar)
        self._xt_coeff = step_scalars(step_alpha**0.5 * beta_bar_prev / beta_bar)
        self._adds_noise = (schedule > 0).tolist()  # diffusers adds no noise on the step from t = 0
        config = self.config
        variance_type = config.variance_type
        if variance_type == "fixed_small":
            self._noise_std = step_scalars(posterior_variance**0.5)
        elif variance_type == "fixed_small_log":
            self._noise_std = step_scalars(torch.exp(0.5 * torch.log(posterior_variance)))
        elif variance_type == "fixed_large":
            self._noise_std = step_scalars(step_beta**0.5)
        elif variance_type == "fixed_large_log":
            # diffusers quirk, matched: the *log* of beta_t is used as a variance, so its square root is NaN.
            self._noise_std = step_scalars(torch.log(step_beta) ** 0.5)
        else:  # learned variances interpolate in log space (Nichol & Dhariwal 2021 eq. 15)
            self._min_log = torch.log(posterior_variance).tolist()
            self._max_log = torch.log(step_beta).tolist()
        self.timesteps = torch.from_numpy(schedule).to(device)
        self._snapshot_options(config)
        self._reset_step_counter()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step x_t -> x_{t-1}, Ho et al. 2020 eqs. 6-7 and Algorithm 2."""
        # Notation (Ho et al. 2020):
        #   abar_t, abar_prev  cumulative signal rates at this step's timestep and the next one (1 after the last)
        #   beta_t             1 - abar_t / abar_prev, the beta of this (possibly strided) step
        #   x0_hat             the model's estimate of x_0
        #   mu_t, sigma_t      mean and standard deviation of q(x_{t-1} | x_t, x0_hat)
        i = self._step_in_schedule(len(self._x0_coeff))
        config = self._options

        # 1. split off the predicted variance of learned-variance models (2C output channels)
        predicted_variance = None
        if config.variance_type in LEARNED_VARIANCES:
            if model_output.shape[1] != 2 * sample.shape[1]:
                raise ConfigError(
                    f"DDPMScheduler: variance_type={config.variance_type!r} needs a model output with twice the "
                    f"sample's {sample.shape[1]} channels, got {model_output.shape[1]}"
                )
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)

        # 2. x0_hat from the model output (eq. 15 for epsilon; Salimans & Ho 2022 for v)
        x0 = predicted_x0(config.prediction_type, model_output, sample, self._sqrt_alpha_bar[i], self._sqrt_beta_bar[i])

        # 3. keep x0_hat in range: dynamic thresholding (Imagen sec. 2.3) or plain clipping
        x0 = self._bounded_x0(x0, config)

        # 4. posterior mean mu_t(x_t, x0_hat) (eq. 7)
        prev_sample = x0 * self._x0_coeff[i] + sample * self._xt_coeff[i]

        # 5. add sigma_t z, except on the step from t = 0 (Algorithm 2, line 4)
        if self._adds_noise[i]:
            noise = randn_tensor(model_output.shape, generator, device=model_output.device, dtype=model_output.dtype)
            if config.variance_type == "learned":  # the model predicts the variance itself
                prev_sample = prev_sample + predicted_variance**0.5 * noise
            elif config.variance_type == "learned_range":  # v in [-1, 1] interpolates log beta-tilde .. log beta
                frac = (predicted_variance + 1) / 2
                log_variance = frac * self._max_log[i] + (1 - frac) * self._min_log[i]
                prev_sample = prev_sample + torch.exp(0.5 * log_variance) * noise
            else:
                prev_sample = prev_sample.add_(noise.mul_(self._noise_std[i]))

        return self._finish_step(i, prev_sample, x0, return_dict)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction training target, Salimans & Ho 2022 sec. 4."""
        return self._velocity(sample, noise, timesteps)
