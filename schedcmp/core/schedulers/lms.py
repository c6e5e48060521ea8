"""Linear multistep (Adams-Bashforth style) sampling of the probability-flow ODE in sigma space.

k-diffusion's ``sample_lms`` (Crowson) on the ODE of Karras et al. 2022 ("Elucidating the Design Space of
Diffusion-Based Generative Models", arXiv:2206.00364, eq. 3): the past slopes are interpolated by a Lagrange
polynomial in sigma and integrated over the step. The integrals are exact (Gauss-Legendre quadrature of a
polynomial) and computed in ``set_timesteps``; diffusers calls ``scipy.integrate.quad`` at every step instead.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ..configuration import NonNegativeInt, PositiveInt, register_to_config
from ..errors import ConfigError
from .base import SchedulerOutput
from .schedules import (
    Beta,
    BetaSchedule,
    TimestepSpacing,
    TrainedBetas,
    check_sigma_grid_choice,
    chosen_sigma_grid,
)
from .sigma_space import SigmaScheduler, init_noise_sigma_of, sigma_schedule, train_alphas_cumprod, with_final_sigma


def lms_coefficients(sigmas: np.ndarray, order: int) -> list[list[float]]:
    """Integrals over [sigma_t, sigma_{t+1}] of the Lagrange basis on sigma_t, ..., sigma_{t-order+1}, per step t.

    Entry t lists the weight of the slope at sigma_{t-k} for k = 0..order-1; steps t < order - 1 (too few past
    points) get an empty list. Gauss-Legendre with ``order`` nodes is exact for the degree ``order - 1`` basis.
    """
    steps = len(sigmas) - 1
    table: list[list[float]] = [[] for _ in range(steps)]
    if steps < order:
        return table
    t = np.arange(order - 1, steps)
    nodes = np.stack([sigmas[t - k] for k in range(order)])  # [order, T]
    a, b = sigmas[t], sigmas[t + 1]
    x, w = np.polynomial.legendre.leggauss(order)
    tau = (a + b) / 2 + np.outer(x, (b - a) / 2)  # [Q, T]
    weights = []
    # Repeated sigmas (a schedule clamped past the last training step) give non-finite weights, as in diffusers.
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(order):
            basis = np.ones_like(tau)
            for j in range(order):
                if j != k:
                    basis *= (tau - nodes[j]) / (nodes[k] - nodes[j])
            weights.append((b - a) / 2 * (w @ basis))  # [T]
    table[order - 1:] = np.stack(weights, axis=1).tolist()  # [T, order]
    return table


class LMSDiscreteScheduler(SigmaScheduler):
    """Linear multistep sampler on sigma = sqrt((1 - abar) / abar), up to 4th order by default.

    The multistep weights for every step are computed once per schedule (per ``order``). Like diffusers, ``step``
    computes in the dtype of its inputs (no float32 upcast).
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
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        timestep_spacing: TimestepSpacing = "linspace",
        steps_offset: NonNegativeInt = 0,
    ) -> None:
        check_sigma_grid_choice(type(self).__name__, self.config)
        self.alphas_cumprod = train_alphas_cumprod(self.config)
        self.num_inference_steps: int | None = None
        self.set_timesteps(num_train_timesteps)  # diffusers' initial state is the full-length schedule

    @property
    def is_stochastic(self) -> bool:
        """False: LMS is a deterministic ODE solver."""
        return False

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Spaced timesteps (Lin et al. 2023 Table 2) to sigmas, optionally respaced; LMS weights for orders 1-4."""
        config = self.config
        n = self._checked_steps(num_inference_steps, config.num_train_timesteps)
        self.num_inference_steps = n
        # diffusers' LMS bounds karras by the schedule alone, but exponential / beta by a `sigma_min` /
        # `sigma_max` config entry when one exists (e.g. a hidden key kept from another class's config).
        by_config = chosen_sigma_grid(config) not in (None, "karras")
        timesteps, sigmas, _ = sigma_schedule(
            config,
            self.alphas_cumprod,
            n,
            sigma_min=config.get("sigma_min") if by_config else None,
            sigma_max=config.get("sigma_max") if by_config else None,
        )
        self.sigmas = with_final_sigma(sigmas)
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.float32)
        self.init_noise_sigma = init_noise_sigma_of(self.sigmas, config.timestep_spacing)
        self._prediction_type = config.prediction_type
        self._set_model_sigmas(self.sigmas)
        self._sigmas64 = self.sigmas.numpy().astype(np.float64)
        self._weights = {order: lms_coefficients(self._sigmas64, order) for order in range(1, 5)}
        self.derivatives: list[torch.Tensor] = []
        self._reset_step_counter()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor | None,
        sample: torch.Tensor,
        order: int = 4,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One linear multistep step: x_{t+1} = x_t + sum_k w_k d_{t-k} (k-diffusion ``sample_lms``)."""
        # Notation:
        # x     -> sample at sigma_t
        # x0    -> pred_original_sample, the denoised estimate from the model output
        # d_t   -> derivative (x - x0) / sigma_t, the ODE slope dx/dsigma (Karras et al. 2022 eq. 3)
        # w_k   -> integral over [sigma_t, sigma_{t+1}] of the Lagrange basis polynomial of node sigma_{t-k}
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ConfigError(f"{type(self).__name__}.step: order must be a whole number >= 1, got {order!r}")
        i = self._current_step_index()
        sigma = self._model_sigma[i]

        # 1. x0 from the model output: eps, v (Salimans & Ho 2022 sec. 4) or x0 itself
        pred_original_sample = self._predicted_x0(model_output, sample, i, sigma)

        # 2. slope d_t, kept with at most `order` past ones (diffusers trims one per step)
        self.derivatives.append((sample - pred_original_sample) / sigma)
        if len(self.derivatives) > order:
            self.derivatives.pop(0)

        # 3. x_{t+1} = x_t + sum_k w_k d_{t-k}, the order capped by the steps taken so far (fewer slopes than
        #    weights after set_begin_index: the sum stops at the slopes there are, as in diffusers)
        used = min(i + 1, order)
        weights = self._weights.get(used)
        if weights is None:
            weights = self._weights[used] = lms_coefficients(self._sigmas64, used)
        increment = None
        for weight, derivative in zip(weights[i], reversed(self.derivatives), strict=False):
            term = weight * derivative
            increment = term if increment is None else increment + term
        prev_sample = sample + increment
        return self._finish_step(i, prev_sample, pred_original_sample, return_dict)
