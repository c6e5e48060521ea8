"""Pure schedule math shared by every scheduler: betas, alphas_cumprod, sigma grids and timestep spacing.

Everything here is computed once per ``__init__`` / ``set_timesteps`` (never inside ``step``, except the
thresholding of an x0 estimate), in the same precision diffusers uses, so the numbers match it bit for bit where
diffusers' own arithmetic allows. Where two schedulers of diffusers differ on purpose (rounding, dtypes, which
bounds they read), the difference is a parameter here, never a second copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
import torch

from ..configuration import Range
from ..errors import ConfigError

Beta = Annotated[float, Range(gt=0, lt=1)]  # a noise rate beta_t of the training schedule
TrainedBetas = Annotated[Sequence[float] | np.ndarray | torch.Tensor, Range(gt=0, lt=1)]  # each entry a Beta
BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
TimestepSpacing = Literal["linspace", "leading", "trailing"]
SigmaGrid = Literal["karras", "exponential", "beta"]
SIGMA_GRIDS: tuple[SigmaGrid, ...] = ("karras", "exponential", "beta")
Ramp = TypeVar("Ramp", np.ndarray, torch.Tensor)


# --- the training noise schedule ------------------------------------------------------------------------------


def cosine_alpha_bar(t: float) -> float:
    """Cumulative signal rate of the cosine schedule, Nichol & Dhariwal 2021 eq. 17 (offset s = 0.008)."""
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def exp_alpha_bar(t: float) -> float:
    """Cumulative signal rate exp(-12 t) of diffusers' "exp" schedule (each beta is then 1 - exp(-12 / T))."""
    return math.exp(t * -12.0)


def laplace_alpha_bar(t: float) -> float:
    """Cumulative signal rate sqrt(snr / (1 + snr)) with a Laplace log-SNR in t, Hang & Gu 2024 (eq. 8)."""
    log_snr = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
    snr = math.exp(log_snr)
    return math.sqrt(snr / (1 + snr))


def betas_for_alpha_bar(
    num_train_timesteps: int, alpha_bar: Callable[[float], float] = cosine_alpha_bar, max_beta: float = 0.999
) -> torch.Tensor:
    """Discretise an alpha-bar curve into betas [T], Nichol & Dhariwal 2021 eq. 17, clipped at ``max_beta``."""
    betas = [
        min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
        for i in range(num_train_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float32)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha-bar) so the last timestep has zero SNR, Lin et al. 2023 Algorithm 1."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


def make_betas(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: object = None,
    rescale_betas_zero_snr: bool = False,
) -> torch.Tensor:
    """The training noise schedule beta_1..beta_T (Ho et al. 2020 sec. 4) as a float32 tensor [T].

    Each class's ``beta_schedule`` Literal says which of these it takes: "exp" is Heun's, "sigmoid" and
    "laplace" DDPM's (as in diffusers).
    """
    if trained_betas is not None:
        betas = torch.tensor(list(trained_betas), dtype=torch.float32)
        if betas.ndim != 1 or len(betas) != num_train_timesteps:
            raise ConfigError(
                f"trained_betas must be a list of num_train_timesteps={num_train_timesteps} numbers, "
                f"got shape {tuple(betas.shape)}"
            )
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        betas = betas_for_alpha_bar(num_train_timesteps)
    elif beta_schedule == "exp":
        betas = betas_for_alpha_bar(num_train_timesteps, exp_alpha_bar)
    elif beta_schedule == "laplace":
        betas = betas_for_alpha_bar(num_train_timesteps, laplace_alpha_bar)
    elif beta_schedule == "sigmoid":
        betas = torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps)) * (beta_end - beta_start) + beta_start
    else:
        raise ConfigError(
            "beta_schedule must be one of 'linear', 'scaled_linear', 'squaredcos_cap_v2', 'exp', 'laplace', "
            f"'sigmoid'; got {beta_schedule!r}"
        )
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def alphas_cumprod_of(betas: torch.Tensor, zero_snr_floor: bool = False) -> torch.Tensor:
    """alpha-bar_t = prod_s (1 - beta_s) [T], Ho et al. 2020 eq. 4; ``zero_snr_floor``: a 0 end becomes 2**-24.

    The floor is diffusers' for its sigma-based samplers after zero-terminal-SNR rescaling, so the largest sigma
    stays finite (about 4096); the alpha-bar samplers (DDPM, DDIM) keep the exact 0.
    """
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    if zero_snr_floor:
        alphas_cumprod[-1] = 2**-24
    return alphas_cumprod


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Noise-to-signal ratio sigma_t = sqrt((1 - abar_t) / abar_t) [T], Karras et al. 2022 Table 1 (VP).

    Computed in float32 torch as diffusers does: numpy's float32 square root differs from torch's in the last
    bit for about a fifth of the entries.
    """
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def vp_alpha_sigma(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t = 1 / sqrt(1 + sigma^2) and sigma_t = sigma alpha_t of the VP process, Karras et al. 2022 Table 1."""
    alpha_t = 1 / ((sigmas**2 + 1) ** 0.5)
    return alpha_t, sigmas * alpha_t


# --- sigma <-> timestep -------------------------------------------------------------------------------------------


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each sigma: linear interpolation in log-sigma (k-diffusion's convention).

    ``log_sigmas`` [T] ascends (training sigmas grow with t), so the interval a sigma falls in is a binary search:
    the last training level at or below it, the first one where it lies below all of them.
    """
    sigmas = np.asarray(sigmas)
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    low_idx = (np.searchsorted(log_sigmas, log_sigma, side="right") - 1).clip(0, log_sigmas.shape[0] - 2)
    low, high = log_sigmas[low_idx], log_sigmas[low_idx + 1]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx + w * (low_idx + 1)).reshape(sigmas.shape)


def sigma_to_t_float32(sigmas: torch.Tensor, log_sigmas: np.ndarray) -> torch.Tensor:
    """``sigma_to_t`` in float32 torch arithmetic but for the two logarithms, as diffusers' KDPM2 schedulers do it.

    diffusers feeds torch tensors to its numpy-written conversion there; matched so their midpoint timesteps
    agree bit for bit.
    """
    log_sigma = torch.from_numpy(np.log(np.maximum(sigmas.numpy(), 1e-10)))  # [m]
    log_train = torch.from_numpy(log_sigmas)  # [T]
    common = torch.promote_types(log_sigma.dtype, log_train.dtype)
    low = torch.searchsorted(log_train.to(common), log_sigma.to(common), right=True) - 1  # [m]
    low = low.clamp(0, log_train.shape[0] - 2)
    low_value, high_value = log_train[low], log_train[low + 1]
    w = ((low_value - log_sigma) / (low_value - high_value)).clamp(0, 1)
    return (1 - w) * low + w * (low + 1)


# --- inference sigma grids ----------------------------------------------------------------------------------------


def karras_ramp(ramp: Ramp, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Ramp:
    """Noise levels at ramp positions in [0, 1] (0: sigma_max), Karras et al. 2022 eq. 5, in the ramp's array type."""
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def karras_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int, rho: float = 7.0) -> np.ndarray:
    """Noise levels evenly spaced in sigma^(1/rho), Karras et al. 2022 eq. 5 (rho = 7) [n]."""
    return karras_ramp(np.linspace(0, 1, num_inference_steps), sigma_min, sigma_max, rho)


def exponential_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int) -> np.ndarray:
    """Noise levels evenly spaced in log-sigma (the 'exponential' schedule of k-diffusion) [n]."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_inference_steps))


def _log_beta_fn(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _incomplete_beta_fraction(x: float, a: float, b: float) -> float:
    """Continued fraction for I_x(a, b) by the modified Lentz method (Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-16
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the CDF of the Beta(a, b) distribution, in float64."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(a * math.log(x) + b * math.log1p(-x) - _log_beta_fn(a, b))
    if x < (a + 1) / (a + b + 2):
        return front * _incomplete_beta_fraction(x, a, b) / a
    return 1.0 - front * _incomplete_beta_fraction(1.0 - x, b, a) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """Inverse CDF of Beta(a, b) by bisection to float64 resolution (replaces scipy.stats.beta.ppf)."""
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    if a == b and q == 0.5:  # the median of a symmetric Beta, exactly (ComfyUI's beta schedule rounds it)
        return 0.5
    lo, hi = 0.0, 1.0
    mid = 0.5
    while lo < mid < hi:  # halve until the interval is one float64 ulp wide
        if regularized_incomplete_beta(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
        mid = 0.5 * (lo + hi)
    return mid


def beta_sigmas(
    sigma_min: float, sigma_max: float, num_inference_steps: int, alpha: float = 0.6, beta: float = 0.6
) -> np.ndarray:
    """Noise levels at Beta(alpha, beta) quantiles, Lee et al. 2024 "Beta Sampling is All You Need"."""
    quantiles = 1 - np.linspace(0, 1, num_inference_steps)
    return np.array([sigma_min + beta_ppf(float(q), alpha, beta) * (sigma_max - sigma_min) for q in quantiles])


def respaced_sigmas(grid: str, sigma_min: float, sigma_max: float, num_inference_steps: int) -> np.ndarray:
    """Karras (eq. 5, rho = 7), exponential or Beta(0.6, 0.6) noise levels from sigma_max down to sigma_min [n]."""
    if grid == "karras":
        return karras_sigmas(sigma_min, sigma_max, num_inference_steps)
    if grid == "exponential":
        return exponential_sigmas(sigma_min, sigma_max, num_inference_steps)
    return beta_sigmas(sigma_min, sigma_max, num_inference_steps)


def chosen_sigma_grid(config: Mapping[str, Any]) -> SigmaGrid | None:
    """The grid a config's use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas asks for, if any."""
    return next((grid for grid in SIGMA_GRIDS if config.get(f"use_{grid}_sigmas")), None)


def check_sigma_grid_choice(owner: str, config: Mapping[str, Any]) -> None:
    """Refuse a config with more than one of use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas."""
    chosen = [f"use_{grid}_sigmas" for grid in SIGMA_GRIDS if config.get(f"use_{grid}_sigmas")]
    if len(chosen) > 1:
        raise ConfigError(
            f"{owner}: only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas may be true; "
            f"got {' and '.join(f'{key}=True' for key in chosen)}"
        )


# --- timestep spacing ---------------------------------------------------------------------------------------------


def spaced_timesteps(
    spacing: str, num_train_timesteps: int, num_inference_steps: int, steps_offset: int = 0
) -> np.ndarray:
    """Descending float64 training timesteps for ``num_inference_steps`` steps [n], Lin et al. 2023 Table 2.

    ``linspace`` is left unrounded (samplers on sigmas keep the fractions; DDIM-style ones round it);
    ``leading`` adds ``steps_offset``; ``trailing`` ends at ``num_train_timesteps - 1``.
    """
    if spacing == "linspace":
        return np.linspace(0, num_train_timesteps - 1, num_inference_steps)[::-1].copy()
    if spacing == "leading":
        step_ratio = num_train_timesteps // num_inference_steps
        return (np.arange(0, num_inference_steps) * step_ratio).round()[::-1] + steps_offset
    if spacing == "trailing":
        step_ratio = num_train_timesteps / num_inference_steps
        return np.round(np.arange(num_train_timesteps, 0, -step_ratio)) - 1
    raise ConfigError(f"timestep_spacing must be one of 'linspace', 'leading', 'trailing'; got {spacing!r}")


def multistep_timesteps(
    spacing: str,
    num_train_timesteps: int,
    num_inference_steps: int,
    steps_offset: int = 0,
    last_timestep: int | None = None,
) -> np.ndarray:
    """Descending int64 timesteps of the multistep solvers [n] (Lin et al. 2023 Table 2, as DPM-Solver spaces them).

    ``linspace`` and ``leading`` place ``n + 1`` points below ``last_timestep`` (default ``num_train_timesteps``;
    DPM-Solver's ``lambda_min_clipped`` lowers it) and drop the last (t = 0), so no step lands on t = 0;
    ``trailing`` steps down from ``last_timestep`` by ``num_train_timesteps / n``.
    """
    n = num_inference_steps
    last = num_train_timesteps if last_timestep is None else last_timestep
    if spacing == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        return (np.arange(0, n + 1) * (last // (n + 1))).round()[::-1][:-1].astype(np.int64) + steps_offset
    if spacing == "trailing":
        return np.arange(last, 0, -num_train_timesteps / n).round().astype(np.int64) - 1
    raise ConfigError(f"timestep_spacing must be one of 'linspace', 'leading', 'trailing'; got {spacing!r}")


def check_num_inference_steps(scheduler_name: str, num_inference_steps: object, maximum: int | None) -> int:
    """Validate a step count: a whole number from 1 to ``maximum`` (the training timesteps; None: no maximum)."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise ConfigError(f"{scheduler_name}: num_inference_steps must be a whole number, got {num_inference_steps!r}")
    if maximum is None:
        if num_inference_steps < 1:
            raise ConfigError(f"{scheduler_name}: num_inference_steps must be at least 1, got {num_inference_steps}")
    elif not 1 <= num_inference_steps <= maximum:
        raise ConfigError(
            f"{scheduler_name}: num_inference_steps must be between 1 and {maximum} "
            f"(num_train_timesteps), got {num_inference_steps}"
        )
    return int(num_inference_steps)


# --- the x0 estimate ----------------------------------------------------------------------------------------------


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen dynamic thresholding (Saharia et al. 2022 sec. 2.3): per sample, clamp x0 to [-s, s] and divide by s."""
    dtype = x0.dtype
    batch, channels, *rest = x0.shape
    flat = x0.reshape(batch, channels * math.prod(rest))  # [B, C*H*W]
    if dtype not in (torch.float32, torch.float64):
        flat = flat.float()  # quantile needs fp32 and CPU clamp has no fp16 kernel (diffusers upcasts too)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)  # [B, 1]
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)
