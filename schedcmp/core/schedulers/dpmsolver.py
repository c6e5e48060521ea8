"""DPM-Solver and DPM-Solver++: what the multistep and singlestep schedulers share.

Lu et al. 2022a, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around 10 Steps"
(arXiv:2206.00927) integrates the noise-prediction ODE; Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided
Sampling of Diffusion Probabilistic Models" (arXiv:2211.01095) integrates the data-prediction ODE and adds the
SDE counterparts. Both write the VP process in half-log-SNR time lambda = log(alpha / sigma) and integrate its
linear part exactly, so every update is a fixed linear combination of the sample and the model outputs whose
weights (``update_weights``) depend on the schedule only. ``DPMSolverScheduler`` holds the options, timesteps,
noise levels, weights and model-output conversion of both forms.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from ..errors import ConfigError
from .schedules import (
    check_sigma_grid_choice,
    dynamic_threshold,
    multistep_timesteps,
    vp_alpha_sigma,
)
from .vp import VPSigmaScheduler, reject_flow_options, vp_noise_levels

SolverType = Literal["midpoint", "heun", "logrho", "bh1", "bh2"]
LEARNED_VARIANCE = ("learned", "learned_range")
DATA_PREDICTION = ("dpmsolver++", "sde-dpmsolver++")
NOISE_PREDICTION = ("dpmsolver", "sde-dpmsolver")
# One step's weights of (x_s, D0, first difference, second difference, z); see apply_update.
Weights = tuple[float, float, float, float, float]


def check_common_options(owner: str, config: Any) -> None:
    """Refuse flow-matching options, two sigma grids at once and a zero final sigma for noise prediction."""
    reject_flow_options(
        owner,
        use_flow_sigmas=(config.use_flow_sigmas, False),
        flow_shift=(config.flow_shift, 1.0),
        use_dynamic_shifting=(config.use_dynamic_shifting, False),
    )
    if config.prediction_type == "flow_prediction":
        raise ConfigError(
            f"{owner}: prediction_type='flow_prediction' is for flow-matching models, which are not supported by "
            "schedcmp; use 'epsilon', 'sample' or 'v_prediction'"
        )
    check_sigma_grid_choice(owner, config)
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
            x0 = dynamic_threshold(x0, config.dynamic_thresholding_ratio, config.sample_max_value)
        return x0
    if prediction == "epsilon":
        eps = model_output
    elif prediction == "sample":
        eps = torch.sub(sample, model_output, alpha=alpha_t).div_(sigma_t)
    else:  # v_prediction
        eps = torch.add(model_output * alpha_t, sample, alpha=sigma_t)
    if threshold:
        x0 = torch.sub(sample, eps, alpha=sigma_t).div_(alpha_t)
        x0 = dynamic_threshold(x0, config.dynamic_thresholding_ratio, config.sample_max_value)
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


class DPMSolverScheduler(VPSigmaScheduler):
    """Base of the multistep and singlestep DPM-Solver schedulers: everything but the order rule and ``step``."""

    def _setup(self, rescale_betas_zero_snr: bool = False) -> None:
        """Map DEIS / UniPC names as diffusers does, build the training schedule and diffusers' initial state."""
        config = self.config
        # diffusers accepts the DEIS / UniPC names so their configs load, and maps them to DPM-Solver++ / midpoint.
        if config.algorithm_type == "deis":
            self.register_to_config(algorithm_type="dpmsolver++")
        if config.solver_type in ("logrho", "bh1", "bh2"):
            self.register_to_config(solver_type="midpoint")
        self._set_configured_schedule(rescale_betas_zero_snr)
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.num_inference_steps: int | None = None
        self.model_outputs: list[torch.Tensor | None] = [None] * config.solver_order
        self._weights: list[list[Weights | None]] = []
        self._alpha: list[float] = []
        self._sigma: list[float] = []
        self._snapshot_options(self.config)  # after the renames above

    @property
    def is_stochastic(self) -> bool:
        """True for the SDE variants, which draw fresh noise at every step."""
        return self.config.algorithm_type in ("sde-dpmsolver", "sde-dpmsolver++")

    def _place_timesteps(
        self,
        num_inference_steps: int | None,
        timesteps: Sequence[int] | None,
        mu: float | None,
        device: str | torch.device | None,
        grid: str | None,
        spacing: str = "linspace",
        steps_offset: int = 0,
        round_grid: bool = True,
    ) -> int:
        """Set ``timesteps`` and ``sigmas`` (spaced up to lambda_min_clipped, custom, or on ``grid``); the step count.

        Spaced schedules place n + 1 points and drop the last (Lin et al. 2023 Table 2, as DPM-Solver spaces them),
        ending at the timestep where lambda reaches ``lambda_min_clipped``.
        """
        name, config = type(self).__name__, self.config
        reject_flow_options(name, mu=(mu, None))
        if (num_inference_steps is None) == (timesteps is None):
            raise ConfigError(f"{name}: pass exactly one of num_inference_steps or timesteps")
        if timesteps is not None:
            if grid is not None:
                raise ConfigError(
                    f"{name}: custom timesteps cannot be combined with use_{grid}_"
                    f"{'lambdas' if grid == 'lu' else 'sigmas'}=True"
                )
            spaced = check_custom_timesteps(name, timesteps, config.num_train_timesteps)
            n = len(spaced)
        else:
            n = self._checked_steps(num_inference_steps, config.num_train_timesteps)
            clipped = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), config.lambda_min_clipped))
            total = config.num_train_timesteps
            spaced = multistep_timesteps(spacing, total, n, steps_offset, last_timestep=total - clipped)
        final = "training_min" if config.final_sigmas_type == "sigma_min" else "zero"
        ts, sigmas = vp_noise_levels(config, self.alphas_cumprod, spaced, n, grid, round_grid=round_grid, final=final)
        self.model_outputs = [None] * config.solver_order
        return self._set_noise_levels(ts, sigmas, device)

    def _solve_weights(self, max_orders: list[int], singlestep: bool) -> None:
        """Every step's update weights for each order up to its cap ``max_orders[i]`` (see ``update_weights``)."""
        config, count = self.config, len(max_orders)
        self._weights = [[None] * 3 for _ in range(count)]
        for order in range(1, config.solver_order + 1):
            steps = [i for i in range(order - 1, count) if max_orders[i] >= order]
            if steps:
                found = update_weights(self.sigmas, steps, order, config.algorithm_type, config.solver_type, singlestep)
                for i, w in zip(steps, found, strict=True):
                    self._weights[i][order - 1] = w
        alpha, sigma = vp_alpha_sigma(self.sigmas[:count])
        self._alpha, self._sigma = alpha.tolist(), sigma.tolist()
        self._snapshot_options(config)  # the last of set_timesteps: after any config change it makes

    def _convert_and_keep(
        self, model_output: torch.Tensor, sample: torch.Tensor, config: Any
    ) -> tuple[int, torch.Tensor]:
        """This step's index and converted model output (see ``convert_model_output``), kept as the newest one."""
        i = self._step_in_schedule(self.num_inference_steps, past_end=IndexError)
        name, alpha, sigma = type(self).__name__, self._alpha[i], self._sigma[i]
        converted = convert_model_output(name, config, model_output, sample, alpha, sigma)
        self.model_outputs = [*self.model_outputs[1:], converted]
        return i, converted
