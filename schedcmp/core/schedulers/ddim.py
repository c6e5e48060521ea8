"""DDIM: Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models" (arXiv:2010.02502).

The non-Markovian generalisation of DDPM: eta = 0 gives the deterministic DDIM sampler, eta = 1 the DDPM
ancestral one. Zero-terminal-SNR rescaling follows Lin et al. 2023 (arXiv:2305.08891).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch

from ..configuration import Fraction, NonNegativeInt, PositiveFloat, PositiveInt, register_to_config
from ..errors import ConfigError
from .base import SchedulerOutput, randn_tensor
from .schedules import Beta, BetaSchedule, TrainedBetas, make_betas
from .vp import PredictionType, VPScheduler, alpha_bars_at, check_thresholding, predicted_x0, training_timesteps


class DDIMScheduler(VPScheduler):
    """DDIM sampling (Song et al. 2021 eq. 12) with optional stochasticity ``eta`` given to ``step``.

    Per-step coefficients are computed in float32 by ``set_timesteps`` (and once per new ``eta``) exactly as
    diffusers computes them, and kept as Python floats.
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
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: NonNegativeInt = 0,
        prediction_type: PredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: Fraction = 0.995,
        clip_sample_range: PositiveFloat = 1.0,
        sample_max_value: PositiveFloat = 1.0,
        timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading",
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        check_thresholding("DDIMScheduler", thresholding, dynamic_thresholding_ratio)
        betas = make_betas(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )
        self._set_training_schedule(betas)
        # The alpha-bar "before" t = 0, used by the last step (Song et al. 2021 set it to 1).
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)

    @property
    def is_stochastic(self) -> bool:
        """False: randomness comes only from the ``eta`` argument of ``step`` (0 by default)."""
        return False

    def draws_noise(self, step_options: Mapping[str, Any] | None = None) -> bool:
        """True when ``eta > 0`` mixes fresh noise into every step (Song et al. 2021 eq. 16)."""
        return float((step_options or {}).get("eta", 0.0)) > 0

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose the sub-sequence tau of training timesteps (Song et al. 2021 sec. 4.2; Lin et al. 2023 Table 2)."""
        config = self.config
        num_train = config.num_train_timesteps
        num_inference_steps = self._checked_steps(num_inference_steps, num_train)
        schedule = training_timesteps(
            "DDIMScheduler", config.timestep_spacing, num_train, num_inference_steps, config.steps_offset
        )
        # diffusers quirk, matched: the previous timestep is always t - T // n, whatever the spacing.
        previous = schedule - num_train // num_inference_steps
        alpha_bar = self.alphas_cumprod[torch.from_numpy(schedule)]
        alpha_bar_prev = alpha_bars_at(self.alphas_cumprod, previous, self.final_alpha_cumprod)
        beta_bar = 1 - alpha_bar
        self._alpha_bar_prev = alpha_bar_prev
        # sigma_t^2 / eta^2 (eq. 16)
        self._variance = ((1 - alpha_bar_prev) / beta_bar) * (1 - alpha_bar / alpha_bar_prev)
        self._sqrt_alpha_bar = (alpha_bar**0.5).tolist()
        self._sqrt_beta_bar = (beta_bar**0.5).tolist()
        self._sqrt_alpha_bar_prev = (alpha_bar_prev**0.5).tolist()
        self._eta_coeffs: dict[float, tuple[list[float], list[float]]] = {}
        self._eta_coefficients(0.0)
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(schedule).to(device)
        self._snapshot_options(config)
        self._reset_step_counter()

    def _eta_coefficients(self, eta: float) -> tuple[list[float], list[float]]:
        """Per-step sigma_t (eq. 16) and sqrt(1 - abar_prev - sigma_t^2) (eq. 12), once per schedule and eta."""
        coeffs = self._eta_coeffs.get(eta)
        if coeffs is None:
            std = eta * self._variance**0.5
            direction = (1 - self._alpha_bar_prev - std**2) ** 0.5
            coeffs = self._eta_coeffs[eta] = (std.tolist(), direction.tolist())
        return coeffs

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One generalised DDIM step x_t -> x_{t-1}, Song et al. 2021 eq. 12 with sigma_t of eq. 16."""
        # Notation (Song et al. 2021, whose "alpha_t" is our abar_t):
        #   abar_t, abar_prev  alpha-bar at t and at t - T // n (``final_alpha_cumprod`` past the end)
        #   x0_hat, eps_hat    the model's estimates of x_0 and of the noise in x_t
        #   sigma_t            eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)
        i = self._step_in_schedule(self.num_inference_steps)
        config = self._options
        kind = config.prediction_type
        sqrt_alpha_bar, sqrt_beta_bar = self._sqrt_alpha_bar[i], self._sqrt_beta_bar[i]

        # 1. x0_hat and eps_hat from the model output ("predicted x_0" of eq. 12; v: Salimans & Ho 2022)
        x0 = predicted_x0(kind, model_output, sample, sqrt_alpha_bar, sqrt_beta_bar)
        if kind == "epsilon":
            eps = model_output
        elif kind == "sample":
            eps = (sample - sqrt_alpha_bar * x0) / sqrt_beta_bar
        else:
            eps = sqrt_alpha_bar * model_output + sqrt_beta_bar * sample

        # 2. keep x0_hat in range: dynamic thresholding (Imagen sec. 2.3) or plain clipping
        x0 = self._bounded_x0(x0, config)

        # 3. sigma_t (eq. 16) and the weight of the direction term, precomputed per eta
        std, direction = self._eta_coefficients(eta)

        # 4. re-derive eps_hat from the clipped x0_hat if asked (as in the Glide / DDIM reference code)
        if use_clipped_model_output:
            eps = (sample - sqrt_alpha_bar * x0) / sqrt_beta_bar

        # 5-6. "direction pointing to x_t" plus the rescaled "predicted x_0" (eq. 12)
        prev_sample = self._sqrt_alpha_bar_prev[i] * x0 + direction[i] * eps

        # 7. "random noise" sigma_t z (eq. 12) when eta > 0
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ConfigError("DDIMScheduler.step: pass generator or variance_noise, not both")
            if variance_noise is None:
                variance_noise = randn_tensor(
                    model_output.shape, generator, device=model_output.device, dtype=model_output.dtype
                )
            prev_sample = prev_sample + std[i] * variance_noise

        return self._finish_step(i, prev_sample, x0, return_dict)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction training target, Salimans & Ho 2022 sec. 4."""
        return self._velocity(sample, noise, timesteps)
