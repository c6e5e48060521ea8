"""Heun's second-order sampler on the probability-flow ODE in sigma space.

Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"
(arXiv:2206.00364), Algorithm 1 (deterministic, gamma = 0); k-diffusion's ``sample_heun``. This module also holds
the discrete sigma schedule the second-order k-diffusion schedulers (Heun, KDPM2, DPM-Solver SDE) share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from ..configuration import register_to_config
from ..errors import ConfigError
from .base import SchedulerMixin, SchedulerOutput
from .euler import add_noise_by_sigma, check_sigma_schedule_choice, respaced_sigmas, train_sigmas
from .schedules import TimestepSpacing, check_num_inference_steps, make_betas, sigma_to_t, spaced_timesteps


def exp_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Betas discretising alpha-bar(t) = exp(-12 t), diffusers' "exp" schedule (each is 1 - exp(-12 / T))."""
    betas = [
        min(1 - math.exp((i + 1) / num_train_timesteps * -12.0) / math.exp(i / num_train_timesteps * -12.0), max_beta)
        for i in range(num_train_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float32)


def sigma_schedule(
    config: Mapping[str, Any],
    alphas_cumprod: torch.Tensor,
    num_inference_steps: int,
    num_train_timesteps: int,
    timesteps_dtype: type[np.floating],
    timesteps: Sequence[float] | None = None,
    round_karras: bool = False,
    respace: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Timesteps, their sigmas (no final 0) and the training log-sigmas, in diffusers' k-diffusion arithmetic.

    Spaced (Lin et al. 2023 Table 2) or custom timesteps in ``timesteps_dtype`` are mapped to sigma by linear
    interpolation; with ``respace`` a Karras / exponential / beta schedule replaces them, its timesteps found by
    log-sigma interpolation (rounded for Karras when ``round_karras``, a KDPM2 quirk of diffusers).
    """
    train = train_sigmas(alphas_cumprod)  # float32, ascending in t
    log_train = np.log(train)
    if timesteps is None:
        spacing = spaced_timesteps(
            config["timestep_spacing"], num_train_timesteps, num_inference_steps, config["steps_offset"]
        )
        timestep_arr = spacing.astype(timesteps_dtype)
    else:
        timestep_arr = np.array(timesteps, dtype=np.float32)
    sigmas = np.interp(timestep_arr, np.arange(len(train)), train)
    kind = next((k for k in ("karras", "exponential", "beta") if config[f"use_{k}_sigmas"]), None)
    if kind is not None and respace:
        sigmas = respaced_sigmas(kind, sigmas[-1].item(), sigmas[0].item(), num_inference_steps)
        timestep_arr = sigma_to_t(sigmas, log_train)
        if kind == "karras" and round_karras:
            timestep_arr = timestep_arr.round()
    return timestep_arr, sigmas, log_train


def init_noise_sigma_of(sigmas: torch.Tensor, timestep_spacing: str) -> float:
    """Std of the initial noise: sigma_max, or sqrt(sigma_max^2 + 1) for "leading" spacing (diffusers' rule)."""
    sigma_max = sigmas.max()
    if timestep_spacing not in ("linspace", "trailing"):
        sigma_max = (sigma_max**2 + 1) ** 0.5
    return sigma_max.item()


def checked_step_count(owner: str, num_inference_steps: object, num_train_timesteps: int | None, config: Any) -> int:
    """``num_inference_steps`` validated against the training steps in force (``set_timesteps``' argument)."""
    return check_num_inference_steps(owner, num_inference_steps, num_train_timesteps or config.num_train_timesteps)


class HeunDiscreteScheduler(SchedulerMixin):
    """Heun's method (Karras et al. 2022 Alg. 1) on sigma = sqrt((1 - abar) / abar): two model calls per step.

    ``timesteps`` interleaves the two stages (t_0, t_1, t_1, t_2, t_2, ...): even counter positions run the Euler
    predictor, odd ones the trapezoidal corrector, so a loop over ``timesteps`` calling ``step`` each time is a
    full Heun solve. ``step`` and ``scale_model_input`` follow the schedule by the step counter: their
    ``timestep`` argument is accepted for diffusers' contract and ignored. Every per-step coefficient is a Python
    float computed in ``set_timesteps``, so a step makes no host-device synchronisation.
    """

    order = 2

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "exp"] = "linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: TimestepSpacing = "linspace",
        steps_offset: int = 0,
    ) -> None:
        check_sigma_schedule_choice(type(self).__name__, use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)
        if beta_schedule == "exp" and trained_betas is None:
            betas = exp_betas(num_train_timesteps)
        else:
            betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self._stage_sample: torch.Tensor | None = None
        self._stage_derivative: torch.Tensor | None = None
        # Initial state: every training step (diffusers also respaces it here; skipped, set_timesteps does it).
        self._build(num_train_timesteps, None, num_train_timesteps, None, respace=False)

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
            for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
                if self.config[key]:
                    raise ConfigError(f"{name}.set_timesteps: custom timesteps cannot be used with {key}=True")
            if len(timesteps) == 0:
                raise ConfigError(f"{name}.set_timesteps: timesteps must not be empty")
            num_inference_steps = len(timesteps)
        else:
            num_inference_steps = checked_step_count(name, num_inference_steps, num_train_timesteps, self.config)
        self._build(num_inference_steps, device, num_train_timesteps, timesteps, respace=True)

    def _build(
        self,
        n: int,
        device: str | torch.device | None,
        num_train_timesteps: int | None,
        custom: Sequence[float] | None,
        respace: bool,
    ) -> None:
        self.num_inference_steps = n
        timesteps, sigmas, _ = sigma_schedule(
            self.config,
            self.alphas_cumprod,
            n,
            num_train_timesteps or self.config.num_train_timesteps,
            np.float32,
            custom,
            respace=respace,
        )
        base = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))  # [n + 1]
        # [s_0, s_1, s_1, ..., s_{n-1}, s_{n-1}, 0]: [2n]; timesteps [t_0, t_1, t_1, ...]: [2n - 1]
        self.sigmas = torch.cat([base[:1], base[1:-1].repeat_interleave(2), base[-1:]])
        timesteps = torch.from_numpy(np.asarray(timesteps))
        self.timesteps = torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)]).to(device, torch.float32)
        self.init_noise_sigma = init_noise_sigma_of(self.sigmas, self.config.timestep_spacing)

        # Per counter position i: the step runs from sigma to sigma_next, both stages of one step sharing them.
        index = torch.arange(2 * n - 1)
        start = index - index % 2
        sigma, sigma_next = self.sigmas[start], self.sigmas[start + 1]
        # the x0 / slope noise level: sigma at the predictor, sigma_next at the corrector
        sigma_x0 = torch.where(index % 2 == 0, sigma, sigma_next)
        self._input_scale = ((self.sigmas[index] ** 2 + 1) ** 0.5).tolist()
        self._sigma_x0 = sigma_x0.tolist()
        self._c_out = (-sigma_x0 / (sigma_x0**2 + 1) ** 0.5).tolist()
        self._c_den = (sigma_x0**2 + 1).tolist()
        self._dt = (sigma_next - sigma).tolist()
        self._stage_sample = self._stage_derivative = None
        self._reset_step_counter()

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Divide by sqrt(sigma^2 + 1): the VP model's input scale (Karras et al. 2022 Table 1, c_in)."""
        return sample / self._input_scale[self._current_step_index()]

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
        sigma_x0, kind = self._sigma_x0[i], self.config.prediction_type

        # 1. x0 from the model output: eps, v (Salimans & Ho 2022 sec. 4) or x0 itself
        if kind == "epsilon":
            pred_original_sample = sample - sigma_x0 * model_output
        elif kind == "v_prediction":
            pred_original_sample = model_output * self._c_out[i] + sample / self._c_den[i]
        else:
            pred_original_sample = model_output
        if self.config.clip_sample:
            limit = self.config.clip_sample_range
            pred_original_sample = pred_original_sample.clamp(-limit, limit)

        derivative = (sample - pred_original_sample) / sigma_x0
        if i % 2 == 0:
            # 2. predictor: d_i at s, Euler x'_{i+1} = x_i + (s' - s) d_i (Alg. 1 lines 4-5); keep x_i, d_i
            self._stage_sample, self._stage_derivative = sample, derivative
        else:
            # 3. corrector: x_{i+1} = x_i + (s' - s) (d_i + d') / 2 (Alg. 1 lines 7-8)
            if self._stage_sample is None or self._stage_derivative is None:
                raise RuntimeError(f"{type(self).__name__}: a corrector step needs its predictor (begin_index is odd)")
            derivative = (self._stage_derivative + derivative) / 2
            sample = self._stage_sample
            self._stage_sample = self._stage_derivative = None
        prev_sample = sample + derivative * self._dt[i]

        self._step_index = i + 1
        if not return_dict:
            return prev_sample, pred_original_sample
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = x0 + sigma_t * noise (Karras et al. 2022 eq. 1) at the sigmas of ``timesteps``."""
        return add_noise_by_sigma(self, original_samples, noise, timesteps)
