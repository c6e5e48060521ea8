"""UniPC as A1111 1.10 runs it: a "timestep sampler" with its own time grid (Zhao et al. 2023, arXiv:2302.04867).

A1111 (``modules/sd_samplers_timesteps_impl.py`` ``unipc``, ``modules/models/diffusion/uni_pc/uni_pc.py``; the
UniPC update is the one in ``comfy_unipc``): the Schedule type is ignored and only the step count is used, as
``len(range(0, T, T // steps))`` with T = 1000 (``CompVisSampler.get_timesteps``, one more step with "always
discard next-to-last sigma"; so 7 steps run 8). The solver's continuous time t runs ``uni_pc_skip_type``-spaced
from 1 to 1/T (the discrete ``NoiseScheduleVP``: log alpha interpolated linearly between the training steps t_k =
(k + 1) / T), the UNet sees t_in = T (t - 1/T) (fractional, 999 down to 0), and the sampler starts from unscaled
noise z = x_VP at t = 1. The model is called at every time but the last, t_in = 0 (sigma_min, not 0), where the
sample is returned in VP form (alpha(t_0) x, not x0). A v-prediction model's output becomes eps with the training
alphas at ``int(t_in)`` (``CompVisTimestepsVDenoiser``), not at t_in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
import torch

from ...configuration import Range
from ...errors import ConfigError
from ..base import cast, step_scalars
from ..k_sampler import KSampler, Program, sampler_config
from .comfy_unipc import unipc_orders, unipc_program, unipc_steps


class A1111UniPCSampler(KSampler):
    """UniPC multistep predictor-corrector on A1111's own time grid (A1111 1.10 "UniPC").

    Per step from t_s to t_t: predictor x' = (sigma_t / sigma_s) x + (1 - sigma_t / sigma_s) D_s - B(h) sum a_m
    D1_m, model call at x', corrector with D(x') as one more difference; the last step predicts only. Orders 1 ..
    uni_pc_order - 1 to start, then uni_pc_order (lowered to 2 and 1 at the end with uni_pc_lower_order_final).
    The schedule, timestep_type and noise_scaling keys do not apply; discard_penultimate_sigma adds a step.
    """

    @sampler_config
    def __init__(
        self,
        uni_pc_variant: Literal["bh1", "bh2", "vary_coeff"] = "bh1",
        uni_pc_skip_type: Literal["time_uniform", "time_quadratic", "logSNR"] = "time_uniform",
        uni_pc_order: Annotated[int, Range(ge=1, le=50)] = 3,
        uni_pc_lower_order_final: bool = True,
    ):
        """UniPC with A1111's settings of the same names (Settings > Sampler parameters; these are its defaults)."""

    @property
    def init_noise_sigma(self) -> float:
        """A1111 starts from unit noise in VP form: sqrt(1 + sigma_0^2) z in sigma form."""
        sigma_0 = self._grid[0] if len(self.sigmas) else float(self.train_sigmas[-1])
        return math.sqrt(1.0 + sigma_0**2)

    def _log_alpha_table(self) -> tuple[np.ndarray, np.ndarray]:
        """NoiseScheduleVP's keypoints: times (k + 1) / T and log alpha = log(alpha-bar_k) / 2 (float32 values)."""
        times = torch.linspace(0.0, 1.0, len(self.alphas_cumprod) + 1)[1:]
        return times.double().numpy(), (0.5 * torch.log(self.alphas_cumprod)).double().numpy()

    def _schedule(self, steps: int) -> tuple[torch.Tensor, np.ndarray]:
        """The ``steps + 1`` solver times (float32, as A1111 computes them) and log alpha at each."""
        times, log_alpha = self._log_alpha_table()
        t_end = 1.0 / len(times)
        skip_type = self.config.uni_pc_skip_type
        if skip_type == "time_uniform":
            t = torch.linspace(1.0, t_end, steps + 1)
        elif skip_type == "time_quadratic":
            t = torch.linspace(1.0, t_end**0.5, steps + 1).pow(2)
        else:  # logSNR: uniform in lambda = log alpha - log std between the ends, mapped back to t
            ends = torch.tensor(log_alpha[[-1, 0]], dtype=torch.float32)
            lambda_ends = ends - 0.5 * torch.log(1.0 - torch.exp(2.0 * ends))
            lambdas = torch.linspace(float(lambda_ends[0]), float(lambda_ends[1]), steps + 1).double().numpy()
            t = torch.from_numpy(np.interp(-0.5 * np.logaddexp(0.0, -2.0 * lambdas), log_alpha[::-1], times[::-1]))
            t = t.float()
        return t, np.interp(t.double().numpy(), times, log_alpha)

    def _steps_for(self, num_inference_steps: int) -> int:
        """The number of steps A1111 runs for a requested count (``CompVisSampler.get_timesteps``)."""
        train = len(self.alphas_cumprod)
        requested = num_inference_steps + (1 if self.config.discard_penultimate_sigma else 0)
        if requested > train:
            raise ConfigError(f"{type(self).__name__}: A1111's stride {train} // steps needs at most {train} steps, "
                              f"got {requested}")
        return len(range(0, train, train // requested))

    def sigma_grid(self, num_inference_steps: int) -> torch.Tensor:
        """sigma = sqrt(1 / alpha^2 - 1) at A1111's solver times (the schedule type is ignored, as in A1111)."""
        _, log_alpha = self._schedule(self._steps_for(num_inference_steps))
        return torch.from_numpy(np.sqrt(np.expm1(-2.0 * log_alpha))).float()

    def model_timesteps(self, sigmas: Sequence[float]) -> torch.Tensor:
        """A1111's UNet timesteps T (t - 1/T) at the first ``len(sigmas)`` solver times (the calls)."""
        t, _ = self._schedule(len(sigmas))
        return (t[:-1] - 1.0 / len(self.alphas_cumprod)) * len(self.alphas_cumprod)

    def custom_grid(self, sigmas: Sequence[float] | torch.Tensor | None,
                    timesteps: Sequence[float] | torch.Tensor | None) -> torch.Tensor:
        """Refused: A1111's UniPC builds its own time grid."""
        raise ConfigError(f"{type(self).__name__} builds A1111's own time grid: custom sigmas or timesteps do "
                          "not apply")

    def prepare_grid(self) -> None:
        """Every step's UniPC coefficients on A1111's grid (and v's conversion at A1111's integer alphas)."""
        config, owner = self.config, type(self).__name__
        n = self.num_inference_steps
        if n < config.uni_pc_order:
            raise ConfigError(f"{owner}: uni_pc_order {config.uni_pc_order} needs at least as many steps; A1111 runs "
                              f"{n} here (its 'UniPC order must be < sampling steps')")
        _, log_alpha = self._schedule(n)
        noise_levels = np.sqrt(np.expm1(-2.0 * log_alpha)).tolist()
        orders = unipc_orders(n, config.uni_pc_order, config.uni_pc_lower_order_final)
        self._steps = unipc_steps(noise_levels, orders, config.uni_pc_variant)
        self._final_scale = math.exp(log_alpha[-1])  # A1111 returns the VP sample alpha x at t_0
        self._v_coefficients = None
        if config.prediction_type == "v_prediction":  # eps = a_k v + s_k x_VP with k = int(t_in)
            k = self.timesteps.cpu().to(torch.int64)
            a_k = self.alphas_cumprod[k].double().sqrt().numpy()
            s_k = (1 - self.alphas_cumprod[k].double()).sqrt().numpy()
            alpha = np.exp(log_alpha[:-1])
            std = np.sqrt(-np.expm1(2.0 * log_alpha[:-1]))
            self._v_coefficients = (step_scalars(1.0 - std * s_k), step_scalars(-std * a_k / alpha))

    def denoised(self, model_output: torch.Tensor, sample: torch.Tensor, call: int) -> torch.Tensor:
        """D of call ``call``; a v prediction is converted with the alphas at ``int(t_in)``, as A1111 does."""
        if self._v_coefficients is None:
            return super().denoised(model_output, sample, call)
        skip, out = self._v_coefficients
        return sample * skip[call] + out[call] * cast(model_output, torch.float32)

    def program(self, x: torch.Tensor) -> Program:
        x = yield from unipc_program(x, self._steps)
        return x * self._final_scale
