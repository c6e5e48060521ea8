"""DPM-Solver-2 on sigma: an Euler half step to a log-midpoint noise level, then a full step with its slope.

Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"
(arXiv:2206.00364), Algorithm 1 with the second-order update of Lu et al. 2022, "DPM-Solver" (arXiv:2206.00927)
as k-diffusion's ``sample_dpm_2`` writes it: the midpoint is the geometric mean of sigma_i and sigma_{i+1}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from ..configuration import register_to_config
from .base import SchedulerMixin, SchedulerOutput
from .euler import add_noise_by_sigma, check_sigma_schedule_choice
from .heun import checked_step_count, init_noise_sigma_of, sigma_schedule
from .schedules import BetaSchedule, TimestepSpacing, make_betas


def repeat_inner(values: torch.Tensor) -> torch.Tensor:
    """[v_0, v_1, ..., v_n] -> [v_0, v_1, v_1, ..., v_n, v_n, v_n]: diffusers' per-stage layout of KDPM2 tables."""
    return torch.cat([values[:1], values[1:].repeat_interleave(2), values[-1:]])


def sigma_to_t_float32(sigmas: torch.Tensor, log_sigmas: np.ndarray) -> torch.Tensor:
    """Fractional timestep of each sigma by log-sigma interpolation, all in float32 as diffusers' KDPM2 does it.

    diffusers feeds torch tensors to its numpy-written conversion here, so everything but the two logarithms
    runs in float32 torch arithmetic; matched so the midpoint timesteps agree bit for bit.
    """
    log_sigma = torch.from_numpy(np.log(np.maximum(sigmas.numpy(), 1e-10)))  # [m]
    log_train = torch.from_numpy(log_sigmas)  # [T]
    dists = log_sigma - log_train[:, None]  # [T, m]
    low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_train.shape[0] - 2)  # [m]
    low_value, high_value = log_train[low], log_train[low + 1]
    w = ((low_value - log_sigma) / (low_value - high_value)).clamp(0, 1)
    return (1 - w) * low + w * (low + 1)


class KDPM2DiscreteScheduler(SchedulerMixin):
    """DPM-Solver-2 (k-diffusion ``sample_dpm_2``) on sigma = sqrt((1 - abar) / abar): two model calls per step.

    ``timesteps`` interleaves the two stages (t_0, t_mid_0, t_1, t_mid_1, ...): even counter positions take the
    Euler half step to the midpoint noise level, odd ones the full step with the midpoint slope. ``step`` and
    ``scale_model_input`` follow the schedule by the step counter: their ``timestep`` argument is accepted for
    diffusers' contract and ignored. Every per-step coefficient is a Python float computed in ``set_timesteps``,
    so a step makes no host-device synchronisation.
    """

    order = 2

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: Sequence[float] | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
        timestep_spacing: TimestepSpacing = "linspace",
        steps_offset: int = 0,
    ) -> None:
        # prediction_type "sample" is refused here: diffusers accepts it but raises NotImplementedError in step.
        check_sigma_schedule_choice(type(self).__name__, use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)
        betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self._stage_sample: torch.Tensor | None = None
        # Initial state: every training step (diffusers also respaces it here; skipped, set_timesteps does it).
        self._build(num_train_timesteps, None, num_train_timesteps, respace=False)

    @property
    def is_stochastic(self) -> bool:
        """False: DPM-Solver-2 is deterministic."""
        return False

    def set_timesteps(
        self,
        num_inference_steps: int,
        device: str | torch.device | None = None,
        num_train_timesteps: int | None = None,
    ) -> None:
        """Spaced timesteps (Lin et al. 2023 Table 2) with the log-midpoint of each step interleaved."""
        n = checked_step_count(type(self).__name__, num_inference_steps, num_train_timesteps, self.config)
        self._build(n, device, num_train_timesteps, respace=True)

    def _build(self, n: int, device: str | torch.device | None, num_train_timesteps: int | None, respace: bool) -> None:
        self.num_inference_steps = n
        timesteps, sigmas, log_train = sigma_schedule(
            self.config,
            self.alphas_cumprod,
            n,
            num_train_timesteps or self.config.num_train_timesteps,
            np.float32,
            round_karras=True,
            respace=respace,
        )
        base = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))  # [n + 1]
        # midpoint sqrt(s_{k-1} s_k) as exp(lerp(log s_k, log s_{k-1}, 1/2)); entry 0 pairs s_0 with the final 0
        midpoints = base.log().lerp(base.roll(1).log(), 0.5).exp()  # [n + 1]
        self.sigmas, self.sigmas_interpol = repeat_inner(base), repeat_inner(midpoints)  # [2n + 2]
        timesteps = torch.from_numpy(timesteps)  # float32, float64 when respaced (diffusers' dtypes)
        mid_timesteps = sigma_to_t_float32(midpoints, log_train).to(timesteps.dtype)
        pairs = torch.stack([mid_timesteps[1:-1], timesteps[1:]], dim=1).flatten()  # [n - 1, 2] -> [2n - 2]
        self.timesteps = torch.cat([timesteps[:1], pairs]).to(device)
        self.init_noise_sigma = init_noise_sigma_of(self.sigmas, self.config.timestep_spacing)

        # Per counter position i: even -> half step from sigma to the midpoint, odd -> full step with its slope.
        index = torch.arange(2 * n - 1)
        first = index % 2 == 0
        sigma = self.sigmas[index - (~first).long()]
        sigma_mid = self.sigmas_interpol[index + first.long()]
        sigma_next = self.sigmas[index + first.long()]
        sigma_x0 = torch.where(first, sigma, sigma_mid)  # the noise level the model saw
        self._input_scale = ((torch.where(first, self.sigmas[index], sigma_mid) ** 2 + 1) ** 0.5).tolist()
        self._sigma_x0 = sigma_x0.tolist()
        self._c_out = (-sigma_x0 / (sigma_x0**2 + 1) ** 0.5).tolist()
        self._c_den = (sigma_x0**2 + 1).tolist()
        self._dt = torch.where(first, sigma_mid - sigma, sigma_next - sigma).tolist()
        self._stage_sample = None
        self._reset_step_counter()

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Divide by sqrt(sigma^2 + 1) at the stage's noise level (Karras et al. 2022 Table 1, c_in)."""
        return sample / self._input_scale[self._current_step_index()]

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
        sigma_x0 = self._sigma_x0[i]

        # 1. x0 from the model output: eps or v (Salimans & Ho 2022 sec. 4)
        if self.config.prediction_type == "epsilon":
            pred_original_sample = sample - sigma_x0 * model_output
        else:
            pred_original_sample = model_output * self._c_out[i] + sample / self._c_den[i]

        derivative = (sample - pred_original_sample) / sigma_x0
        if i % 2 == 0:
            # 2. first stage: d at s, x_mid = x_i + (s_mid - s) d; keep x_i for the second stage
            self._stage_sample = sample
        else:
            # 3. second stage: d_mid at s_mid, x_{i+1} = x_i + (s' - s) d_mid (the midpoint rule)
            if self._stage_sample is None:
                raise RuntimeError(f"{type(self).__name__}: a second stage needs its first stage (begin_index is odd)")
            sample, self._stage_sample = self._stage_sample, None
        prev_sample = sample + derivative * self._dt[i]

        self._step_index = i + 1
        if not return_dict:
            return prev_sample, pred_original_sample
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = x0 + sigma_t * noise (Karras et al. 2022 eq. 1) at the sigmas of ``timesteps``."""
        return add_noise_by_sigma(self, original_samples, noise, timesteps)
