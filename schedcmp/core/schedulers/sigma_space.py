"""What the k-diffusion-style schedulers share: they step on the noise level sigma = sqrt((1 - abar) / abar).

Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"
(arXiv:2206.00364), VP column of Table 1: the model sees x / sqrt(sigma^2 + 1) (c_in), ``add_noise`` is
x0 + sigma * noise (eq. 1), x0 comes back from an eps or v prediction with per-step factors computed in
``set_timesteps``, and the initial noise has std sigma_max. Euler, Euler ancestral, LMS, Heun, KDPM2 (ancestral)
and DPM-Solver SDE build on ``SigmaScheduler`` (the last four on ``TwoStageScheduler``); EDM Euler takes its
``add_noise`` only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import ConfigError
from .base import Scalars, SchedulerMixin, cast, randn_tensor, step_scalars
from .schedules import (
    alphas_cumprod_of,
    check_sigma_grid_choice,
    chosen_sigma_grid,
    make_betas,
    respaced_sigmas,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    spaced_timesteps,
)

Device = str | torch.device | None


class SigmaSchedule(NamedTuple):
    """An inference schedule on sigma before its final noise level is appended."""

    timesteps: np.ndarray  # [n], fractional training timesteps
    sigmas: np.ndarray  # [n], descending noise levels
    log_train: np.ndarray  # [T], float32 log-sigmas of the training schedule, ascending in t


def check_no_grid_with_custom_timesteps(owner: str, config: Mapping[str, Any]) -> None:
    """Refuse custom timesteps together with a Karras / exponential / beta grid (diffusers' rule)."""
    grid = chosen_sigma_grid(config)
    if grid is not None:
        raise ConfigError(f"{owner}.set_timesteps: custom timesteps cannot be used with use_{grid}_sigmas=True")


def train_alphas_cumprod(config: Mapping[str, Any], rescale: bool = False) -> torch.Tensor:
    """alpha-bar_t [T] of a config's training schedule (Ho et al. 2020 eq. 4), float32; rescaled to zero terminal
    SNR if ``rescale``, the zero end then floored at 2**-24 as diffusers' sigma samplers do (sigma stays finite)."""
    betas = make_betas(
        config["num_train_timesteps"],
        config["beta_start"],
        config["beta_end"],
        config["beta_schedule"],
        config["trained_betas"],
        rescale,
    )
    return alphas_cumprod_of(betas, zero_snr_floor=rescale)


def sigma_schedule(
    config: Mapping[str, Any],
    alphas_cumprod: torch.Tensor,
    num_inference_steps: int,
    *,
    num_train_timesteps: int | None = None,
    timesteps: Sequence[float] | None = None,
    timesteps_dtype: type[np.floating] = np.float32,
    log_linear: bool = False,
    respace: bool = True,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    round_karras: bool = False,
) -> SigmaSchedule:
    """Timesteps [n], their sigmas [n] (no final entry) and the training log-sigmas [T], in diffusers' arithmetic.

    Spaced timesteps (Lin et al. 2023 Table 2, over ``num_train_timesteps``, cast to ``timesteps_dtype``) or
    custom float32 ones map to sigma by linear interpolation in t; ``log_linear`` (Euler's option) takes n + 1
    log-spaced training sigmas instead. With ``respace`` a use_*_sigmas flag of the config replaces them by its
    Karras / exponential / beta grid between ``sigma_min`` and ``sigma_max`` (None: the ends of the schedule
    just built), timesteps read back by log-sigma interpolation and rounded for Karras if ``round_karras``
    (diffusers' KDPM2 quirk). Which bounds a class reads is its own diffusers quirk, so the caller passes them.
    """
    n = num_inference_steps
    train = sigmas_from_alphas_cumprod(alphas_cumprod).numpy()  # float32, ascending in t
    log_train = np.log(train)
    if timesteps is None:
        total = num_train_timesteps or config["num_train_timesteps"]
        spaced = spaced_timesteps(config["timestep_spacing"], total, n, config["steps_offset"])
        timestep_arr = spaced.astype(timesteps_dtype)
    else:
        timestep_arr = np.array(timesteps, dtype=np.float32)
    if log_linear:
        # n + 1 log-spaced sigmas, then the final one: the last step ends at the smallest training sigma and the
        # final sigma is never reached (diffusers' quirk, kept).
        sigmas = torch.linspace(log_train[-1], log_train[0], n + 1).exp().numpy()
    else:
        sigmas = np.interp(timestep_arr, np.arange(len(train)), train)
    grid = chosen_sigma_grid(config) if respace else None
    if grid is not None:
        low = sigmas[-1].item() if sigma_min is None else sigma_min
        high = sigmas[0].item() if sigma_max is None else sigma_max
        sigmas = respaced_sigmas(grid, low, high, n)
        timestep_arr = sigma_to_t(sigmas, log_train)
        if grid == "karras" and round_karras:
            timestep_arr = timestep_arr.round()
    return SigmaSchedule(timestep_arr, sigmas, log_train)


def with_final_sigma(sigmas: np.ndarray, final: float = 0.0) -> torch.Tensor:
    """The float32 sigmas of a schedule with the final noise level appended [n + 1] (0: the clean sample)."""
    return torch.from_numpy(np.concatenate([sigmas, [final]]).astype(np.float32))


def training_sigmas(alphas_cumprod: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """diffusers' state before ``set_timesteps``: every training sigma, largest first, then 0 [T + 1]; float64
    timesteps T - 1, ..., 0 [T]."""
    num_train_timesteps = len(alphas_cumprod)
    sigmas = with_final_sigma(sigmas_from_alphas_cumprod(alphas_cumprod).numpy()[::-1])
    return sigmas, np.linspace(0, num_train_timesteps - 1, num_train_timesteps)[::-1].copy()


def init_noise_sigma_of(sigmas: torch.Tensor, timestep_spacing: str) -> float:
    """Std of the initial noise: sigma_max, or sqrt(sigma_max^2 + 1) for "leading" spacing (diffusers' rule)."""
    sigma_max = sigmas.max()
    if timestep_spacing not in ("linspace", "trailing"):
        sigma_max = (sigma_max**2 + 1) ** 0.5
    return sigma_max.item()


def repeat_after_first(values: torch.Tensor) -> torch.Tensor:
    """[v_0, v_1, ..., v_m] -> [v_0, v_1, v_1, ..., v_m, v_m] [2m + 1]: one entry per model call of a two-stage step."""
    return torch.cat([values[:1], values[1:].repeat_interleave(2)])


def kdpm2_layout(values: torch.Tensor) -> torch.Tensor:
    """[v_0, v_1, ..., v_n] -> [v_0, v_1, v_1, ..., v_n, v_n, v_n] [2n + 2]: diffusers' per-stage KDPM2 tables."""
    return torch.cat([repeat_after_first(values), values[-1:]])


def interleave_midpoints(timesteps: torch.Tensor, midpoints: torch.Tensor) -> torch.Tensor:
    """[t_0, m_0, t_1, m_1, ..., m_{n-2}, t_{n-1}] [2n - 1]: each step's second model call at its midpoint m_k."""
    pairs = torch.stack([midpoints.to(timesteps.dtype), timesteps[1:]], dim=1).flatten()  # [n - 1, 2] -> [2n - 2]
    return torch.cat([timesteps[:1], pairs])


@dataclass(frozen=True)
class ChurnTable:
    """Per-step coefficients of Karras et al. 2022 Algorithm 2 for one churn setting (one entry per step).

    ``sigma_hat`` is the raised noise level and ``dt = sigma_{i+1} - sigma_hat`` (0-dim tensors, see
    ``step_scalars``); ``noise`` is the std of the churn noise added first (Python floats, 0: no noise is drawn).
    All are diffusers' float32 values, exactly.
    """

    sigma_hat: Scalars
    dt: Scalars
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
        return cls(step_scalars(sigma_hat), step_scalars(sigma_next - sigma_hat), noise.tolist())

    def churn(
        self,
        i: int,
        sample: torch.Tensor,
        s_noise: float,
        model_output: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> torch.Tensor:
        """x^ = x + sqrt(sigma_hat^2 - sigma_i^2) s_noise eps (Alg. 2 lines 5-6) in float32; noise drawn like
        ``model_output`` only where there is churn."""
        sample = cast(sample, torch.float32)
        if self.noise[i] > 0:
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            sample = sample + (noise * s_noise) * self.noise[i]
        return sample


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


class SigmaScheduler(SchedulerMixin):
    """Base of the schedulers on sigma: input scaling, x0 recovery and ``add_noise`` of Karras et al. 2022 Table 1.

    ``_prediction_type`` is the config's, kept by ``set_timesteps`` for ``step`` (a config lookup costs ~1 us).

    ``set_timesteps`` calls ``_set_model_sigmas`` with the noise level the model sees at each model call; ``step``
    recovers x0 with ``_predicted_x0``. ``step`` and ``scale_model_input`` read the step counter (see
    ``SchedulerMixin``), never their ``timestep`` argument, and every per-step coefficient is precomputed, as a
    0-dim tensor where it multiplies a tensor (``step_scalars``). A coefficient always multiplies from the right
    (``model_output * sigma``), the form in which float16 tensors use it in float32, as with a Python float.
    """

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    def _set_model_sigmas(self, model_sigmas: torch.Tensor) -> None:
        """Per model call: its noise level, c_in's divisor sqrt(sigma^2 + 1) and v-prediction's x0 factors.

        v-prediction's x0 = out * c_out + x / c_den with c_out = -sigma / sqrt(sigma^2 + 1) and c_den = sigma^2 + 1,
        diffusers' float32 factors (Salimans & Ho 2022 sec. 4 in sigma form), made only for a v-prediction config
        (a table of 0-dim tensors costs ~0.4 us an entry to build).
        """
        self._model_sigma = step_scalars(model_sigmas)
        self._input_scale = step_scalars((model_sigmas**2 + 1) ** 0.5)
        if self.config.prediction_type == "v_prediction":
            self._c_out = step_scalars(-model_sigmas / (model_sigmas**2 + 1) ** 0.5)
            self._c_den = step_scalars(model_sigmas**2 + 1)

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Divide by sqrt(sigma^2 + 1): the VP model's input scale (Karras et al. 2022 Table 1, c_in)."""
        return sample / self._input_scale[self._current_step_index()]

    def _predicted_x0(
        self, model_output: torch.Tensor, sample: torch.Tensor, i: int, sigma: torch.Tensor
    ) -> torch.Tensor:
        """x0 from an eps prediction at ``sigma`` (x - sigma eps), a v prediction (Salimans & Ho 2022 sec. 4), or x0."""
        kind = self._prediction_type
        if kind == "epsilon":
            return sample - model_output * sigma
        if kind == "v_prediction":
            return model_output * self._c_out[i] + sample / self._c_den[i]
        return model_output

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = x0 + sigma_t * noise (Karras et al. 2022 eq. 1) at the sigmas of ``timesteps``."""
        return original_samples + noise * self._add_noise_sigma(timesteps, original_samples, missing_is_last=False)


class TwoStageScheduler(SigmaScheduler):
    """Base of the two-model-call samplers on sigma (Heun, KDPM2, KDPM2 ancestral, DPM-Solver SDE).

    ``timesteps`` interleaves the stages: even counter positions start a step from x_i, odd ones finish it from
    the x_i kept by ``_stage_start``. ``_build`` lays out the schedule shared by all four; each class turns it into
    its per-stage tables in ``_lay_out``.
    """

    order = 2
    _timesteps_dtype: type[np.floating] = np.float32  # of spaced timesteps (float64 for DPM-Solver SDE)
    _round_karras = False  # diffusers' KDPM2 schedulers round Karras timesteps

    def _setup(self) -> None:
        """The training schedule and diffusers' initial state: every training step (not respaced: diffusers also
        respaces it there, but ``set_timesteps`` does it again)."""
        check_sigma_grid_choice(type(self).__name__, self.config)
        self.alphas_cumprod = train_alphas_cumprod(self.config)
        self._build(self.config.num_train_timesteps, None, self.config.num_train_timesteps, respace=False)

    def set_timesteps(
        self,
        num_inference_steps: int,
        device: str | torch.device | None = None,
        num_train_timesteps: int | None = None,
    ) -> None:
        """Spaced timesteps (Lin et al. 2023 Table 2, over ``num_train_timesteps`` if given), stages interleaved."""
        n = self._checked_steps(num_inference_steps, num_train_timesteps)
        self._build(n, device, num_train_timesteps, respace=True)

    def _build(
        self,
        n: int,
        device: Device,
        num_train_timesteps: int | None,
        respace: bool,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        """Lay out an n-step schedule: sigmas, interleaved timesteps and every per-stage coefficient."""
        self.num_inference_steps = n
        config = self.config
        schedule = sigma_schedule(
            config,
            self.alphas_cumprod,
            n,
            num_train_timesteps=num_train_timesteps,
            timesteps=timesteps,
            timesteps_dtype=self._timesteps_dtype,
            respace=respace,
            round_karras=self._round_karras,
        )
        self._lay_out(schedule, torch.arange(2 * n - 1), device)
        self.init_noise_sigma = init_noise_sigma_of(self.sigmas, config.timestep_spacing)
        self._prediction_type = config.prediction_type
        self._stage_sample = None
        self._reset_step_counter()

    def _lay_out(self, schedule: SigmaSchedule, index: torch.Tensor, device: Device) -> None:
        """Set ``sigmas``, ``timesteps`` and the per-stage tables for counter positions ``index`` [2n - 1]."""
        raise NotImplementedError

    def _stage_start(self, i: int, sample: torch.Tensor) -> torch.Tensor:
        """The sample a stage moves from: x_i itself at a first stage (kept), the kept x_i at a second one."""
        if i % 2 == 0:
            self._stage_sample = sample
            return sample
        if self._stage_sample is None:
            raise RuntimeError(f"{type(self).__name__}: a second stage needs its first stage (begin_index is odd)")
        sample, self._stage_sample = self._stage_sample, None
        return sample


def narrowed_grid_note(scheduler: SchedulerMixin) -> str | None:
    """Where a sigma-space scheduler's Karras / exponential / beta grid (set by ``set_timesteps``) spans less than
    the training range because its ``timestep_spacing`` is not "linspace" (SDXL's config says "leading"): the
    bounds and how to match A1111 and ComfyUI, which space such grids over the whole range (Karras et al. 2022,
    eq. 5). None where the grid spans the range."""
    grid = chosen_sigma_grid(scheduler.config)
    spacing = scheduler.config.get("timestep_spacing", "linspace")
    if grid is None or spacing == "linspace" or not isinstance(scheduler, SigmaScheduler):
        return None
    used = scheduler.sigmas[scheduler.sigmas > 0]
    full = sigmas_from_alphas_cumprod(scheduler.alphas_cumprod)
    high, low, full_high, full_low = (float(x) for x in (used.max(), used.min(), full.max(), full.min()))
    if high >= full_high * 0.999 and low <= full_low * 1.001:
        return None
    return (f'the {grid} sigmas span {high:.2f} -> {low:.3f}, bounded by timestep_spacing "{spacing}" instead of '
            f"the training range {full_high:.2f} -> {full_low:.3f} that A1111 and ComfyUI use; "
            "add timestep_spacing: linspace to the run's options to match them")
