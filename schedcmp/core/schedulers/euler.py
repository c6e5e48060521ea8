"""Euler sampler on the probability-flow ODE in sigma space, with optional churn.

Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"
(arXiv:2206.00364), Algorithm 2 without the Heun correction; k-diffusion's ``sample_euler``. This module also
holds the sigma-space helpers the other k-diffusion-style schedulers of the family share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..configuration import register_to_config
from ..errors import ConfigError
from .base import SchedulerMixin, SchedulerOutput, randn_tensor
from .schedules import (
    BetaSchedule,
    TimestepSpacing,
    beta_sigmas,
    check_num_inference_steps,
    exponential_sigmas,
    karras_sigmas,
    make_betas,
    sigma_to_t,
    spaced_timesteps,
)


def train_alphas_cumprod(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: Sequence[float] | None,
    rescale_betas_zero_snr: bool = False,
) -> torch.Tensor:
    """alpha-bar_t of the training schedule (Ho et al. 2020 eq. 4), float32.

    With zero-terminal-SNR rescaling the last value becomes 2**-24 instead of 0, as diffusers does, so the
    largest sigma stays finite (about 4096).
    """
    betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    if rescale_betas_zero_snr:
        alphas_cumprod[-1] = 2**-24
    return alphas_cumprod


def train_sigmas(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """sigma_t = sqrt((1 - abar_t) / abar_t) per training step, in diffusers' float32 torch arithmetic (ascending)."""
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).numpy()


def check_sigma_schedule_choice(owner: str, karras: bool, exponential: bool, beta: bool) -> None:
    """Refuse more than one of use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas."""
    flags = {"use_karras_sigmas": karras, "use_exponential_sigmas": exponential, "use_beta_sigmas": beta}
    chosen = [k for k, v in flags.items() if v]
    if len(chosen) > 1:
        raise ConfigError(
            f"{owner}: only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas may be true; "
            f"got {' and '.join(f'{k}=True' for k in chosen)}"
        )


def respaced_sigmas(kind: str, sigma_min: float, sigma_max: float, num_inference_steps: int) -> np.ndarray:
    """Karras (eq. 5, rho = 7), exponential or Beta(0.6, 0.6) noise levels between sigma_max and sigma_min."""
    if kind == "karras":
        return karras_sigmas(sigma_min, sigma_max, num_inference_steps)
    if kind == "exponential":
        return exponential_sigmas(sigma_min, sigma_max, num_inference_steps)
    return beta_sigmas(sigma_min, sigma_max, num_inference_steps)


def index_for_timestep(schedule: torch.Tensor, timestep: float | torch.Tensor) -> int:
    """Position of ``timestep`` in ``schedule``; the second match when it repeats (diffusers' img2img rule)."""
    indices = (schedule == timestep).nonzero()
    return int(indices[1 if len(indices) > 1 else 0].item())


def add_noise_by_sigma(
    scheduler: SchedulerMixin, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """Forward process in sigma space, x = x0 + sigma * noise (Karras et al. 2022 eq. 1), as diffusers indexes it."""
    sigmas = scheduler.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
    timesteps = timesteps.to(original_samples.device)
    if scheduler.begin_index is None:
        schedule = scheduler.timesteps.to(original_samples.device)
        indices = [index_for_timestep(schedule, t) for t in timesteps]
    else:
        indices = [scheduler.step_index if scheduler.step_index is not None else scheduler.begin_index]
        indices *= timesteps.shape[0]
    sigma = sigmas[indices].flatten()
    sigma = sigma.reshape(-1, *([1] * (original_samples.ndim - 1)))  # [B] -> [B, 1, ..., 1]
    return original_samples + noise * sigma


@dataclass(frozen=True)
class ChurnTable:
    """Per-step Python floats of Karras et al. 2022 Algorithm 2 for one churn setting (one entry per step).

    ``sigma_hat`` is the raised noise level, ``dt = sigma_{i+1} - sigma_hat`` and ``noise`` the std of the churn
    noise added first (0: no noise is drawn). All are diffusers' float32 values, exactly.
    """

    sigma_hat: list[float]
    dt: list[float]
    noise: list[float]

    @classmethod
    def build(cls, sigmas: torch.Tensor, s_churn: float, s_tmin: float, s_tmax: float) -> ChurnTable:
        """Alg. 2 lines 4-5 for every step at once, in diffusers' float32 arithmetic."""
        sigma, sigma_next = sigmas[:-1], sigmas[1:]
        gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1)
        # diffusers compares the float32 sigma with the Python bounds, so the bounds round to float32 too.
        in_range = (sigma >= s_tmin) & (sigma <= s_tmax)
        sigma_hat = torch.where(in_range, sigma * (gamma + 1), sigma)
        noise = torch.where(in_range, (sigma_hat**2 - sigma**2) ** 0.5, 0.0) if gamma > 0 else torch.zeros_like(sigma)
        return cls(sigma_hat.tolist(), (sigma_next - sigma_hat).tolist(), noise.tolist())


class ChurnTables:
    """ChurnTable per (s_churn, s_tmin, s_tmax) of one schedule: the no-churn one up front, others on first use."""

    def __init__(self, sigmas: torch.Tensor):
        self.sigmas = sigmas
        self.tables: dict[tuple[float, float, float], ChurnTable] = {}
        self.get_table(0.0, 0.0, float("inf"))

    def get_table(self, s_churn: float, s_tmin: float, s_tmax: float) -> ChurnTable:
        """The table of one churn setting (a dict lookup after its first use)."""
        key = (s_churn, s_tmin, s_tmax)
        table = self.tables.get(key)
        if table is None:
            table = self.tables[key] = ChurnTable.build(self.sigmas, *key)
        return table


class EulerDiscreteScheduler(SchedulerMixin):
    """Euler steps on sigma = sqrt((1 - abar) / abar), optionally churned (Karras et al. 2022 Alg. 2).

    ``step`` and ``scale_model_input`` follow the schedule by the step counter: their ``timestep`` argument is
    accepted for diffusers' contract and ignored. Per-step coefficients are Python floats computed in
    ``set_timesteps``, so a step makes no host-device synchronisation.
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
        prediction_type: Literal["epsilon", "sample", "v_prediction", "original_sample"] = "epsilon",
        interpolation_type: Literal["linear", "log_linear"] = "linear",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: TimestepSpacing = "linspace",
        timestep_type: Literal["discrete", "continuous"] = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
    ) -> None:
        check_sigma_schedule_choice(type(self).__name__, use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)
        self.alphas_cumprod = train_alphas_cumprod(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )
        self.num_inference_steps: int | None = None
        # Before set_timesteps: every training step, sigma_max first, then a final 0 (diffusers' initial state).
        sigmas = torch.from_numpy(train_sigmas(self.alphas_cumprod)).flip(0)
        timesteps = torch.from_numpy(np.linspace(0, num_train_timesteps - 1, num_train_timesteps)[::-1].copy())
        self._install(torch.cat([sigmas, torch.zeros(1)]), timesteps.float(), None)

    @property
    def is_stochastic(self) -> bool:
        """False: Euler is deterministic unless ``step`` is given ``s_churn > 0``."""
        return False

    @property
    def _continuous_v(self) -> bool:
        return self.config.timestep_type == "continuous" and self.config.prediction_type == "v_prediction"

    def _install(self, sigmas: torch.Tensor, timesteps: torch.Tensor, device: torch.device | str | None) -> None:
        """Keep the float32 CPU sigmas, place the timesteps and precompute every per-step Python float."""
        self.sigmas = sigmas
        if self._continuous_v:
            timesteps = 0.25 * sigmas[:-1].log()  # c_noise of Karras et al. 2022 Table 1
        self.timesteps = timesteps.to(device)
        max_sigma = sigmas.max()
        if self.config.timestep_spacing not in ("linspace", "trailing"):
            max_sigma = (max_sigma**2 + 1) ** 0.5
        self.init_noise_sigma = max_sigma.item()
        self._input_scale = ((sigmas**2 + 1) ** 0.5).tolist()
        # v-prediction's x0 = out * c_out + x / c_den, with diffusers' float32 factors of the un-churned sigma.
        self._c_out = (-sigmas / (sigmas**2 + 1) ** 0.5).tolist()
        self._c_den = (sigmas**2 + 1).tolist()
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
            for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
                if config[key]:
                    raise ConfigError(f"{name}.set_timesteps: custom timesteps cannot be used with {key}=True")
            if self._continuous_v:
                raise ConfigError(
                    f"{name}.set_timesteps: custom timesteps cannot be used with timestep_type='continuous' "
                    "and prediction_type='v_prediction'; pass sigmas instead"
                )
        train = train_sigmas(self.alphas_cumprod)  # float32, ascending in t
        log_train = np.log(train)

        if sigmas is not None:
            if len(sigmas) < 2:
                raise ConfigError(f"{name}.set_timesteps: sigmas needs at least 2 values (the last is the end)")
            self.num_inference_steps = len(sigmas) - 1
            sigma_arr = np.array(sigmas).astype(np.float32)
            timestep_arr = sigma_to_t(sigma_arr[:-1], log_train)
        else:
            if timesteps is not None:
                n = len(timesteps)
                timestep_arr = np.array(timesteps).astype(np.float32)
            else:
                n = check_num_inference_steps(name, num_inference_steps, config.num_train_timesteps)
                spacing = spaced_timesteps(config.timestep_spacing, config.num_train_timesteps, n, config.steps_offset)
                timestep_arr = spacing.astype(np.float32)
            self.num_inference_steps = n
            if config.interpolation_type == "linear":
                sigma_arr = np.interp(timestep_arr, np.arange(len(train)), train)
            else:
                # log_linear: n + 1 log-spaced sigmas, then the final one: the last step ends at the smallest
                # training sigma and the final sigma is never reached (diffusers' quirk, kept).
                sigma_arr = torch.linspace(log_train[-1], log_train[0], n + 1).exp().numpy()
            kind = next((k for k in ("karras", "exponential", "beta") if config[f"use_{k}_sigmas"]), None)
            if kind is not None:
                lo = config.sigma_min if config.sigma_min is not None else sigma_arr[-1].item()
                hi = config.sigma_max if config.sigma_max is not None else sigma_arr[0].item()
                sigma_arr = respaced_sigmas(kind, lo, hi, n)
                timestep_arr = sigma_to_t(sigma_arr, log_train)
            if config.final_sigmas_type == "sigma_min":
                last = ((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5
            else:
                last = 0.0
            sigma_arr = np.concatenate([sigma_arr, [float(last)]]).astype(np.float32)
        self._install(torch.from_numpy(sigma_arr), torch.from_numpy(timestep_arr.astype(np.float32)), device)

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Divide by sqrt(sigma^2 + 1): the VP model's input scale (Karras et al. 2022 Table 1, c_in)."""
        return sample / self._input_scale[self._current_step_index()]

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
        sigma_hat, kind = table.sigma_hat[i], self.config.prediction_type
        sample = sample.to(torch.float32)

        # 1. churn: x^ = x + sqrt(sigma^2 - sigma_i^2) * s_noise * eps (Alg. 2 lines 5-6)
        if table.noise[i] > 0:
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            sample = sample + (noise * s_noise) * table.noise[i]

        # 2. x0 from the model output: eps, v (Salimans & Ho 2022 sec. 4; diffusers uses the un-churned
        #    sigma there, matched) or x0 itself
        if kind == "epsilon":
            pred_original_sample = sample - sigma_hat * model_output
        elif kind == "v_prediction":
            pred_original_sample = model_output * self._c_out[i] + sample / self._c_den[i]
        else:
            pred_original_sample = model_output

        # 3. Euler step x_{i+1} = x^ + (sigma_{i+1} - sigma^) d, d = (x^ - x0) / sigma^ (Alg. 2 lines 7-8, eq. 3);
        #    kept in diffusers' operation order, whose float32 rounding matters when sigma_max is large
        derivative = (sample - pred_original_sample) / sigma_hat
        prev_sample = (sample + derivative * table.dt[i]).to(model_output.dtype)

        self._step_index = i + 1
        if not return_dict:
            return prev_sample, pred_original_sample
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = x0 + sigma_t * noise (Karras et al. 2022 eq. 1) at the sigmas of ``timesteps``."""
        return add_noise_by_sigma(self, original_samples, noise, timesteps)
