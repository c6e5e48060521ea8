"""DPM-Solver and DPM-Solver++ in their multistep form, with the SDE variants.

Lu et al. 2022a, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around 10 Steps"
(arXiv:2206.00927) integrates the noise-prediction ODE; Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided
Sampling of Diffusion Probabilistic Models" (arXiv:2211.01095) integrates the data-prediction ODE and adds the
multistep solvers (Alg. 2, DPM-Solver++(2M)) and their SDE counterparts. Both write the VP process in
half-log-SNR time lambda = log(alpha / sigma) and integrate its linear part exactly.

The module also holds what the singlestep solver (``dpmsolver_singlestep.py``) shares with this one: the noise
levels, the model-output conversion, the exponential-integrator coefficients and ``add_noise``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

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
)

# diffusers accepts the DEIS / UniPC names so their configs load, and maps them to DPM-Solver++ / midpoint.
AlgorithmType = Literal["dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++", "deis"]
SolverType = Literal["midpoint", "heun", "logrho", "bh1", "bh2"]
PredictionType = Literal["epsilon", "sample", "v_prediction", "flow_prediction"]
LEARNED_VARIANCE = ("learned", "learned_range")
DATA_PREDICTION = ("dpmsolver++", "sde-dpmsolver++")
NOISE_PREDICTION = ("dpmsolver", "sde-dpmsolver")
# One step's weights of (x_s, D0, first difference, second difference, z); see apply_update.
Weights = tuple[float, float, float, float, float]


def check_common_options(owner: str, config: Any) -> None:
    """Refuse flow-matching options, two sigma grids at once and a zero final sigma for noise prediction."""
    flow_defaults = {"use_flow_sigmas": False, "flow_shift": 1.0, "use_dynamic_shifting": False}
    for key, default in flow_defaults.items():
        if config[key] != default:
            raise ConfigError(f"{owner}: {key}={config[key]!r} is for flow-matching models, which are not supported "
                              f"by schedcmp; leave it at {default!r}")
    if config.prediction_type == "flow_prediction":
        raise ConfigError(f"{owner}: prediction_type='flow_prediction' is for flow-matching models, which are not "
                          "supported by schedcmp; use 'epsilon', 'sample' or 'v_prediction'")
    grids = [k for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas") if config[k]]
    if len(grids) > 1:
        raise ConfigError(f"{owner}: only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas may be "
                          f"true; got {', '.join(grids)}")
    if config.algorithm_type in (*NOISE_PREDICTION, "deis") and config.final_sigmas_type == "zero":
        # diffusers tests the name as given, so "deis" (mapped to dpmsolver++ afterwards) is refused here too.
        raise ConfigError(
            f"{owner}: final_sigmas_type='zero' does not work with algorithm_type={config.algorithm_type!r} "
            "(the noise-prediction update divides by sigma = 0); use final_sigmas_type='sigma_min' or "
            "algorithm_type='dpmsolver++'"
        )
    if config.algorithm_type in NOISE_PREDICTION:
        warnings.warn(
            f"{owner}: algorithm_type={config.algorithm_type!r} is deprecated in diffusers; prefer 'dpmsolver++' "
            "or 'sde-dpmsolver++'",
            FutureWarning,
            stacklevel=4,
        )


def check_custom_timesteps(owner: str, timesteps: Sequence[int], num_train_timesteps: int) -> np.ndarray:
    """Custom training timesteps as an int64 array, each in [0, num_train_timesteps)."""
    values = np.asarray(timesteps)
    if values.ndim != 1 or len(values) == 0:
        raise ConfigError(f"{owner}: timesteps must be a non-empty list of integers, got {timesteps!r}")
    if values.min() < 0 or values.max() >= num_train_timesteps:
        raise ConfigError(
            f"{owner}: timesteps must lie in [0, {num_train_timesteps - 1}] (num_train_timesteps), got {timesteps!r}"
        )
    return values.astype(np.int64)


def noise_levels(
    config: Any, alphas_cumprod: torch.Tensor, timesteps: np.ndarray, n: int, grid: str | None, round_grid: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps, sigmas + final sigma) of one schedule: VP sigmas at ``timesteps`` or on a Karras / Lu / ...grid.

    ``grid`` is ``karras`` (Karras et al. 2022 eq. 5), ``lu`` (uniform in lambda, Lu et al. 2022a's step schedule),
    ``exponential`` or ``beta``; a grid's timesteps are read back from its sigmas, Karras / Lu ones rounded if
    ``round_grid``.
    """
    train_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).numpy()  # float32, as diffusers
    log_sigmas = np.log(train_sigmas)
    # diffusers reads sigma_min / sigma_max from the config when a (hidden) key of that name exists.
    sigma_min = config.get("sigma_min") if config.get("sigma_min") is not None else float(train_sigmas[0])
    sigma_max = config.get("sigma_max") if config.get("sigma_max") is not None else float(train_sigmas[-1])
    if grid is None:
        sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
    else:
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
        if round_grid and grid in ("karras", "lu"):  # exponential / beta ones are truncated later (diffusers)
            timesteps = timesteps.round()
    if config.final_sigmas_type == "sigma_min":
        last = float(((1 - alphas_cumprod[0]) / alphas_cumprod[0]) ** 0.5)
    else:
        last = 0.0
    return timesteps, np.concatenate([sigmas, [last]]).astype(np.float32)


def vp_alpha_sigma(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t = 1 / sqrt(1 + sigma^2) and sigma_t = sigma * alpha_t of the VP process (Karras et al. 2022 Tab. 1)."""
    alpha = 1 / ((sigmas**2 + 1) ** 0.5)
    return alpha, sigmas * alpha


def update_weights(
    sigmas: torch.Tensor, steps: list[int], order: int, algorithm: str, solver_type: str, singlestep: bool
) -> list[Weights]:
    """Weights of one exponential-integrator update per step on (x_s, D0, differences, z); see apply_update.

    Lu et al. 2022a Alg. 1-2 / Lu et al. 2022b Alg. 1-2: the update is linear in the sample it starts from and in
    the model outputs m_j at sigmas[i - j]; the target is sigmas[i + 1]. A multistep update starts at sigmas[i],
    a singlestep one of this order at sigmas[i - order + 1]. The scalar factors are computed in float32 the way
    diffusers computes them, then combined in float64.
    """
    i = torch.tensor(steps, dtype=torch.long)
    alpha, sig = vp_alpha_sigma(sigmas)
    lam = torch.log(alpha) - torch.log(sig)
    t, start = i + 1, (i - order + 1 if singlestep else i)
    a_t, s_t = alpha[t], sig[t]
    h = lam[t] - lam[start]
    if algorithm == "dpmsolver++":
        w_x, w_noise = s_t / sig[start], torch.zeros_like(h)
        d0 = -(a_t * (torch.exp(-h) - 1.0))
        second = a_t * ((torch.exp(-h) - 1.0) / h + 1.0)
        third = -(a_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5))
    elif algorithm == "sde-dpmsolver++":
        w_x, w_noise = s_t / sig[start] * torch.exp(-h), s_t * torch.sqrt(1.0 - torch.exp(-2 * h))
        d0 = a_t * (1 - torch.exp(-2.0 * h))
        second = a_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)
        third = a_t * ((1.0 - torch.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5)
    elif algorithm == "dpmsolver":
        w_x, w_noise = a_t / alpha[start], torch.zeros_like(h)
        d0 = -(s_t * (torch.exp(h) - 1.0))
        second = -(s_t * ((torch.exp(h) - 1.0) / h - 1.0))
        third = -(s_t * ((torch.exp(h) - 1.0 - h) / h**2 - 0.5))
    else:  # sde-dpmsolver: twice the drift of dpmsolver (there is no third-order form)
        w_x, w_noise = a_t / alpha[start], s_t * torch.sqrt(torch.exp(2 * h) - 1.0)
        d0 = -2.0 * (s_t * (torch.exp(h) - 1.0))
        second = -2.0 * (s_t * ((torch.exp(h) - 1.0) / h - 1.0))
        third = torch.zeros_like(h)
    # The midpoint rule weighs the first difference D1 by half the D0 weight, Heun by the phi_2 factor.
    d1 = 0.5 * d0 if solver_type == "midpoint" else second
    w_x, w_noise, d0, d1, second, third = (v.double() for v in (w_x, w_noise, d0, d1, second, third))
    zero = torch.zeros_like(d0)
    if order == 1:
        diffs = (zero, zero)
    elif order == 2:  # D1 = (m0 - m1) / r0 with r0 = h_0 / h
        diffs = (d1 * (1.0 / ((lam[i] - lam[i - 1]) / h)).double(), zero)
    elif not singlestep:
        # D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1, D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0+r1)
        r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
        q, p = (r0 / (r0 + r1)).double(), (1.0 / (r0 + r1)).double()
        on_d10, on_d11 = second * (1 + q) + third * p, -second * q - third * p
        diffs = (on_d10 * (1.0 / r0).double(), on_d11 * (1.0 / r1).double())
    else:
        # from sigmas[i - 2]: D1_0 = (m1 - m2) / r1, D1_1 = (m0 - m2) / r0; midpoint keeps D1_1 alone,
        # Heun uses D1 = (r0 D1_0 - r1 D1_1) / (r0 - r1) and D2 = 2 (D1_1 - D1_0) / (r0 - r1)
        r0, r1 = (lam[i] - lam[i - 2]) / h, (lam[i - 1] - lam[i - 2]) / h
        if solver_type == "midpoint":
            on_d10, on_d11 = zero, second
        else:
            d = (r0 - r1).double()
            on_d10 = second * r0.double() / d - 2.0 * third / d
            on_d11 = -second * r1.double() / d + 2.0 * third / d
        diffs = (on_d10 * (1.0 / r1).double(), on_d11 * (1.0 / r0).double())
    columns = (w_x, d0, *diffs, w_noise)
    return list(zip(*(c.tolist() for c in columns), strict=True))


def threshold_sample(sample: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding of an x0 estimate, Saharia et al. 2022 (Imagen) Sec. 2.3."""
    dtype = sample.dtype
    batch, channels, *rest = sample.shape
    if dtype not in (torch.float32, torch.float64):
        sample = sample.float()  # quantile and clamp need float32 on CPU
    flat = sample.reshape(batch, channels * math.prod(rest))  # [B, C*H*W]
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)  # [B, 1]
    return (torch.clamp(flat, -s, s) / s).reshape(batch, channels, *rest).to(dtype)


def convert_model_output(
    owner: str, config: Any, model_output: torch.Tensor, sample: torch.Tensor, alpha_t: float, sigma_t: float
) -> torch.Tensor:
    """The model output as the x0 estimate (DPM-Solver++) or the noise estimate (DPM-Solver), Lu et al. 2022b Sec. 3.

    x_t = alpha_t x0 + sigma_t eps and v = alpha_t eps - sigma_t x0 (Salimans & Ho 2022) relate the three targets.
    """
    if config.variance_type in LEARNED_VARIANCE:
        if config.prediction_type == "epsilon":
            # diffusers quirk: it keeps the first 3 channels (an RGB pixel model's mean), not the first half.
            model_output = model_output[:, :3]
        if model_output.shape[1] != sample.shape[1]:
            raise ConfigError(
                f"{owner}: variance_type={config.variance_type!r} keeps the first 3 channels of an epsilon "
                "prediction and uses other predictions as they are (diffusers' rule, made for RGB pixel-space "
                f"models); that leaves {model_output.shape[1]} channels for a {sample.shape[1]}-channel sample"
            )
    prediction, threshold = config.prediction_type, config.thresholding
    if config.algorithm_type in DATA_PREDICTION:
        if prediction == "epsilon":
            x0 = torch.sub(sample, model_output, alpha=sigma_t).div_(alpha_t)
        elif prediction == "sample":
            x0 = model_output
        else:  # v_prediction
            x0 = torch.sub(sample * alpha_t, model_output, alpha=sigma_t)
        if threshold:
            x0 = threshold_sample(x0, config.dynamic_thresholding_ratio, config.sample_max_value)
        return x0
    if prediction == "epsilon":
        eps = model_output
    elif prediction == "sample":
        eps = torch.sub(sample, model_output, alpha=alpha_t).div_(sigma_t)
    else:  # v_prediction
        eps = torch.add(model_output * alpha_t, sample, alpha=sigma_t)
    if threshold:
        x0 = torch.sub(sample, eps, alpha=sigma_t).div_(alpha_t)
        x0 = threshold_sample(x0, config.dynamic_thresholding_ratio, config.sample_max_value)
        eps = torch.sub(sample, x0, alpha=alpha_t).div_(sigma_t)
    return eps


def apply_update(
    start: torch.Tensor,
    outputs: list[torch.Tensor],
    order: int,
    weights: Weights,
    noise: torch.Tensor | None,
    singlestep: bool = False,
) -> torch.Tensor:
    """prev = w_x x_s + w_D0 D0 + w_a diff_a + w_b diff_b (+ w_z z), the differences taken as diffusers takes them.

    Multistep: D0 = m0, diff_a = m0 - m1, diff_b = m1 - m2. Singlestep of order 2: D0 = m1, diff_a = m0 - m1; of
    order 3: D0 = m2, diff_a = m1 - m2, diff_b = m0 - m2 (m0 the newest output, last in ``outputs``). Keeping the
    differences (rather than folding them into per-output weights) reproduces diffusers' rounding and its
    inf / nan pattern when two timesteps coincide.
    """
    m = outputs[::-1][:order]  # newest first
    if order == 1:
        terms = [m[0]]
    elif not singlestep:
        terms = [m[0], m[0] - m[1]] + ([m[1] - m[2]] if order == 3 else [])
    elif order == 2:
        terms = [m[1], m[0] - m[1]]
    else:
        terms = [m[2], m[1] - m[2], m[0] - m[2]]
    dtype = torch.promote_types(start.dtype, m[0].dtype)
    prev = start.to(dtype) * weights[0]
    for term, weight in zip(terms, weights[1:4], strict=False):
        if weight != 0.0:  # a Python float: the midpoint third-order update has no D1_0 term
            prev.add_(term, alpha=weight)
    if noise is not None:
        prev.add_(noise, alpha=weights[4])
    return prev


def schedule_indices(schedule: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """diffusers' index_for_timestep for a batch, sync-free: the 2nd match if repeated, else the match, else last."""
    n = len(schedule)
    matches = schedule[None, :] == timesteps.reshape(-1, 1)  # [B, n]
    positions = torch.where(matches, torch.arange(n, device=schedule.device), n).sort(dim=1).values  # [B, n]
    count = matches.sum(dim=1)
    second = positions[:, 1] if n > 1 else positions[:, 0]
    return torch.where(count > 1, second, torch.where(count == 1, positions[:, 0], n - 1))


def add_noise_vp(
    scheduler: SchedulerMixin, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """Forward process x_t = alpha_t x0 + sigma_t eps at the schedule places of ``timesteps`` (Ho et al. 2020 eq. 4)."""
    sigmas = scheduler.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
    timesteps = timesteps.to(original_samples.device)
    if scheduler.begin_index is None:
        indices = schedule_indices(scheduler.timesteps.to(original_samples.device), timesteps)
    else:
        # after the first step (inpainting) the step counter, before it (img2img) begin_index
        at = scheduler.step_index if scheduler.step_index is not None else scheduler.begin_index
        indices = torch.full((timesteps.shape[0],), at, dtype=torch.long, device=original_samples.device)
    sigma = sigmas[indices].flatten()
    sigma = sigma.reshape(-1, *([1] * (original_samples.ndim - 1)))  # [B, 1, 1, 1]
    alpha_t, sigma_t = vp_alpha_sigma(sigma)
    return alpha_t * original_samples + sigma_t * noise


class DPMSolverMultistepScheduler(SchedulerMixin):
    """Multistep DPM-Solver / DPM-Solver++ (ODE or SDE), orders 1-3; the "DPM++ 2M (Karras)" sampler.

    ``step`` ignores its ``timestep`` argument: it follows the schedule by counting steps from ``begin_index``.
    Every coefficient is computed once in ``set_timesteps``, so ``step`` never synchronises with the device.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: Sequence[float] | None = None,
        solver_order: Literal[1, 2, 3] = 2,
        prediction_type: PredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: AlgorithmType = "dpmsolver++",
        solver_type: SolverType = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: TimestepSpacing = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential"] = "exponential",
    ) -> None:
        name = type(self).__name__
        check_common_options(name, self.config)
        if algorithm_type == "sde-dpmsolver" and solver_order == 3:
            # diffusers has no third-order SDE-DPM-Solver and fails at the first third-order step
            raise ConfigError(f"{name}: solver_order=3 is not available for algorithm_type='sde-dpmsolver'; use 1 or 2")
        if algorithm_type == "deis":
            self.register_to_config(algorithm_type="dpmsolver++")
        if solver_type in ("logrho", "bh1", "bh2"):
            self.register_to_config(solver_type="midpoint")

        self.betas = make_betas(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2**-24  # diffusers: near zero so the first sigma stays finite
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.init_noise_sigma = 1.0
        # Before set_timesteps diffusers holds the training sigmas (ascending) and descending float timesteps.
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.timesteps = torch.from_numpy(np.linspace(0, num_train_timesteps - 1, num_train_timesteps,
                                                      dtype=np.float32)[::-1].copy())
        self.num_inference_steps: int | None = None
        self.model_outputs: list[torch.Tensor | None] = [None] * solver_order
        self.lower_order_nums = 0
        self._weights: list[list[Weights | None]] = []
        self._max_order: list[int] = []
        self._alpha: list[float] = []
        self._sigma: list[float] = []

    @property
    def is_stochastic(self) -> bool:
        """True for the SDE variants, which draw fresh noise at every step."""
        return self.config.algorithm_type in ("sde-dpmsolver", "sde-dpmsolver++")

    def _spaced_timesteps(self, n: int) -> np.ndarray:
        """n + 1 spaced points with the last dropped, ending at lambda_min_clipped (Lin et al. 2023 Table 2)."""
        config = self.config
        clipped = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), config.lambda_min_clipped))
        last_timestep = config.num_train_timesteps - clipped
        if config.timestep_spacing == "linspace":
            return np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        if config.timestep_spacing == "leading":
            step_ratio = last_timestep // (n + 1)
            return (np.arange(0, n + 1) * step_ratio).round()[::-1][:-1].copy().astype(np.int64) + config.steps_offset
        # trailing: diffusers steps by num_train_timesteps / n from last_timestep (a float arange)
        step_ratio = config.num_train_timesteps / n
        return np.arange(last_timestep, 0, -step_ratio).round().copy().astype(np.int64) - 1

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        mu: float | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        """Choose the sampling timesteps and precompute every step's order and weights (Lu et al. 2022b Alg. 2)."""
        name, config = type(self).__name__, self.config
        if mu is not None:
            raise ConfigError(f"{name}: mu (dynamic shifting) is for flow-matching models, which are not supported "
                              "by schedcmp")
        if (num_inference_steps is None) == (timesteps is None):
            raise ConfigError(f"{name}: pass exactly one of num_inference_steps or timesteps")
        grid = next((g for g, key in (("karras", "use_karras_sigmas"), ("lu", "use_lu_lambdas"),
                                      ("exponential", "use_exponential_sigmas"), ("beta", "use_beta_sigmas"))
                     if config[key]), None)
        if timesteps is not None:
            if grid is not None:
                raise ConfigError(f"{name}: custom timesteps cannot be combined with use_{grid}_"
                                  f"{'lambdas' if grid == 'lu' else 'sigmas'}=True")
            spaced = check_custom_timesteps(name, timesteps, config.num_train_timesteps)
            n = len(spaced)
        else:
            n = check_num_inference_steps(name, num_inference_steps, config.num_train_timesteps)
            spaced = self._spaced_timesteps(n)
        # Karras and Lu grids round their timesteps except on the cosine schedule (diffusers quirk).
        ts, sigmas = noise_levels(config, self.alphas_cumprod, spaced, n, grid,
                                  round_grid=config.beta_schedule != "squaredcos_cap_v2")
        self.sigmas = torch.from_numpy(sigmas)
        self.timesteps = torch.from_numpy(ts).to(device=device, dtype=torch.int64)
        self.num_inference_steps = count = len(ts)
        self.model_outputs = [None] * config.solver_order
        self.lower_order_nums = 0
        self._reset_step_counter()

        # Order cap per step: 1 at the end (final sigma 0, euler_at_final, or < 15 steps), 2 just before.
        short = config.lower_order_final and count < 15
        final_first = config.euler_at_final or short or config.final_sigmas_type == "zero"
        self._max_order = [config.solver_order] * count
        if final_first:
            self._max_order[-1] = 1
        if count >= 2 and short:
            self._max_order[-2] = min(2, self._max_order[-2])
        self._weights = [[None] * 3 for _ in range(count)]
        for order in range(1, config.solver_order + 1):
            steps = [i for i in range(order - 1, count) if self._max_order[i] >= order]
            if steps:
                found = update_weights(self.sigmas, steps, order, config.algorithm_type, config.solver_type, False)
                for i, w in zip(steps, found, strict=True):
                    self._weights[i][order - 1] = w
        alpha, sigma = vp_alpha_sigma(self.sigmas[:count])
        self._alpha, self._sigma = alpha.tolist(), sigma.tolist()

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """The model input needs no scaling in the VP parametrisation (DPM-Solver works on x_t itself)."""
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One multistep DPM-Solver(++) update from sigmas[i] to sigmas[i + 1] (Lu et al. 2022b Alg. 2)."""
        # Notation (Lu et al. 2022b):
        # - x_s: the current sample at sigmas[i];  x_t: the next sample at sigmas[i + 1]
        # - alpha, sigma: VP signal and noise scales, lambda = log(alpha / sigma), h = lambda_t - lambda_s
        # - m_j: converted model outputs (x0 or eps) at sigmas[i - j];  z: standard normal noise (SDE variants)
        if self.num_inference_steps is None:
            raise ConfigError(f"{type(self).__name__}: call set_timesteps before step")
        config = self.config
        i = self._current_step_index()
        if i >= self.num_inference_steps:
            raise IndexError(f"{type(self).__name__}: all {self.num_inference_steps} steps were taken; "
                             "call set_timesteps to start a new loop")

        # 1. convert the model output to the solver's target, x0 (DPM-Solver++) or eps (DPM-Solver), Sec. 3
        converted = convert_model_output(type(self).__name__, config, model_output, sample,
                                         self._alpha[i], self._sigma[i])
        self.model_outputs = [*self.model_outputs[1:], converted]

        # 2. noise for the SDE variants: drawn at every step, float32, shaped like the converted output
        noise = None
        if config.algorithm_type in ("sde-dpmsolver", "sde-dpmsolver++"):
            if variance_noise is None:
                noise = randn_tensor(converted.shape, generator=generator, device=converted.device,
                                     dtype=torch.float32)
            else:
                noise = variance_noise.to(device=converted.device, dtype=torch.float32)

        # 3. order: limited by the outputs gathered so far and by the lower-order rule near the end
        order = min(self._max_order[i], self.lower_order_nums + 1)

        # 4. x_t = (sigma_t/sigma_s) x_s - alpha_t (e^-h - 1) D0 + ... (first order = DDIM), folded into weights
        prev_sample = apply_update(sample.to(torch.float32), self.model_outputs, order,
                                   self._weights[i][order - 1], noise)
        self.lower_order_nums = min(self.lower_order_nums + 1, config.solver_order)
        self._step_index = i + 1
        prev_sample = prev_sample.to(converted.dtype)
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Noise clean samples to the schedule positions of ``timesteps`` (Ho et al. 2020 eq. 4)."""
        return add_noise_vp(self, original_samples, noise, timesteps)
