"""DPM-Solver and DPM-Solver++ in their singlestep form.

Lu et al. 2022a, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around 10 Steps"
(arXiv:2206.00927), Alg. 1-2 (DPM-Solver-2 / -3), and Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided
Sampling of Diffusion Probabilistic Models" (arXiv:2211.01095), Alg. 1 (DPM-Solver++(2S)). A k-th order step
spans k scheduler steps: each one restarts from the sample remembered at the start of the group and uses every
model output gathered since, so only the group's last step lands on the high-order solution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from ..configuration import Fraction, PositiveFloat, PositiveInt, register_to_config
from .base import SchedulerOutput, randn_tensor
from .dpmsolver import DPMSolverScheduler, SolverType, apply_update, check_common_options
from .schedules import Beta, BetaSchedule, TrainedBetas, chosen_sigma_grid
from .vp import SolverPredictionType

# diffusers accepts "deis" so DEIS configs load, and maps it to DPM-Solver++.
AlgorithmType = Literal["dpmsolver", "dpmsolver++", "sde-dpmsolver++", "deis"]


class DPMSolverSinglestepScheduler(DPMSolverScheduler):
    """Singlestep DPM-Solver / DPM-Solver++ (ODE, or SDE-DPM-Solver++), orders 1-3."""

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: PositiveInt = 1000,
        beta_start: Beta = 0.0001,
        beta_end: Beta = 0.02,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: TrainedBetas | None = None,
        solver_order: Literal[1, 2, 3] = 2,
        prediction_type: SolverPredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: Fraction = 0.995,
        sample_max_value: PositiveFloat = 1.0,
        algorithm_type: AlgorithmType = "dpmsolver++",
        solver_type: SolverType = "midpoint",
        lower_order_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: PositiveFloat = 1.0,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential"] = "exponential",
    ) -> None:
        check_common_options(type(self).__name__, self.config)
        self._setup()
        self.sample: torch.Tensor | None = None
        self.order_list: list[int] = []

    def _order_list(self, steps: int) -> list[int]:
        """Each step's solver order: groups 1, 2(, 3) as in DPM-Solver-fast (Lu et al. 2022a), lower at the end."""
        order, final_low = self.config.solver_order, self.config.lower_order_final
        cycle = list(range(1, order + 1))
        if not final_low or order == 1:
            orders = cycle * (steps // order)
        elif order == 3:
            tails = {0: [1, 2, 1], 1: [1], 2: [1, 2]}
            orders = cycle * (steps // 3 - (steps % 3 == 0)) + tails[steps % 3]
        else:
            orders = cycle * (steps // 2 - (steps % 2 == 0)) + ([1, 1] if steps % 2 == 0 else [1])
        if self.config.final_sigmas_type == "zero":
            orders[-1] = 1
        return orders

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        mu: float | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        """Choose the sampling timesteps and precompute every step's order and weights (Lu et al. 2022b Alg. 1)."""
        config = self.config
        n = self._place_timesteps(num_inference_steps, timesteps, mu, device, chosen_sigma_grid(config))
        self.sample = None

        # diffusers quirk: an uneven step count or a zero final sigma switch lower_order_final on, in the config.
        if not config.lower_order_final and (n % config.solver_order != 0 or config.final_sigmas_type == "zero"):
            self.register_to_config(lower_order_final=True)
        self.order_list = self._order_list(n)
        self._solve_weights(self.order_list, singlestep=True)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One singlestep DPM-Solver(++) update to sigmas[i + 1] from the group start (Lu et al. 2022b Alg. 1)."""
        # Notation (Lu et al. 2022a/b):
        # - x_s: the sample at the start of the current group (sigmas[i - k + 1] for order k), x_t: the next sample
        # - alpha, sigma: VP signal and noise scales, lambda = log(alpha / sigma), h = lambda_t - lambda_s
        # - m_j: converted model outputs (x0 or eps) at sigmas[i - j];  z: standard normal noise (SDE variant)

        # 1. convert the model output to the solver's target, x0 (DPM-Solver++) or eps (DPM-Solver)
        config = self._options
        i, converted = self._convert_and_keep(model_output, sample, config)

        # 2. noise for SDE-DPM-Solver++: drawn at every step, in the converted output's dtype
        noise = None
        if config.algorithm_type == "sde-dpmsolver++":
            noise = randn_tensor(converted.shape, generator=generator, device=converted.device, dtype=converted.dtype)

        # 3. order from the order list, lowered while outputs are missing (a loop started part way, img2img)
        order = self.order_list[i]
        while self.model_outputs[-order] is None:
            order -= 1
        if order == 1:
            self.sample = sample  # a new group starts here

        # 4. x_t = (sigma_t/sigma_s) x_s - alpha_t (e^-h - 1) D0 + ... from the group start, folded into weights
        prev_sample = apply_update(self.sample, self.model_outputs, order, self._weights[i][order - 1], noise,
                                   singlestep=True)
        return self._finish_step(i, prev_sample, None, return_dict)
