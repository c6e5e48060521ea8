"""DEIS multistep sampler: Zhang & Chen 2022, "Fast Sampling of Diffusion Models with Exponential Integrator".

The probability-flow ODE is integrated exactly in its linear part (the exponential integrator); the epsilon term is
extrapolated by a Lagrange polynomial in log(rho), rho = sigma_t / alpha_t (the multistep "rhoAB-DEIS" of Sec. 3), so
each step is a fixed linear combination of the current sample and the last 1-3 noise predictions.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ..configuration import Fraction, NonNegativeInt, PositiveFloat, PositiveInt, register_to_config
from .base import SchedulerOutput
from .multistep import MultistepScheduler
from .schedules import Beta, BetaSchedule, TimestepSpacing, TrainedBetas
from .vp import SolverPredictionType, reject_flow_options


class DEISMultistepScheduler(MultistepScheduler):
    """DEIS (rhoAB-DEIS, log-rho Lagrange extrapolation) of order 1-3 on a discrete VP noise schedule."""

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: PositiveInt = 1000,
        beta_start: Beta = 0.0001,
        beta_end: Beta = 0.02,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: TrainedBetas | None = None,
        solver_order: PositiveInt = 2,
        prediction_type: SolverPredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: Fraction = 0.995,
        sample_max_value: PositiveFloat = 1.0,
        algorithm_type: Literal["deis", "dpmsolver", "dpmsolver++"] = "deis",
        solver_type: Literal["logrho", "midpoint", "heun", "bh1", "bh2"] = "logrho",
        lower_order_final: bool = True,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: PositiveFloat = 1.0,
        timestep_spacing: TimestepSpacing = "linspace",
        steps_offset: NonNegativeInt = 0,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential"] = "exponential",
    ) -> None:
        self._setup()
        # diffusers quirk: DPM-Solver's algorithm and solver names are accepted and silently replaced.
        if algorithm_type != "deis":
            self.register_to_config(algorithm_type="deis")
        if solver_type != "logrho":
            self.register_to_config(solver_type="logrho")

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None, mu: float | None = None
    ) -> None:
        """Place the steps and precompute every step's rhoAB-DEIS coefficients (Zhang & Chen 2022, Sec. 3)."""
        reject_flow_options(type(self).__name__, mu=(mu, None))
        alpha, sigma_t = self._place_timesteps(num_inference_steps, device, final="schedule_min")
        n = self.num_inference_steps

        # Per-step float32 quantities, computed with diffusers' operations so the rounding is the same.
        lam = torch.log(alpha) - torch.log(sigma_t)
        rho = sigma_t / alpha
        log_rho = torch.from_numpy(np.log(rho.numpy()))  # diffusers takes these logs with numpy
        self._coefficients = self._deis_coefficients(alpha, sigma_t, lam, rho, log_rho)

        low_final = self.config.lower_order_final and n < 15
        top = min(self._solver_order, 3)
        self._max_order = [
            1 if low_final and i == n - 1 else min(top, 2) if low_final and i == n - 2 else top for i in range(n)
        ]

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

    def _epsilon(self, model_output: torch.Tensor, sample: torch.Tensor, i: int) -> torch.Tensor:
        """The model output as a noise prediction, via x0 (thresholded if asked) and Ho et al. 2020 eq. 4."""
        if self._prediction_type == "epsilon" and self._threshold is None:
            return model_output  # the x0 round trip below is the identity for epsilon
        x0 = self._x0(model_output, sample, i)
        # diffusers quirk: flow_prediction's epsilon divides by the raw sigma, not sigma_t.
        sigma_t = self._sigma[i] if self._prediction_type == "flow_prediction" else self._sigma_t[i]
        return (sample - self._alpha[i] * x0) / sigma_t

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor | float | None,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One rhoAB-DEIS step from sigma_i to sigma_{i+1}: exponential integrator, log-rho extrapolation (Sec. 3)."""
        i = self._step_in_schedule(self.num_inference_steps)
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
        return self._finish_step(i, prev_sample.to(out_dtype), None, return_dict)
