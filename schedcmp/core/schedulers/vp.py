"""What the schedulers on x_t of the VP process share: DDPM, DDIM, PNDM, DPM-Solver (both forms), DEIS and UniPC.

The variance-preserving process x_t = alpha_t x0 + sigma_t eps, alpha_t^2 + sigma_t^2 = 1 (Ho et al. 2020 eq. 4;
alpha_t^2 = abar_t): the model sees x_t itself, the initial noise is standard, ``add_noise`` is eq. 4 and x0 comes
back from an eps, x0 or v prediction (Salimans & Ho 2022 sec. 4). DDPM, DDIM and PNDM index alpha-bar by training
timestep (``VPScheduler``); the exponential-integrator solvers keep a sigma per schedule position and find
alpha_t, sigma_t from it (``VPSigmaScheduler``), on a noise-level grid built by ``vp_noise_levels``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import torch

from ..errors import ConfigError
from .base import SchedulerMixin
from .schedules import (
    alphas_cumprod_of,
    beta_sigmas,
    dynamic_threshold,
    exponential_sigmas,
    karras_sigmas,
    make_betas,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    spaced_timesteps,
    vp_alpha_sigma,
)

PredictionType = Literal["epsilon", "sample", "v_prediction"]
# The exponential-integrator solvers also take diffusers' flow-matching name (refused or handled per class).
SolverPredictionType = Literal["epsilon", "sample", "v_prediction", "flow_prediction"]


def predicted_x0(
    kind: str,
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_t: float | torch.Tensor,
    sigma_t: float | torch.Tensor,
    sigma: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """x0 from an eps prediction (x_t - sigma_t eps) / alpha_t, a v prediction alpha_t x_t - sigma_t v, or x0 itself.

    ``flow_prediction`` is diffusers' x_t - sigma v with the raw noise-to-signal ratio ``sigma``. The coefficients
    are Python floats or 0-dim tensors (see ``step_scalars``); they multiply from the right either way.
    """
    if kind == "epsilon":
        return (sample - model_output * sigma_t).div_(alpha_t)
    if kind == "sample":
        return model_output
    if kind == "v_prediction":
        return sample * alpha_t - model_output * sigma_t
    return sample - model_output * sigma


def check_thresholding(owner: str, thresholding: bool, ratio: float) -> None:
    """Refuse a dynamic-thresholding quantile outside [0, 1] when thresholding is on."""
    if thresholding and not 0 <= ratio <= 1:
        raise ConfigError(f"{owner}: dynamic_thresholding_ratio must be between 0 and 1, got {ratio!r}")


def reject_flow_options(owner: str, **options: tuple[object, object]) -> None:
    """Raise ConfigError for any flow-matching option set away from its default (given as (value, default))."""
    for key, (value, default) in options.items():
        if value != default:
            raise ConfigError(
                f"{owner}: {key}={value!r} is only used by flow-matching models, which are not supported by "
                f"schedcmp; leave it at {default!r}"
            )


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


def vp_noise_levels(
    config: Mapping[str, Any],
    alphas_cumprod: torch.Tensor,
    timesteps: np.ndarray,
    num_inference_steps: int,
    grid: str | None,
    *,
    round_grid: bool,
    final: Literal["zero", "training_min", "schedule_min"],
) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps, float32 sigmas + one final entry) of a VP solver: training sigmas at ``timesteps``, or a grid.

    ``grid`` is ``karras`` (Karras et al. 2022 eq. 5), ``lu`` (uniform in lambda, Lu et al. 2022's step
    schedule), ``exponential`` or ``beta`` over ``num_inference_steps`` points between ``config["sigma_min"]`` /
    ``["sigma_max"]`` when the config has them (diffusers reads these keys even for classes whose ``__init__``
    lacks them, e.g. DEIS built from a UniPC config) and the training extremes otherwise; its timesteps are read
    back from its sigmas, Karras / Lu ones rounded if ``round_grid`` (exponential / beta ones are truncated by the
    caller's int64 cast, as in diffusers). The final sigma is 0, the smallest training sigma (DPM-Solver), or the
    smallest of the schedule's grid if it has one and the smallest training sigma otherwise (DEIS, UniPC).
    """
    n = num_inference_steps
    train_sigmas = sigmas_from_alphas_cumprod(alphas_cumprod).numpy()  # float32, ascending in t
    if grid is None:
        sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
    else:
        log_sigmas = np.log(train_sigmas)
        sigma_min = config.get("sigma_min") if config.get("sigma_min") is not None else float(train_sigmas[0])
        sigma_max = config.get("sigma_max") if config.get("sigma_max") is not None else float(train_sigmas[-1])
        if grid == "karras":
            sigmas = karras_sigmas(sigma_min, sigma_max, n)
        elif grid == "lu":
            # uniform steps in log-sigma = -lambda between the training extremes
            lam_min, lam_max = float(log_sigmas[0]), float(log_sigmas[-1])
            sigmas = np.exp(lam_max + np.linspace(0, 1, n) * (lam_min - lam_max))
        elif grid == "exponential":
            sigmas = exponential_sigmas(sigma_min, sigma_max, n)
        else:
            sigmas = beta_sigmas(sigma_min, sigma_max, n)
        timesteps = sigma_to_t(sigmas, log_sigmas)
        if round_grid and grid in ("karras", "lu"):
            timesteps = timesteps.round()
    if final == "zero":
        last = 0.0
    elif final == "schedule_min" and grid is not None:
        last = sigmas[-1]
    else:
        last = float(train_sigmas[0])
    return timesteps, np.concatenate([sigmas, [last]]).astype(np.float32)


class VPScheduler(SchedulerMixin):
    """Base of the schedulers on x_t: no input scaling, unit initial noise, alpha-bar by training timestep.

    ``step`` reads the step counter (see ``SchedulerMixin``), never its ``timestep`` argument; every per-step
    coefficient is precomputed by ``set_timesteps``.
    """

    init_noise_sigma = 1.0
    num_inference_steps: int | None = None

    def _set_training_schedule(self, betas: torch.Tensor, zero_snr_floor: bool = False) -> None:
        """betas, alphas = 1 - betas and alpha-bar [T] (Ho et al. 2020 eq. 4; see ``alphas_cumprod_of``)."""
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = alphas_cumprod_of(betas, zero_snr_floor)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """The model input is x_t itself (VP parametrisation): returned unchanged."""
        return sample

    def _snapshot_options(self, config: Mapping[str, Any]) -> None:
        """Keep the config as plain attributes (``_options``) for ``step``, where a config lookup (~1 us) counts.

        Called last in ``set_timesteps`` (after any config change it makes), so ``step`` reads the config in force.
        """
        self._options = SimpleNamespace(**config)

    def _step_in_schedule(self, num_steps: int | None, past_end: type[Exception] = ConfigError) -> int:
        """The index of this ``step`` in a schedule of ``num_steps`` (None: ``set_timesteps`` was not called yet);
        ``past_end`` is raised when the schedule is used up."""
        if num_steps is None:
            raise ConfigError(f"{type(self).__name__}: call set_timesteps before step")
        i = self._step_index
        if i is None:  # the first step of a loop
            i = self._current_step_index()
        if i >= num_steps:
            raise past_end(
                f"{type(self).__name__}: step {i + 1} called but the schedule has {num_steps} steps; "
                "call set_timesteps again to start a new sampling loop"
            )
        return i

    @staticmethod
    def _bounded_x0(x0: torch.Tensor, config: Mapping[str, Any]) -> torch.Tensor:
        """Keep x0 in range: dynamic thresholding (Saharia et al. 2022 sec. 2.3) or plain clipping, as configured."""
        if config.thresholding:
            return dynamic_threshold(x0, config.dynamic_thresholding_ratio, config.sample_max_value)
        if config.clip_sample:
            return x0.clamp(-config.clip_sample_range, config.clip_sample_range)
        return x0

    def _signal_noise_at(self, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) at training ``timesteps``, [B, 1, ..., 1] as ``like``."""
        alphas_cumprod = self.alphas_cumprod.to(device=like.device, dtype=like.dtype)
        alpha_bar = alphas_cumprod[timesteps.to(like.device)].flatten()  # [B]
        shape = (-1,) + (1,) * (like.ndim - 1)  # [B, 1, ..., 1] broadcasts over the sample dimensions
        return (alpha_bar**0.5).reshape(shape), ((1 - alpha_bar) ** 0.5).reshape(shape)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward diffusion q(x_t | x_0): x_t = alpha_t x_0 + sigma_t noise (Ho et al. 2020 eq. 4), samples' dtype."""
        alpha_t, sigma_t = self._signal_noise_at(timesteps, original_samples)
        return alpha_t * original_samples + sigma_t * noise

    def _velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v = alpha_t noise - sigma_t x_0 (Salimans & Ho 2022 sec. 4), ``get_velocity`` where diffusers has one."""
        alpha_t, sigma_t = self._signal_noise_at(timesteps, sample)
        return alpha_t * noise - sigma_t * sample


class VPSigmaScheduler(VPScheduler):
    """Base of the exponential-integrator solvers (DPM-Solver, DEIS, UniPC): a sigma per schedule position.

    Before ``set_timesteps`` they hold diffusers' initial state, the training sigmas (ascending) with descending
    float timesteps; ``add_noise`` finds each timestep's place in the schedule as diffusers does.
    """

    def _set_configured_schedule(self, rescale_betas_zero_snr: bool = False) -> None:
        """The config's training schedule and diffusers' state before ``set_timesteps``: the training sigmas [T]
        with float32 timesteps T - 1, ..., 0 [T]. A zero-SNR end is floored at 2**-24 (diffusers), so the first
        sigma stays finite."""
        config = self.config
        betas = make_betas(
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas,
            rescale_betas_zero_snr,
        )
        self._set_training_schedule(betas, zero_snr_floor=rescale_betas_zero_snr)
        self.sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod)
        self.timesteps = torch.arange(config.num_train_timesteps - 1, -1, -1, dtype=torch.float32)

    def _set_noise_levels(self, timesteps: np.ndarray, sigmas: np.ndarray, device: str | torch.device | None) -> int:
        """Install a schedule: int64 ``timesteps`` [n] on ``device``, float32 CPU ``sigmas`` [n + 1]; returns n."""
        self.sigmas = torch.from_numpy(sigmas)
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self._reset_step_counter()
        return len(timesteps)

    def _signal_noise_at(self, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha_t and sigma_t at the schedule places of ``timesteps`` (the last place for an unknown one)."""
        return vp_alpha_sigma(self._add_noise_sigma(timesteps, like, missing_is_last=True))
