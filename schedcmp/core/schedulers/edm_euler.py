"""Euler sampling in the EDM parametrisation, with optional churn.

Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"
(arXiv:2206.00364): the preconditioning c_in, c_skip, c_out, c_noise of Table 1, the sigma schedule of eq. 5
and Algorithm 2 without its Heun correction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from ..configuration import PositiveFloat, PositiveInt, register_to_config
from ..errors import ConfigError
from .base import Scalars, SchedulerMixin, SchedulerOutput, cast, step_scalars
from .schedules import check_num_inference_steps, karras_ramp
from .sigma_space import ChurnTables, SigmaScheduler


class EDMEulerScheduler(SigmaScheduler):
    """Euler steps for a model preconditioned as in Karras et al. 2022 Table 1 (EDM); timesteps are c_noise.

    Its noise levels come from the EDM config (sigma_min, sigma_max, rho), not from a DDPM training schedule; the
    preconditioning c_in, c_skip, c_out is computed per step (and per churn setting) as 0-dim tensors
    (see ``step_scalars``).
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        sigma_min: PositiveFloat = 0.002,
        sigma_max: PositiveFloat = 80.0,
        sigma_data: PositiveFloat = 0.5,
        sigma_schedule: Literal["karras", "exponential"] = "karras",
        num_train_timesteps: PositiveInt = 1000,
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
        rho: PositiveFloat = 7.0,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
    ) -> None:
        self.num_inference_steps: int | None = None
        # Before set_timesteps: num_train_timesteps + 1 noise levels (diffusers' initial state).
        ramp = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
        self._install(ramp, None)

    @classmethod
    def compatible_classes(cls) -> list[type[SchedulerMixin]]:
        """Only this class, as in diffusers: an EDM config describes no DDPM training schedule to share."""
        return [cls]

    @property
    def is_stochastic(self) -> bool:
        """False: EDM Euler is deterministic unless ``step`` is given ``s_churn > 0``."""
        return False

    def draws_noise(self, step_options: Mapping[str, Any] | None = None) -> bool:
        """True when ``s_churn > 0`` raises the noise level with fresh noise (Karras et al. 2022 Alg. 2 line 5)."""
        return float((step_options or {}).get("s_churn", 0.0)) > 0

    @property
    def init_noise_sigma(self) -> float:
        """Std of the initial noise, sqrt(sigma_max^2 + 1) (diffusers' value for this scheduler)."""
        return (self.config.sigma_max**2 + 1) ** 0.5

    def _schedule(self, ramp: torch.Tensor) -> torch.Tensor:
        """Noise levels for ramp values in [0, 1]: eq. 5 (karras) or log-linear (exponential), float32."""
        config = self.config
        if config.sigma_schedule == "karras":
            sigmas = karras_ramp(ramp, config.sigma_min, config.sigma_max, config.rho)
        else:
            # diffusers' quirk: only the number of ramp values is used, spaced evenly in log-sigma in float32.
            log_min, log_max = math.log(config.sigma_min), math.log(config.sigma_max)
            sigmas = torch.linspace(log_min, log_max, len(ramp), dtype=torch.float32).exp().flip(0)
        return sigmas.to(torch.float32)

    def _install(self, ramp: torch.Tensor, device: torch.device | str | None) -> None:
        """Build sigmas and c_noise timesteps from a ramp and precompute every per-step coefficient."""
        sigmas = self._schedule(ramp)
        self.timesteps = (0.25 * torch.log(sigmas)).to(device)  # c_noise, Table 1
        last = sigmas[-1:] if self.config.final_sigmas_type == "sigma_min" else torch.zeros(1)
        self.sigmas = torch.cat([sigmas, last])
        self._input_scale = step_scalars(1 / ((self.sigmas**2 + self.config.sigma_data**2) ** 0.5))  # c_in
        self._tables = ChurnTables(self.sigmas)
        self._preconditioning: dict[tuple[float, float, float], tuple[Scalars, Scalars]] = {}
        self._reset_step_counter()

    def _c_skip_out(self, key: tuple[float, float, float], sigma_hat: Scalars) -> tuple[Scalars, Scalars]:
        """c_skip and c_out of Table 1 at each step's sigma_hat, in diffusers' float32 arithmetic (cached)."""
        cached = self._preconditioning.get(key)
        if cached is None:
            sigma, sigma_data = torch.stack(list(sigma_hat)), self.config.sigma_data
            c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
            sign = 1 if self.config.prediction_type == "epsilon" else -1
            c_out = sign * sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
            cached = self._preconditioning[key] = (step_scalars(c_skip), step_scalars(c_out))
        return cached

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: torch.Tensor | Sequence[float] | None = None,
    ) -> None:
        """The eq. 5 schedule over ``num_inference_steps`` (any count >= 1), or over a custom ramp.

        As in diffusers, ``sigmas`` are ramp positions in [0, 1] (0 = sigma_max, 1 = sigma_min) that the
        configured schedule maps to noise levels, not noise levels themselves.
        """
        name = type(self).__name__
        if sigmas is None:
            if num_inference_steps is None:
                raise ConfigError(f"{name}.set_timesteps: pass num_inference_steps or sigmas")
            num_inference_steps = check_num_inference_steps(name, num_inference_steps, maximum=None)
            ramp = torch.linspace(0, 1, num_inference_steps, dtype=torch.float64)
        else:
            ramp = torch.as_tensor(sigmas).to(torch.float64).reshape(-1)  # [n]
            if len(ramp) == 0:
                raise ConfigError(f"{name}.set_timesteps: sigmas must not be empty")
        self.num_inference_steps = num_inference_steps
        self._install(ramp, device)

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Multiply by c_in = 1 / sqrt(sigma^2 + sigma_data^2) (Karras et al. 2022 Table 1)."""
        return sample * self._input_scale[self._current_step_index()]

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
        pred_original_sample: torch.Tensor | None = None,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One Euler step from sigma_i to sigma_{i+1} (Karras et al. 2022 Algorithm 2, lines 4-8)."""
        # Notation (Karras et al. 2022):
        # x       -> sample, the current x_i at noise level sigma_i
        # gamma   -> churn, min(s_churn / N, sqrt(2) - 1) where s_tmin <= sigma_i <= s_tmax, else 0
        # sigma^  -> sigma_hat = (1 + gamma) sigma_i, the raised noise level
        # D       -> pred_original_sample = c_skip x^ + c_out F(x^), the denoiser (eq. 7), unless given
        # d       -> (x^ - D) / sigma^, the ODE slope dx/dsigma (eq. 3)
        i = self._current_step_index()
        key = (s_churn, s_tmin, s_tmax)
        table = self._tables.get_table(*key)
        sigma_hat = table.sigma_hat[i]

        # 1. churn: x^ = x + sqrt(sigma^2 - sigma_i^2) * s_noise * eps (Alg. 2 lines 5-6)
        sample = table.churn(i, sample, s_noise, model_output, generator)

        # 2. denoiser output D(x^; sigma^) = c_skip x^ + c_out F (eq. 7, Table 1)
        if pred_original_sample is None:
            c_skip, c_out = self._c_skip_out(key, table.sigma_hat)
            pred_original_sample = sample * c_skip[i] + model_output * c_out[i]

        # 3. Euler step x_{i+1} = x^ + (sigma_{i+1} - sigma^) d (Alg. 2 lines 7-8), diffusers' operations in its
        #    order, in place on the fresh slope tensor
        derivative = (sample - pred_original_sample).div_(sigma_hat)
        prev_sample = cast(derivative.mul_(table.dt[i]).add_(sample), model_output.dtype)
        return self._finish_step(i, prev_sample, pred_original_sample, return_dict)
