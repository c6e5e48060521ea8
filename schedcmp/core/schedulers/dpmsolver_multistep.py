"""DPM-Solver and DPM-Solver++ in their multistep form, with the SDE variants.

Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"
(arXiv:2211.01095), Alg. 2 (DPM-Solver++(2M)) and its third-order and SDE counterparts, on the noise- or
data-prediction ODE of Lu et al. 2022a (arXiv:2206.00927); the shared solver math is in ``dpmsolver.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from ..configuration import Fraction, NonNegativeInt, PositiveFloat, PositiveInt, register_to_config
from ..errors import ConfigError
from .base import SchedulerOutput, randn_tensor
from .dpmsolver import DPMSolverScheduler, SolverType, apply_update, check_common_options
from .schedules import Beta, BetaSchedule, TimestepSpacing, TrainedBetas
from .vp import SolverPredictionType

# diffusers accepts the DEIS / UniPC names so their configs load, and maps them to DPM-Solver++ / midpoint.
AlgorithmType = Literal["dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++", "deis"]


class DPMSolverMultistepScheduler(DPMSolverScheduler):
    """Multistep DPM-Solver / DPM-Solver++ (ODE or SDE), orders 1-3; the "DPM++ 2M (Karras)" sampler."""

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
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: PositiveFloat = 1.0,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: TimestepSpacing = "linspace",
        steps_offset: NonNegativeInt = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential"] = "exponential",
    ) -> None:
        name = type(self).__name__
        check_common_options(name, self.config)
        if algorithm_type == "sde-dpmsolver" and solver_order == 3:
            # diffusers has no third-order SDE-DPM-Solver and fails at the first third-order step
            raise ConfigError(f"{name}: solver_order=3 is not available for algorithm_type='sde-dpmsolver'; use 1 or 2")
        self._setup(rescale_betas_zero_snr)
        self.lower_order_nums = 0
        self._max_order: list[int] = []

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        mu: float | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        """Choose the sampling timesteps and precompute every step's order and weights (Lu et al. 2022b Alg. 2)."""
        config = self.config
        grid = next((g for g, key in (("karras", "use_karras_sigmas"), ("lu", "use_lu_lambdas"),
                                      ("exponential", "use_exponential_sigmas"), ("beta", "use_beta_sigmas"))
                     if config[key]), None)
        # Karras and Lu grids round their timesteps except on the cosine schedule (diffusers quirk).
        count = self._place_timesteps(
            num_inference_steps,
            timesteps,
            mu,
            device,
            grid,
            spacing=config.timestep_spacing,
            steps_offset=config.steps_offset,
            round_grid=config.beta_schedule != "squaredcos_cap_v2",
        )
        self.lower_order_nums = 0

        # Order cap per step: 1 at the end (final sigma 0, euler_at_final, or < 15 steps), 2 just before.
        short = config.lower_order_final and count < 15
        final_first = config.euler_at_final or short or config.final_sigmas_type == "zero"
        self._max_order = [config.solver_order] * count
        if final_first:
            self._max_order[-1] = 1
        if count >= 2 and short:
            self._max_order[-2] = min(2, self._max_order[-2])
        self._solve_weights(self._max_order, singlestep=False)

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

        # 1. convert the model output to the solver's target, x0 (DPM-Solver++) or eps (DPM-Solver), Sec. 3
        config = self._options
        i, converted = self._convert_and_keep(model_output, sample, config)

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
        return self._finish_step(i, prev_sample.to(converted.dtype), None, return_dict)
