"""DEIS multistep sampler: Zhang & Chen 2022, "Fast Sampling of Diffusion Models with Exponential Integrator".

The probability-flow ODE is integrated exactly in its linear part (the exponential integrator); the epsilon term is
extrapolated by a Lagrange polynomial in log(rho), rho = sigma_t / alpha_t (the multistep "rhoAB-DEIS" of Sec. 3), so
each step is a fixed linear combination of the current sample and the last 1-3 noise predictions.

The module also holds the pieces the multistep exponential-integrator family shares (DEIS, UniPC): their
"n + 1 points, drop the last" timestep spacing, the sigma grid built on it, and dynamic thresholding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch

from ..configuration import register_to_config
from ..errors import ConfigError
from .base import SchedulerMixin, SchedulerOutput
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

PredictionType = Literal["epsilon", "sample", "v_prediction", "flow_prediction"]


def multistep_timesteps(
    spacing: str, num_train_timesteps: int, num_inference_steps: int, steps_offset: int
) -> np.ndarray:
    """Descending int64 timesteps of the multistep solvers (Lin et al. 2023 Table 2, as DPM-Solver spaces them).

    ``linspace`` and ``leading`` place ``n + 1`` points and drop the last (t = 0), so no step lands on t = 0.
    """
    n, total = num_inference_steps, num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, total - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        return (np.arange(0, n + 1) * (total // (n + 1))).round()[::-1][:-1].astype(np.int64) + steps_offset
    if spacing == "trailing":
        return np.arange(total, 0, -total / n).round().astype(np.int64) - 1
    raise ConfigError(f"timestep_spacing must be one of 'linspace', 'leading', 'trailing'; got {spacing!r}")


def multistep_schedule(
    config: Mapping[str, Any], alphas_cumprod: torch.Tensor, num_inference_steps: int, final_sigma_zero: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps, float32 sigmas with one extra final entry) for the DEIS / UniPC family.

    Karras, exponential and beta grids run between ``config["sigma_min"]`` / ``["sigma_max"]`` when the config
    has them (diffusers reads these keys even for classes whose ``__init__`` lacks them, e.g. DEIS built from
    a UniPC config) and the training extremes otherwise. The final sigma is 0 or the smallest sigma.
    """
    n = num_inference_steps
    timesteps: np.ndarray = multistep_timesteps(
        config["timestep_spacing"], config["num_train_timesteps"], n, config["steps_offset"]
    )
    # float32, ascending in t. Computed in torch as diffusers does: torch's float32 sqrt differs from numpy's in
    # the last bit for ~20% of entries, which schedules.sigmas_from_alphas_cumprod (numpy) does not reproduce.
    train_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).numpy()
    if config["use_karras_sigmas"] or config["use_exponential_sigmas"] or config["use_beta_sigmas"]:
        log_sigmas = np.log(train_sigmas)
        sigma_min = config.get("sigma_min")
        sigma_max = config.get("sigma_max")
        sigma_min = float(train_sigmas[0]) if sigma_min is None else sigma_min
        sigma_max = float(train_sigmas[-1]) if sigma_max is None else sigma_max
        if config["use_karras_sigmas"]:
            sigmas = karras_sigmas(sigma_min, sigma_max, n)
            timesteps = sigma_to_t(sigmas, log_sigmas).round()
        elif config["use_exponential_sigmas"]:
            # diffusers quirk: exponential and beta timesteps are not rounded, so the int64 cast truncates them.
            sigmas = exponential_sigmas(sigma_min, sigma_max, n)
            timesteps = sigma_to_t(sigmas, log_sigmas)
        else:
            sigmas = beta_sigmas(sigma_min, sigma_max, n)
            timesteps = sigma_to_t(sigmas, log_sigmas)
        final = 0.0 if final_sigma_zero else sigmas[-1]
    else:
        sigmas = np.interp(timesteps, np.arange(0, len(train_sigmas)), train_sigmas)
        final = 0.0 if final_sigma_zero else float(train_sigmas[0])
    return timesteps, np.concatenate([sigmas, [final]]).astype(np.float32)


def vp_alpha_sigma(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t = 1 / sqrt(1 + sigma^2) and sigma_t = sigma * alpha_t from the noise-to-signal ratio sigma."""
    alpha_t = 1 / ((sigmas**2 + 1) ** 0.5)
    return alpha_t, sigmas * alpha_t


def threshold_sample(sample: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding, Saharia et al. 2022 (Imagen) Sec. 2.3: clip x0 to the ``ratio`` quantile s, divide by s."""
    batch, channels, *rest = sample.shape
    flat = sample.reshape(batch, channels * math.prod(rest))  # [B, C*H*W]
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)  # [B, 1]
    return (torch.clamp(flat, -s, s) / s).reshape(sample.shape)


def index_for_timestep(timestep: torch.Tensor | int, schedule: torch.Tensor) -> int:
    """Schedule position of ``timestep`` for ``add_noise``: the second match if repeated, the last index if absent."""
    matches = (schedule == timestep).nonzero()
    if len(matches) == 0:
        return len(schedule) - 1
    return int(matches[1 if len(matches) > 1 else 0].item())


def reject_flow_options(owner: str, **options: tuple[object, object]) -> None:
    """Raise ConfigError for any flow-matching option set away from its default (given as (value, default))."""
    for key, (value, default) in options.items():
        if value != default:
            raise ConfigError(
                f"{owner}: {key}={value!r} is only used by flow-matching models, which are not supported by "
                f"schedcmp; leave it at {default!r}"
            )


def check_multistep_options(
    owner: str, solver_order: int, use_karras: bool, use_exponential: bool, use_beta: bool
) -> None:
    """Validate the options the multistep solvers share: a positive order and at most one sigma grid."""
    if isinstance(solver_order, bool) or not isinstance(solver_order, int) or solver_order < 1:
        raise ConfigError(f"{owner}: solver_order must be a whole number >= 1 (1, 2 or 3); got {solver_order!r}")
    chosen = [
        k
        for k, v in (
            ("use_karras_sigmas", use_karras),
            ("use_exponential_sigmas", use_exponential),
            ("use_beta_sigmas", use_beta),
        )
        if v
    ]
    if len(chosen) > 1:
        raise ConfigError(
            f"{owner}: only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas can be true; "
            f"got {', '.join(chosen)}"
        )


def vp_add_noise(
    scheduler: SchedulerMixin, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """alpha_t x_0 + sigma_t noise at the given schedule timesteps, with diffusers' index rules and dtypes."""
    sigmas = scheduler.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
    schedule = scheduler.timesteps.to(original_samples.device)
    timesteps = timesteps.to(original_samples.device)
    if scheduler.begin_index is None:
        indices = [index_for_timestep(t, schedule) for t in timesteps]
    else:
        start = scheduler.step_index if scheduler.step_index is not None else scheduler.begin_index
        indices = [start] * timesteps.shape[0]
    sigma = sigmas[indices].flatten()
    sigma = sigma.reshape(-1, *[1] * (original_samples.ndim - 1))  # [B, 1, 1, 1]
    alpha_t, sigma_t = vp_alpha_sigma(sigma)
    return alpha_t * original_samples + sigma_t * noise


class DEISMultistepScheduler(SchedulerMixin):
    """DEIS (rhoAB-DEIS, log-rho Lagrange extrapolation) of order 1-3 on a discrete VP noise schedule.

    ``step`` follows the schedule by counting (see ``SchedulerMixin``): its ``timestep`` argument is accepted for
    diffusers' contract but never looked up. All step coefficients are precomputed in ``set_timesteps``.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 2,
        prediction_type: PredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: Literal["deis", "dpmsolver", "dpmsolver++"] = "deis",
        solver_type: Literal["logrho", "midpoint", "heun", "bh1", "bh2"] = "logrho",
        lower_order_final: bool = True,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: TimestepSpacing = "linspace",
        steps_offset: int = 0,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential"] = "exponential",
    ) -> None:
        name = type(self).__name__
        check_multistep_options(name, solver_order, use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)
        reject_flow_options(
            name,
            use_flow_sigmas=(use_flow_sigmas, False),
            flow_shift=(flow_shift, 1.0),
            use_dynamic_shifting=(use_dynamic_shifting, False),
        )
        # diffusers quirk: DPM-Solver's algorithm and solver names are accepted and silently replaced.
        if algorithm_type != "deis":
            self.register_to_config(algorithm_type="deis")
        if solver_type != "logrho":
            self.register_to_config(solver_type="logrho")

        # Read by every step: cached here, since the config is frozen and a property lookup costs microseconds.
        self._solver_order = solver_order
        self._prediction_type = prediction_type
        self._threshold = (dynamic_thresholding_ratio, sample_max_value) if thresholding else None
        self.betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.init_noise_sigma = 1.0
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.float32)
        self.num_inference_steps: int | None = None
        self.model_outputs: list[torch.Tensor] = []
        self.lower_order_nums = 0

    @property
    def is_stochastic(self) -> bool:
        """DEIS integrates the probability-flow ODE: no noise is drawn."""
        return False

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None, mu: float | None = None
    ) -> None:
        """Place the steps and precompute every step's rhoAB-DEIS coefficients (Zhang & Chen 2022, Sec. 3)."""
        name = type(self).__name__
        reject_flow_options(name, mu=(mu, None))
        n = check_num_inference_steps(name, num_inference_steps, self.config.num_train_timesteps)
        timesteps, sigmas = multistep_schedule(self.config, self.alphas_cumprod, n, final_sigma_zero=False)
        self.sigmas = torch.from_numpy(sigmas)
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = n = len(timesteps)

        # Per-step float32 quantities, computed with diffusers' operations so the rounding is the same.
        alpha, sigma_t = vp_alpha_sigma(self.sigmas)  # [n + 1]
        lam = torch.log(alpha) - torch.log(sigma_t)
        rho = sigma_t / alpha
        log_rho = torch.from_numpy(np.log(rho.numpy()))  # diffusers takes these logs with numpy
        self._alpha = alpha.tolist()
        self._sigma = self.sigmas.tolist()
        self._sigma_t = sigma_t.tolist()
        self._coefficients = self._deis_coefficients(alpha, sigma_t, lam, rho, log_rho)

        low_final = self.config.lower_order_final and n < 15
        top = min(self._solver_order, 3)
        self._max_order = [
            1 if low_final and i == n - 1 else min(top, 2) if low_final and i == n - 2 else top for i in range(n)
        ]
        self.model_outputs = []
        self.lower_order_nums = 0
        self._reset_step_counter()

    @staticmethod
    def _deis_coefficients(
        alpha: torch.Tensor, sigma_t: torch.Tensor, lam: torch.Tensor, rho: torch.Tensor, log_rho: torch.Tensor
    ) -> dict[int, list[list[float]]]:
        """Per order p and step i: [alpha_i+1 / alpha_i, sigma_i+1 (e^h - 1)] for p = 1, else
        [alpha_i+1, alpha_i, C_0..C_p-1] with x_next = alpha_i+1 (x / alpha_i + sum_k C_k eps_i-k) (Sec. 3)."""
        i = torch.arange(len(alpha) - 1)
        h = lam[i + 1] - lam[i]
        table = {1: torch.stack([alpha[i + 1] / alpha[i], sigma_t[i + 1] * (torch.exp(h) - 1.0)], dim=1).tolist()}

        def basis2(t: torch.Tensor, lt: torch.Tensor, lb: torch.Tensor, lc: torch.Tensor) -> torch.Tensor:
            # Integral of an order-2 Lagrange basis polynomial in log(rho), as diffusers evaluates it (float32).
            return t * (-lc + lt - 1) / (lb - lc)

        def basis3(t: torch.Tensor, lt: torch.Tensor, lb: torch.Tensor, lc: torch.Tensor, ld: torch.Tensor):
            numerator = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
            return numerator / ((lb - lc) * (lb - ld))

        for order in range(2, min(3, len(alpha) - 1) + 1):
            i = torch.arange(order - 1, len(alpha) - 1)
            r_t, r_0, lt, l0, l1 = rho[i + 1], rho[i], log_rho[i + 1], log_rho[i], log_rho[i - 1]
            if order == 2:
                coefs = [
                    basis2(r_t, lt, l0, l1) - basis2(r_0, l0, l0, l1),
                    basis2(r_t, lt, l1, l0) - basis2(r_0, l0, l1, l0),
                ]
            else:
                l2 = log_rho[i - 2]
                coefs = [
                    basis3(r_t, lt, l0, l1, l2) - basis3(r_0, l0, l0, l1, l2),
                    basis3(r_t, lt, l1, l2, l0) - basis3(r_0, l0, l1, l2, l0),
                    basis3(r_t, lt, l2, l0, l1) - basis3(r_0, l0, l2, l0, l1),
                ]
            rows = torch.stack([alpha[i + 1], alpha[i], *coefs], dim=1).tolist()  # [n - order + 1, order + 2]
            table[order] = [[]] * (order - 1) + rows
        return table

    def scale_model_input(self, sample: torch.Tensor, timestep: torch.Tensor | float | None = None) -> torch.Tensor:
        """DEIS works on the unscaled sample (VP parametrisation): returned unchanged."""
        return sample

    def _epsilon(self, model_output: torch.Tensor, sample: torch.Tensor, i: int) -> torch.Tensor:
        """The model output as a noise prediction, via x0 (thresholded if asked) and Ho et al. 2020 eq. 4."""
        kind = self._prediction_type
        if kind == "epsilon" and self._threshold is None:
            return model_output  # the x0 round trip below is the identity for epsilon
        alpha_t, sigma_t = self._alpha[i], self._sigma_t[i]
        if kind == "epsilon":
            x0 = (sample - sigma_t * model_output) / alpha_t
        elif kind == "sample":
            x0 = model_output
        elif kind == "v_prediction":
            x0 = alpha_t * sample - sigma_t * model_output
        else:
            # diffusers quirk: flow_prediction uses the raw sigma, for x0 and (overwriting sigma_t) for epsilon.
            sigma_t = self._sigma[i]
            x0 = sample - sigma_t * model_output
        if self._threshold is not None:
            x0 = threshold_sample(x0, *self._threshold)
        return (sample - alpha_t * x0) / sigma_t

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor | float | None,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One rhoAB-DEIS step from sigma_i to sigma_{i+1}: exponential integrator, log-rho extrapolation (Sec. 3)."""
        if self.num_inference_steps is None:
            raise ConfigError(f"{type(self).__name__}: call set_timesteps before step")
        i = self._current_step_index()
        if i >= self.num_inference_steps:
            raise ConfigError(f"{type(self).__name__}: step called more than {self.num_inference_steps} times")
        # Notation (rho = sigma_t / alpha_t, the noise-to-signal ratio of the VP process):
        #   x_i        -> `sample`, at rho_i;   x_{i+1} -> `prev_sample`, at rho_{i+1}
        #   eps_{i-k}  -> the last p noise predictions, oldest last (`self.model_outputs`)
        #   p          -> the order in force: warm-up from 1, capped near the end by `lower_order_final`
        out_dtype = torch.promote_types(sample.dtype, model_output.dtype)
        x = sample.float()

        # 1. the model output as a noise prediction (x_t = alpha_t x0 + sigma_t eps, Ho et al. eq. 4), kept for later
        eps = self._epsilon(model_output.float(), x, i)
        self.model_outputs = [*self.model_outputs[-2:], eps]

        # 2. the order in force: lower while warming up, and possibly for the last steps
        p = min(self._max_order[i], self.lower_order_nums + 1)

        # 3. x_{i+1} = (alpha_{i+1} / alpha_i) x_i + sum_k C_k eps_{i-k}: the exponential integrator with the
        #    epsilon term integrated exactly as a degree-(p-1) Lagrange polynomial in log(rho) (rhoAB-DEIS)
        #    (written in diffusers' operation order, so the float32 rounding is the same)
        if p == 1:
            ratio, scale = self._coefficients[1][i]
            prev_sample = ratio * x - scale * eps
        else:
            alpha_next, alpha_i, *weights = self._coefficients[p][i]
            prev_sample = x / alpha_i
            for k, weight in enumerate(weights):
                prev_sample += weight * self.model_outputs[-1 - k]
            prev_sample *= alpha_next

        self.lower_order_nums = min(self.lower_order_nums + 1, self._solver_order)
        self._step_index = i + 1
        prev_sample = prev_sample.to(out_dtype)
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I) at schedule timesteps (Ho et al. 2020 eq. 4)."""
        return vp_add_noise(self, original_samples, noise, timesteps)
