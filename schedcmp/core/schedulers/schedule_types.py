"""The noise-schedule types of A1111 and ComfyUI: named sigma grids computed from a model's training sigmas.

Each function returns the float32 noise levels a sampler steps through, largest first, ending with 0 (or, for
A1111's KL Optimal, at sigma_min). They follow the tools' own arithmetic (float32 torch, k-diffusion's
log-sigma interpolation, ComfyUI's integer timesteps), so a grid here equals the tool's to the last bit or two:

- A1111 1.10 ``modules/sd_schedulers.py`` and k-diffusion 0.1.1 ``get_sigmas_*`` (Karras et al. 2022 eq. 5);
- ComfyUI ``comfy/samplers.py`` ``SCHEDULER_HANDLERS`` (simple, sgm_uniform, karras, exponential, ddim_uniform,
  beta, normal, linear_quadratic, kl_optimal).

Where the tools define the same name differently (Beta, KL Optimal) there are two ids: ``beta`` / ``kl_optimal``
are A1111's, ``comfy_beta`` / ``comfy_kl_optimal`` ComfyUI's. Which one a user-typed name means is the registry's
business (it depends on the sampler's tool).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ..errors import ConfigError
from .schedules import beta_ppf

ScheduleId = Literal[
    "uniform",
    "normal",
    "karras",
    "exponential",
    "polyexponential",
    "sgm_uniform",
    "simple",
    "ddim_uniform",
    "beta",
    "comfy_beta",
    "kl_optimal",
    "comfy_kl_optimal",
    "align_your_steps",
    "linear_quadratic",
]
AysModel = Literal["sd15", "sdxl"]

# Align Your Steps (Sabour et al. 2024, arXiv:2404.14507): NVIDIA's optimised 10-step noise levels, as A1111
# (PR #15751) ships them; other step counts interpolate them log-linearly.
AYS_SIGMAS: dict[str, tuple[float, ...]] = {
    "sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
}


@dataclass(frozen=True)
class GridInputs:
    """What a schedule type may read: the step count, the model's training sigmas and the schedule's parameters."""

    steps: int
    train_sigmas: torch.Tensor  # [T] float32, ascending in t
    rho: float | None = None
    alpha: float = 0.6
    beta: float = 0.6
    ays_model: AysModel = "sd15"
    threshold_noise: float = 0.025
    linear_steps: int | None = None
    min_sigma: float | None = None  # A1111's "sigma min" / "sigma max" settings (None: the model's)
    max_sigma: float | None = None

    @property
    def sigma_min(self) -> float:
        return float(self.train_sigmas[0]) if self.min_sigma is None else self.min_sigma

    @property
    def sigma_max(self) -> float:
        return float(self.train_sigmas[-1]) if self.max_sigma is None else self.max_sigma

    @property
    def log_sigmas(self) -> torch.Tensor:
        return self.train_sigmas.log()


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def t_to_sigma(t: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """Noise level at fractional training timesteps: linear interpolation of log-sigma (k-diffusion, ComfyUI)."""
    t = t.float()
    low, high, w = t.floor().long(), t.ceil().long(), t.frac()
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


def sigma_to_t(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """Fractional training timestep of a noise level: k-diffusion's ``DiscreteSchedule.sigma_to_t`` (float32)."""
    log_sigma = sigma.float().clamp(min=1e-10).log()
    dists = log_sigma - log_sigmas[:, None]  # [T, m]
    low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
    low_value, high_value = log_sigmas[low], log_sigmas[low + 1]
    w = ((low_value - log_sigma) / (low_value - high_value)).clamp(0, 1)
    return ((1 - w) * low + w * (low + 1)).view(sigma.shape)


def nearest_timestep(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """The training timestep whose sigma is nearest in log space: ComfyUI's ``ModelSamplingDiscrete.timestep``."""
    dists = sigma.float().clamp(min=1e-10).log() - log_sigmas[:, None]  # [T, m]
    return dists.abs().argmin(dim=0).view(sigma.shape)


def uniform(g: GridInputs) -> torch.Tensor:
    """A1111 Uniform: k-diffusion's ``get_sigmas``, timesteps linspace(T - 1, 0, n), then 0."""
    t = torch.linspace(len(g.train_sigmas) - 1, 0, g.steps)
    return _append_zero(t_to_sigma(t, g.log_sigmas))


def normal(g: GridInputs, sgm: bool = False) -> torch.Tensor:
    """A1111 Normal / ComfyUI normal (``sgm``: SGM Uniform, n + 1 timesteps without the last): linspace in t
    between the timesteps of sigma_max and sigma_min, then 0; ComfyUI's zero-terminal-SNR case (a schedule whose
    last sigma is 0) takes one more timestep instead of appending 0."""
    log_sigmas = g.log_sigmas
    start = sigma_to_t(torch.tensor(g.sigma_max), log_sigmas)
    end = sigma_to_t(torch.tensor(g.sigma_min), log_sigmas)
    if sgm:
        t = torch.linspace(float(start), float(end), g.steps + 1)[:-1]
        return _append_zero(t_to_sigma(t, log_sigmas))
    if math.isclose(float(t_to_sigma(end, log_sigmas)), 0, abs_tol=1e-5):
        return t_to_sigma(torch.linspace(float(start), float(end), g.steps + 1), log_sigmas)
    return _append_zero(t_to_sigma(torch.linspace(float(start), float(end), g.steps), log_sigmas))


def sgm_uniform(g: GridInputs) -> torch.Tensor:
    """SGM Uniform (A1111 PR #15325, ComfyUI sgm_uniform): ``normal`` over n + 1 timesteps, the last dropped."""
    return normal(g, sgm=True)


def karras(g: GridInputs) -> torch.Tensor:
    """Karras et al. 2022 eq. 5: ramp^(1/rho) between sigma_max and sigma_min (rho 7 unless given), then 0."""
    rho = 7.0 if g.rho is None else g.rho
    ramp = torch.linspace(0, 1, g.steps)
    min_inv_rho, max_inv_rho = g.sigma_min ** (1 / rho), g.sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(g: GridInputs) -> torch.Tensor:
    """Log-linear noise levels from sigma_max to sigma_min (k-diffusion ``get_sigmas_exponential``), then 0."""
    return _append_zero(torch.linspace(math.log(g.sigma_max), math.log(g.sigma_min), g.steps).exp())


def polyexponential(g: GridInputs) -> torch.Tensor:
    """Log-sigma along a ramp^rho from sigma_max to sigma_min (k-diffusion; rho 1 = exponential), then 0."""
    rho = 1.0 if g.rho is None else g.rho
    ramp = torch.linspace(1, 0, g.steps) ** rho
    log_min = math.log(g.sigma_min)
    return _append_zero(torch.exp(ramp * (math.log(g.sigma_max) - log_min) + log_min))


def simple(g: GridInputs) -> torch.Tensor:
    """ComfyUI simple (A1111 Simple): every (T / n)-th training sigma from the top, then 0."""
    stride = len(g.train_sigmas) / g.steps
    picked = [float(g.train_sigmas[-(1 + int(x * stride))]) for x in range(g.steps)]
    return torch.tensor([*picked, 0.0], dtype=torch.float32)


def ddim_uniform(g: GridInputs) -> torch.Tensor:
    """A1111 DDIM / ComfyUI ddim_uniform: training sigmas at t = 1, 1 + T // n, ... (DDIM's leading spacing)
    largest first, then 0; more than n steps when n does not divide T, as in both tools."""
    sigmas = g.train_sigmas
    steps, picked = g.steps, []
    if math.isclose(float(sigmas[1]), 0, abs_tol=1e-5):
        steps += 1
    else:
        picked = [0.0]
    stride = max(len(sigmas) // steps, 1)
    picked += [float(sigmas[x]) for x in range(1, len(sigmas), stride)]
    return torch.tensor(picked[::-1], dtype=torch.float32)


def beta(g: GridInputs) -> torch.Tensor:
    """A1111 Beta (Lee et al. 2024, arXiv:2407.12173): sigma_min + Beta(alpha, beta) quantiles of
    1 - linspace(0, 1, n) times (sigma_max - sigma_min), linear in sigma, then 0."""
    quantiles = 1 - np.linspace(0, 1, g.steps)
    picked = [g.sigma_min + beta_ppf(float(q), g.alpha, g.beta) * (g.sigma_max - g.sigma_min) for q in quantiles]
    return torch.tensor([*picked, 0.0], dtype=torch.float32)


def comfy_beta(g: GridInputs) -> torch.Tensor:
    """ComfyUI beta: Beta(alpha, beta) quantiles of 1 - linspace(0, 1, n, endpoint=False) as rounded training
    timesteps, repeats dropped, their sigmas, then 0 (so it can have fewer than n steps)."""
    total = len(g.train_sigmas) - 1
    quantiles = 1 - np.linspace(0, 1, g.steps, endpoint=False)
    timesteps = [float(np.rint(beta_ppf(float(q), g.alpha, g.beta) * total)) for q in quantiles]
    picked, last = [], -1.0
    for t in timesteps:
        if t != last:
            picked.append(float(g.train_sigmas[int(t)]))
        last = t
    return torch.tensor([*picked, 0.0], dtype=torch.float32)


def kl_optimal(g: GridInputs) -> torch.Tensor:
    """A1111 KL Optimal (PR #15608; Sabour et al. 2024 eq. 7): tan of a linear ramp from atan(sigma_max) to
    atan(sigma_min) over n + 1 points; it ends at sigma_min, with no final 0."""
    alpha_min = torch.arctan(torch.tensor(g.sigma_min))
    alpha_max = torch.arctan(torch.tensor(g.sigma_max))
    index = torch.arange(g.steps + 1)
    return torch.tan(index / g.steps * alpha_min + (1.0 - index / g.steps) * alpha_max)


def comfy_kl_optimal(g: GridInputs) -> torch.Tensor:
    """ComfyUI kl_optimal: the same tan ramp over n points, then 0 (the last step goes to sigma 0). ComfyUI spaces
    the points by 1 / (n - 1): its 1-step grid is NaN, so one step is refused."""
    if g.steps < 2:
        raise ConfigError("ComfyUI's kl_optimal needs at least 2 steps: it spaces its n points by 1 / (n - 1), so "
                          "its 1-step grid is NaN")
    ramp = torch.arange(g.steps, dtype=torch.float).div_(g.steps - 1)
    sigmas = ramp.new_zeros(g.steps + 1)
    sigmas[:-1] = (ramp * math.atan(g.sigma_min) + (1 - ramp) * math.atan(g.sigma_max)).tan_()
    return sigmas


def align_your_steps(g: GridInputs) -> torch.Tensor:
    """A1111 Align Your Steps: the model's 11 AYS noise levels, log-linearly interpolated to n when n != 11,
    then 0."""
    table = AYS_SIGMAS[g.ays_model]
    if g.steps == len(table):
        return torch.tensor([*table, 0.0], dtype=torch.float32)
    positions = np.linspace(0, 1, len(table))
    log_levels = np.log(np.array(table)[::-1])
    interpolated = np.exp(np.interp(np.linspace(0, 1, g.steps), positions, log_levels))[::-1]
    return torch.tensor([*interpolated, 0.0], dtype=torch.float32)


def linear_quadratic(g: GridInputs) -> torch.Tensor:
    """ComfyUI linear_quadratic (from genmo's Mochi): noise 1 - ramp, the ramp linear up to ``threshold_noise``
    for the first half of the steps and quadratic after, times sigma_max."""
    n = g.steps
    if n == 1:
        ramp = [1.0, 0.0]
    else:
        linear_steps = n // 2 if g.linear_steps is None else g.linear_steps
        threshold = g.threshold_noise
        linear = [i * threshold / linear_steps for i in range(linear_steps)]
        step_diff = linear_steps - threshold * n
        quadratic_steps = n - linear_steps
        quadratic_coef = step_diff / (linear_steps * quadratic_steps**2)
        linear_coef = threshold / linear_steps - 2 * step_diff / (quadratic_steps**2)
        const = quadratic_coef * (linear_steps**2)
        quadratic = [quadratic_coef * (i**2) + linear_coef * i + const for i in range(linear_steps, n)]
        ramp = [1.0 - x for x in linear + quadratic + [1.0]]
    return torch.tensor(ramp, dtype=torch.float32) * torch.tensor(g.sigma_max, dtype=torch.float32)


@dataclass(frozen=True)
class ScheduleType:
    """One named schedule: its id, the labels each tool shows, its grid function and the parameters it reads."""

    id: str
    grid: Callable[[GridInputs], torch.Tensor]
    a1111: str | None  # A1111 1.10's Schedule type label, None where A1111 has no such schedule
    comfy: str | None  # ComfyUI's scheduler name
    description: str
    parameters: tuple[str, ...] = field(default_factory=tuple)


SCHEDULE_TYPES: tuple[ScheduleType, ...] = (
    ScheduleType("uniform", uniform, "Uniform", None, "timesteps evenly spaced over training (k-diffusion default)"),
    ScheduleType("karras", karras, "Karras", "karras", "Karras et al. 2022 eq. 5 noise levels", ("rho",)),
    ScheduleType("exponential", exponential, "Exponential", "exponential", "noise levels evenly spaced in log"),
    ScheduleType("polyexponential", polyexponential, "Polyexponential", None,
                 "log noise along ramp^rho (rho 1: exponential)", ("rho",)),
    ScheduleType("sgm_uniform", sgm_uniform, "SGM Uniform", "sgm_uniform",
                 "n of n + 1 evenly spaced timesteps (SDXL Lightning / Turbo)"),
    ScheduleType("kl_optimal", kl_optimal, "KL Optimal", None, "tan ramp ending at sigma_min (A1111)"),
    ScheduleType("align_your_steps", align_your_steps, "Align Your Steps", None,
                 "NVIDIA's optimised levels for SD 1.5 / SDXL (Sabour et al. 2024)", ("ays_model",)),
    ScheduleType("simple", simple, "Simple", "simple", "every (T/n)-th training noise level from the top"),
    ScheduleType("normal", normal, "Normal", "normal", "timesteps evenly spaced from sigma_max to sigma_min"),
    ScheduleType("ddim_uniform", ddim_uniform, "DDIM", "ddim_uniform", "DDIM's leading timesteps 1, 1 + T//n, ..."),
    ScheduleType("beta", beta, "Beta", None, "Beta(alpha, beta) quantiles, linear in sigma (A1111)",
                 ("schedule_alpha", "schedule_beta")),
    ScheduleType("comfy_beta", comfy_beta, None, "beta", "Beta(alpha, beta) quantiles of training timesteps "
                 "(ComfyUI)", ("schedule_alpha", "schedule_beta")),
    ScheduleType("comfy_kl_optimal", comfy_kl_optimal, None, "kl_optimal", "tan ramp, then sigma 0 (ComfyUI)"),
    ScheduleType("linear_quadratic", linear_quadratic, None, "linear_quadratic",
                 "linear then quadratic ramp (genmo Mochi)", ("threshold_noise", "linear_steps")),
)
SCHEDULE_BY_ID: Mapping[str, ScheduleType] = {s.id: s for s in SCHEDULE_TYPES}


def sigma_grid(schedule: str, steps: int, train_sigmas: torch.Tensor, **parameters: Any) -> torch.Tensor:
    """The float32 noise levels of ``schedule`` at ``steps`` steps for a model's training sigmas [T]."""
    if schedule not in SCHEDULE_BY_ID:
        raise ConfigError(f"unknown schedule {schedule!r}; schedules: {', '.join(SCHEDULE_BY_ID)}")
    if steps < 1:
        raise ConfigError(f"a schedule needs at least 1 step, got {steps}")
    return SCHEDULE_BY_ID[schedule].grid(GridInputs(steps, train_sigmas.float(), **parameters)).float()


def checked_custom_sigmas(values: Sequence[float] | torch.Tensor, owner: str) -> torch.Tensor:
    """Explicit noise levels [m]: at least two, finite, non-negative and strictly decreasing."""
    sigmas = torch.as_tensor(values, dtype=torch.float32).flatten()
    if sigmas.numel() < 2:
        raise ConfigError(f"{owner}: custom sigmas need at least two values (a start and an end), got "
                          f"{sigmas.numel()}")
    if not bool(torch.isfinite(sigmas).all()) or bool((sigmas < 0).any()):
        raise ConfigError(f"{owner}: custom sigmas must be finite and >= 0")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ConfigError(f"{owner}: custom sigmas must decrease strictly, largest first")
    return sigmas
