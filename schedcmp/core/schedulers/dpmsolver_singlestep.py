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

import numpy as np
import torch

from ..configuration import register_to_config
from ..errors import ConfigError
from .base import SchedulerMixin, SchedulerOutput, randn_tensor
from .dpmsolver_multistep import (
    PredictionType,
    SolverType,
    Weights,
    add_noise_vp,
    apply_update,
    check_common_options,
    check_custom_timesteps,
    convert_model_output,
    noise_levels,
    update_weights,
    vp_alpha_sigma,
)
from .schedules import BetaSchedule, check_num_inference_steps, make_betas

# diffusers accepts "deis" so DEIS configs load, and maps it to DPM-Solver++.
AlgorithmType = Literal["dpmsolver", "dpmsolver++", "sde-dpmsolver++", "deis"]


class DPMSolverSinglestepScheduler(SchedulerMixin):
    """Singlestep DPM-Solver / DPM-Solver++ (ODE, or SDE-DPM-Solver++), orders 1-3.

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
        lower_order_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential"] = "exponential",
    ) -> None:
        check_common_options(type(self).__name__, self.config)
        if algorithm_type == "deis":
            self.register_to_config(algorithm_type="dpmsolver++")
        if solver_type in ("logrho", "bh1", "bh2"):
            self.register_to_config(solver_type="midpoint")

        self.betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.init_noise_sigma = 1.0
        # Before set_timesteps diffusers holds the training sigmas (ascending) and descending float timesteps.
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.timesteps = torch.from_numpy(
            np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=np.float32)[::-1].copy()
        )
        self.num_inference_steps: int | None = None
        self.model_outputs: list[torch.Tensor | None] = [None] * solver_order
        self.sample: torch.Tensor | None = None
        self.order_list: list[int] = []
        self._weights: list[list[Weights | None]] = []
        self._alpha: list[float] = []
        self._sigma: list[float] = []

    @property
    def is_stochastic(self) -> bool:
        """True for SDE-DPM-Solver++, which draws fresh noise at every step."""
        return self.config.algorithm_type == "sde-dpmsolver++"

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
        name, config = type(self).__name__, self.config
        if mu is not None:
            raise ConfigError(f"{name}: mu (dynamic shifting) is for flow-matching models, which are not supported "
                              "by schedcmp")
        if (num_inference_steps is None) == (timesteps is None):
            raise ConfigError(f"{name}: pass exactly one of num_inference_steps or timesteps")
        grid = next((g for g in ("karras", "exponential", "beta") if config[f"use_{g}_sigmas"]), None)
        if timesteps is not None:
            if grid is not None:
                raise ConfigError(f"{name}: custom timesteps cannot be combined with use_{grid}_sigmas=True")
            spaced = check_custom_timesteps(name, timesteps, config.num_train_timesteps)
            n = len(spaced)
        else:
            n = check_num_inference_steps(name, num_inference_steps, config.num_train_timesteps)
            # n + 1 points up to lambda_min_clipped, the last dropped
            clipped = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), config.lambda_min_clipped))
            top = config.num_train_timesteps - 1 - clipped
            spaced = np.linspace(0, top, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        ts, sigmas = noise_levels(config, self.alphas_cumprod, spaced, n, grid, round_grid=True)
        self.sigmas = torch.from_numpy(sigmas)
        self.timesteps = torch.from_numpy(ts).to(device=device, dtype=torch.int64)
        self.num_inference_steps = n
        self.model_outputs = [None] * config.solver_order
        self.sample = None
        self._reset_step_counter()

        # diffusers quirk: an uneven step count or a zero final sigma switch lower_order_final on, in the config.
        if not config.lower_order_final and (n % config.solver_order != 0 or config.final_sigmas_type == "zero"):
            self.register_to_config(lower_order_final=True)
        self.order_list = self._order_list(n)
        self._weights = [[None] * 3 for _ in range(n)]
        for order in range(1, config.solver_order + 1):
            steps = [i for i in range(order - 1, n) if self.order_list[i] >= order]
            if steps:
                found = update_weights(self.sigmas, steps, order, config.algorithm_type, config.solver_type, True)
                for i, w in zip(steps, found, strict=True):
                    self._weights[i][order - 1] = w
        alpha, sigma = vp_alpha_sigma(self.sigmas[:n])
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
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One singlestep DPM-Solver(++) update to sigmas[i + 1] from the group start (Lu et al. 2022b Alg. 1)."""
        # Notation (Lu et al. 2022a/b):
        # - x_s: the sample at the start of the current group (sigmas[i - k + 1] for order k), x_t: the next sample
        # - alpha, sigma: VP signal and noise scales, lambda = log(alpha / sigma), h = lambda_t - lambda_s
        # - m_j: converted model outputs (x0 or eps) at sigmas[i - j];  z: standard normal noise (SDE variant)
        if self.num_inference_steps is None:
            raise ConfigError(f"{type(self).__name__}: call set_timesteps before step")
        config = self.config
        i = self._current_step_index()
        if i >= self.num_inference_steps:
            raise IndexError(f"{type(self).__name__}: all {self.num_inference_steps} steps were taken; "
                             "call set_timesteps to start a new loop")

        # 1. convert the model output to the solver's target, x0 (DPM-Solver++) or eps (DPM-Solver)
        converted = convert_model_output(type(self).__name__, config, model_output, sample,
                                         self._alpha[i], self._sigma[i])
        self.model_outputs = [*self.model_outputs[1:], converted]

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
        self._step_index = i + 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Noise clean samples to the schedule positions of ``timesteps`` (Ho et al. 2020 eq. 4)."""
        return add_noise_vp(self, original_samples, noise, timesteps)
