"""Pure schedule math shared by every scheduler: betas, alphas_cumprod, sigma grids and timestep spacing.

Everything here is computed once per ``__init__`` / ``set_timesteps`` (never inside ``step``), in the same
precision diffusers uses, so the numbers match it bit for bit where diffusers' own arithmetic allows.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from ..errors import ConfigError

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
TimestepSpacing = Literal["linspace", "leading", "trailing"]


def cosine_alpha_bar(t: float) -> float:
    """Cumulative signal rate of the cosine schedule, Nichol & Dhariwal 2021 eq. 17 (offset s = 0.008)."""
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def betas_for_alpha_bar(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Discretise the cosine alpha-bar curve into betas, Nichol & Dhariwal 2021 eq. 17, clipped at ``max_beta``."""
    betas = [
        min(1 - cosine_alpha_bar((i + 1) / num_train_timesteps) / cosine_alpha_bar(i / num_train_timesteps), max_beta)
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
    """The training noise schedule beta_1..beta_T (Ho et al. 2020 sec. 4) as a float32 tensor."""
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
    else:
        raise ConfigError(
            f"beta_schedule must be one of 'linear', 'scaled_linear', 'squaredcos_cap_v2'; got {beta_schedule!r}"
        )
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor | np.ndarray) -> np.ndarray:
    """Noise-to-signal ratio sigma_t = sqrt((1 - abar_t) / abar_t) (Karras et al. 2022, Table 1 VP column)."""
    alphas_cumprod = np.asarray(alphas_cumprod)
    return np.array(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each sigma: linear interpolation in log-sigma (k-diffusion's convention)."""
    sigmas = np.asarray(sigmas)
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]  # [T, n]
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    low, high = log_sigmas[low_idx], log_sigmas[low_idx + 1]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx + w * (low_idx + 1)).reshape(sigmas.shape)


def karras_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int, rho: float = 7.0) -> np.ndarray:
    """Noise levels evenly spaced in sigma^(1/rho), Karras et al. 2022 eq. 5 (rho = 7)."""
    ramp = np.linspace(0, 1, num_inference_steps)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int) -> np.ndarray:
    """Noise levels evenly spaced in log-sigma (the 'exponential' schedule of k-diffusion)."""
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


def spaced_timesteps(
    spacing: str, num_train_timesteps: int, num_inference_steps: int, steps_offset: int = 0
) -> np.ndarray:
    """Descending float64 training timesteps for ``num_inference_steps`` steps, Lin et al. 2023 Table 2.

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


def check_num_inference_steps(scheduler_name: str, num_inference_steps: object, maximum: int) -> int:
    """Validate a step count: a whole number from 1 to ``maximum`` (the training timesteps)."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise ConfigError(f"{scheduler_name}: num_inference_steps must be a whole number, got {num_inference_steps!r}")
    if not 1 <= num_inference_steps <= maximum:
        raise ConfigError(
            f"{scheduler_name}: num_inference_steps must be between 1 and {maximum} "
            f"(num_train_timesteps), got {num_inference_steps}"
        )
    return int(num_inference_steps)
