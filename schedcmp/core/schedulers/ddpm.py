"""DDPM ancestral sampling: Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (arXiv:2006.11239).

Learned variances follow Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models"
(arXiv:2102.09672); dynamic thresholding follows Saharia et al. 2022, Imagen (arXiv:2205.11487) sec. 2.3.
This module also holds the alpha-bar helpers DDIM and PNDM share (forward noising, velocity, thresholding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from ..configuration import register_to_config
from ..errors import ConfigError
from .base import SchedulerMixin, SchedulerOutput, randn_tensor
from .schedules import (
    TimestepSpacing,
    check_num_inference_steps,
    make_betas,
    rescale_zero_terminal_snr,
    spaced_timesteps,
)

PredictionType = Literal["epsilon", "sample", "v_prediction"]
VarianceType = Literal["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"]
LEARNED_VARIANCES = ("learned", "learned_range")


def laplace_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Betas of the Laplace schedule (Hang & Gu 2024): alpha-bar = sqrt(snr / (1 + snr)), log-snr Laplace in t."""

    def alpha_bar(t: float) -> float:
        log_snr = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
        snr = math.exp(log_snr)
        return math.sqrt(snr / (1 + snr))

    n = num_train_timesteps
    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float32)


def training_timesteps(
    owner: str, spacing: str, num_train_timesteps: int, num_inference_steps: int, steps_offset: int
) -> np.ndarray:
    """Descending int64 timesteps of the DDPM family (``linspace`` rounded to whole timesteps), Lin et al. Table 2."""
    timesteps = spaced_timesteps(spacing, num_train_timesteps, num_inference_steps, steps_offset)
    if spacing == "linspace":
        timesteps = timesteps.round()
    timesteps = timesteps.astype(np.int64)
    check_timesteps_in_range(owner, timesteps, num_train_timesteps, spacing, steps_offset)
    return timesteps


def check_timesteps_in_range(
    owner: str, timesteps: np.ndarray, num_train_timesteps: int, spacing: str, steps_offset: int
) -> None:
    """Refuse a schedule that reaches outside 0..T-1 (diffusers fails later with an IndexError in ``step``)."""
    outside = timesteps[(timesteps < 0) | (timesteps >= num_train_timesteps)]
    if outside.size:
        raise ConfigError(
            f"{owner}: {len(timesteps)} timesteps with timestep_spacing={spacing!r} and steps_offset={steps_offset} "
            f"reach timestep {int(outside[0])}, outside the training range 0..{num_train_timesteps - 1}; "
            "use fewer steps, steps_offset=0 or timestep_spacing='trailing'"
        )


def alpha_bars_at(alphas_cumprod: torch.Tensor, timesteps: np.ndarray, before_start: torch.Tensor) -> torch.Tensor:
    """alpha-bar at each timestep (float32); a negative timestep (past the last step) gets ``before_start``."""
    t = torch.from_numpy(np.asarray(timesteps, dtype=np.int64))
    return torch.where(t >= 0, alphas_cumprod[t.clamp(min=0)], before_start.to(torch.float32))


def _alpha_bar_factors(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    alphas_cumprod = alphas_cumprod.to(device=like.device, dtype=like.dtype)
    alpha_bar = alphas_cumprod[timesteps.to(like.device)].flatten()  # [B]
    shape = (-1,) + (1,) * (like.ndim - 1)  # [B, 1, ..., 1] broadcasts over the sample dimensions
    return (alpha_bar**0.5).reshape(shape), ((1 - alpha_bar) ** 0.5).reshape(shape)


def add_noise_vp(
    alphas_cumprod: torch.Tensor, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, Ho et al. 2020 eq. 4 (in the samples' dtype, like diffusers)."""
    sqrt_alpha_bar, sqrt_one_minus = _alpha_bar_factors(alphas_cumprod, timesteps, original_samples)
    return sqrt_alpha_bar * original_samples + sqrt_one_minus * noise


def velocity_vp(
    alphas_cumprod: torch.Tensor, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """v = sqrt(abar_t) noise - sqrt(1 - abar_t) x_0, Salimans & Ho 2022 sec. 4 (the v-prediction target)."""
    sqrt_alpha_bar, sqrt_one_minus = _alpha_bar_factors(alphas_cumprod, timesteps, sample)
    return sqrt_alpha_bar * noise - sqrt_one_minus * sample


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen dynamic thresholding (Saharia et al. 2022 sec. 2.3): per sample, clamp x0 to [-s, s] and divide by s."""
    dtype = x0.dtype
    batch, channels, *rest = x0.shape
    flat = x0.reshape(batch, channels * math.prod(rest))  # [B, C*H*W]
    if dtype not in (torch.float32, torch.float64):
        flat = flat.float()  # quantile needs fp32 and CPU clamp has no fp16 kernel (diffusers upcasts too)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)  # [B, 1]
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)


def check_step_index(owner: str, index: int, num_steps: int) -> None:
    """Refuse a ``step`` past the end of the schedule set by the last ``set_timesteps``."""
    if index >= num_steps:
        raise ConfigError(
            f"{owner}: step {index + 1} called but the schedule has {num_steps} steps; "
            "call set_timesteps again to start a new sampling loop"
        )


class DDPMScheduler(SchedulerMixin):
    """Ancestral DDPM sampling: each step draws x_{t-1} from the posterior q(x_{t-1} | x_t, x0_hat).

    Steps follow the schedule by counting (see ``SchedulerMixin``): ``step``'s ``timestep`` argument is accepted
    for diffusers' contract and ignored. All per-step coefficients are computed in float32 by ``set_timesteps``
    exactly as diffusers computes them and kept as Python floats.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace"] = "linear",
        trained_betas: Sequence[float] | np.ndarray | None = None,
        variance_type: VarianceType = "fixed_small",
        clip_sample: bool = True,
        prediction_type: PredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: TimestepSpacing = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        if thresholding and not 0 <= dynamic_thresholding_ratio <= 1:
            raise ConfigError(
                f"DDPMScheduler: dynamic_thresholding_ratio must be between 0 and 1, got {dynamic_thresholding_ratio!r}"
            )
        if trained_betas is None and beta_schedule == "sigmoid":
            self.betas = (
                torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps)) * (beta_end - beta_start) + beta_start
            )
        elif trained_betas is None and beta_schedule == "laplace":
            self.betas = laplace_betas(num_train_timesteps)
        else:
            self.betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        if rescale_betas_zero_snr:
            self.betas = rescale_zero_terminal_snr(self.betas)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.init_noise_sigma = 1.0
        self.variance_type = variance_type
        self.custom_timesteps = False
        self.num_inference_steps: int | None = None
        # Before set_timesteps the schedule is every training timestep (diffusers steps t -> t - 1 then).
        self._set_schedule(np.arange(num_train_timesteps - 1, -1, -1, dtype=np.int64), device=None)

    @property
    def is_stochastic(self) -> bool:
        """True: every step but the last adds fresh Gaussian noise (Ho et al. 2020 Algorithm 2, line 4)."""
        return True

    def scale_model_input(self, sample: torch.Tensor, timestep: int | torch.Tensor | None = None) -> torch.Tensor:
        """The model input is x_t itself (Ho et al. 2020 Algorithm 2): returned unchanged."""
        return sample

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        """Choose the sampling timesteps: a spacing of Lin et al. 2023 Table 2, or a custom descending list."""
        num_train = self.config.num_train_timesteps
        if timesteps is not None:
            if num_inference_steps is not None:
                raise ConfigError("DDPMScheduler.set_timesteps: pass num_inference_steps or timesteps, not both")
            schedule = self._custom_schedule(timesteps)
            self.custom_timesteps = True
        else:
            if num_inference_steps is None:
                raise ConfigError("DDPMScheduler.set_timesteps: pass num_inference_steps or timesteps")
            num_inference_steps = check_num_inference_steps("DDPMScheduler", num_inference_steps, num_train)
            schedule = training_timesteps(
                "DDPMScheduler",
                self.config.timestep_spacing,
                num_train,
                num_inference_steps,
                self.config.steps_offset,
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
        """Precompute, for every step, the posterior coefficients of Ho et al. 2020 eq. 7 as Python floats."""
        previous = np.append(schedule[1:], -1)  # the step after the last one lands on "t = -1": abar = 1
        alpha_bar = self.alphas_cumprod[torch.from_numpy(schedule)]
        alpha_bar_prev = alpha_bars_at(self.alphas_cumprod, previous, torch.tensor(1.0))
        beta_bar = 1 - alpha_bar
        beta_bar_prev = 1 - alpha_bar_prev
        step_alpha = alpha_bar / alpha_bar_prev
        step_beta = 1 - step_alpha
        # Posterior variance beta-tilde (eq. 7), clamped like diffusers before any log.
        posterior_variance = torch.clamp((1 - alpha_bar_prev) / (1 - alpha_bar) * step_beta, min=1e-20)

        self._sqrt_alpha_bar = (alpha_bar**0.5).tolist()
        self._sqrt_beta_bar = (beta_bar**0.5).tolist()
        self._x0_coeff = ((alpha_bar_prev**0.5 * step_beta) / beta_bar).tolist()
        self._xt_coeff = (step_alpha**0.5 * beta_bar_prev / beta_bar).tolist()
        self._adds_noise = (schedule > 0).tolist()  # diffusers adds no noise on the step from t = 0
        variance_type = self.config.variance_type
        if variance_type == "fixed_small":
            self._noise_std = (posterior_variance**0.5).tolist()
        elif variance_type == "fixed_small_log":
            self._noise_std = torch.exp(0.5 * torch.log(posterior_variance)).tolist()
        elif variance_type == "fixed_large":
            self._noise_std = (step_beta**0.5).tolist()
        elif variance_type == "fixed_large_log":
            # diffusers quirk, matched: the *log* of beta_t is used as a variance, so its square root is NaN.
            self._noise_std = (torch.log(step_beta) ** 0.5).tolist()
        else:  # learned variances interpolate in log space (Nichol & Dhariwal 2021 eq. 15)
            self._min_log = torch.log(posterior_variance).tolist()
            self._max_log = torch.log(step_beta).tolist()
        self.timesteps = torch.from_numpy(schedule).to(device)
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
        i = self._current_step_index()
        check_step_index("DDPMScheduler", i, len(self._x0_coeff))
        config = self.config

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
        if config.prediction_type == "epsilon":
            x0 = (sample - self._sqrt_beta_bar[i] * model_output) / self._sqrt_alpha_bar[i]
        elif config.prediction_type == "sample":
            x0 = model_output
        else:
            x0 = self._sqrt_alpha_bar[i] * sample - self._sqrt_beta_bar[i] * model_output

        # 3. keep x0_hat in range: dynamic thresholding (Imagen sec. 2.3) or plain clipping
        if config.thresholding:
            x0 = dynamic_threshold(x0, config.dynamic_thresholding_ratio, config.sample_max_value)
        elif config.clip_sample:
            x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)

        # 4. posterior mean mu_t(x_t, x0_hat) (eq. 7)
        prev_sample = self._x0_coeff[i] * x0 + self._xt_coeff[i] * sample

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
                prev_sample = prev_sample + self._noise_std[i] * noise

        self._step_index = i + 1
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward diffusion q(x_t | x_0), Ho et al. 2020 eq. 4."""
        return add_noise_vp(self.alphas_cumprod, original_samples, noise, timesteps)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction training target, Salimans & Ho 2022 sec. 4."""
        return velocity_vp(self.alphas_cumprod, sample, noise, timesteps)
