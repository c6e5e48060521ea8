"""DPM-Solver++ (stochastic, second order): k-diffusion's ``sample_dpmpp_sde`` with a Brownian noise path.

Lu, Zhou, Bao, Chen, Li & Zhu 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models" (arXiv:2211.01095), the singlestep data-prediction solver DPM-Solver++(2S) (Alg. 1) in t = -log(sigma),
made stochastic with the ancestral split of each sub-step and Brownian increments, as in Katherine Crowson's
k-diffusion.
"""

from __future__ import annotations

import bisect
import math
from typing import Literal

import numpy as np
import torch

from ..configuration import NonNegativeInt, PositiveInt, register_to_config
from .base import SchedulerOutput, randn_tensor
from .schedules import Beta, BetaSchedule, TimestepSpacing, TrainedBetas, sigma_to_t
from .sigma_space import (
    Device,
    SigmaSchedule,
    TwoStageScheduler,
    interleave_midpoints,
    repeat_after_first,
    with_final_sigma,
)


class BrownianNoiseSampler:
    """One Brownian path W over noise levels, revealed lazily from a generator (a Brownian tree without torchsde).

    ``sampler(sigma, sigma_next)`` returns (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|), a standard
    normal tensor shaped like ``x``. Every queried time is kept, so overlapping queries are increments of the same
    path: a new time between known ones is drawn from the Brownian bridge between its neighbours, one outside them
    by a plain Brownian increment. W(sigma_min) = 0 and W(sigma_max) is drawn first. Query times are Python floats
    (tensors are accepted and converted), normals come from ``randn_tensor`` on ``x``'s device, in ``x``'s dtype
    promoted to at least float32 so small increments keep their precision. Memory: one tensor per queried time.
    """

    def __init__(
        self,
        x: torch.Tensor,
        sigma_min: float,
        sigma_max: float,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> None:
        self.generator = generator
        self.shape, self.device, self.out_dtype = tuple(x.shape), x.device, x.dtype
        self.dtype = torch.promote_types(x.dtype, torch.float32)
        self._times: list[float] = [float(sigma_min)]
        self._values: list[torch.Tensor] = [torch.zeros(self.shape, device=self.device, dtype=self.dtype)]
        self._value_at(float(sigma_max))

    def _normal(self) -> torch.Tensor:
        return randn_tensor(self.shape, self.generator, self.device, self.dtype)

    def _value_at(self, t: float) -> torch.Tensor:
        """W(t): a known point, or a new one drawn given its nearest known neighbours (Markov property)."""
        k = bisect.bisect_left(self._times, t)
        if k < len(self._times) and self._times[k] == t:
            return self._values[k]
        if k == 0:  # below every known time: W(t) = W(t_0) + sqrt(t_0 - t) z
            value = self._values[0] + math.sqrt(self._times[0] - t) * self._normal()
        elif k == len(self._times):  # above every known time: W(t) = W(t_last) + sqrt(t - t_last) z
            value = self._values[-1] + math.sqrt(t - self._times[-1]) * self._normal()
        else:  # Brownian bridge: mean on the chord, variance (t - a)(b - t) / (b - a)
            a, b = self._times[k - 1], self._times[k]
            w_a, w_b = self._values[k - 1], self._values[k]
            fraction, std = (t - a) / (b - a), math.sqrt((t - a) * (b - t) / (b - a))
            value = w_a + fraction * (w_b - w_a) + std * self._normal()
        self._times.insert(k, t)
        self._values.insert(k, value)
        return value

    def __call__(self, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor) -> torch.Tensor:
        """The normalised increment (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|), a N(0, I) draw."""
        t0, t1 = float(sigma), float(sigma_next)
        w0 = self._value_at(t0)
        increment = self._value_at(t1) - w0
        return (increment / math.sqrt(abs(t1 - t0))).to(self.out_dtype)


class DPMSolverSDEScheduler(TwoStageScheduler):
    """Stochastic DPM-Solver++(2S) (k-diffusion ``sample_dpmpp_sde``): two model calls per step.

    ``timesteps`` interleaves the two stages (t_0, t_mid_0, t_1, t_mid_1, ...): the first stage steps to the
    log-sigma midpoint, the second completes the step with the midpoint's x0; both add Brownian noise, the last
    step is a plain Euler step to sigma = 0.

    Noise differs from diffusers by design: diffusers draws it from a torchsde Brownian tree seeded by
    ``noise_sampler_seed`` and ignores any generator; we draw the same kind of Brownian path (``noise_sampler``,
    a ``BrownianNoiseSampler``, built at the first step) from the ``generator`` given to that step, so a run is
    reproducible from its seed. Without a generator, ``noise_sampler_seed`` seeds a private CPU generator; with
    neither, the seed is random. Assign ``noise_sampler`` after ``set_timesteps`` to use another sampler.
    """

    _timesteps_dtype = np.float64

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: PositiveInt = 1000,
        beta_start: Beta = 0.00085,
        beta_end: Beta = 0.012,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: TrainedBetas | None = None,
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        noise_sampler_seed: int | None = None,
        timestep_spacing: TimestepSpacing = "linspace",
        steps_offset: NonNegativeInt = 0,
    ) -> None:
        # prediction_type "sample" is refused here: diffusers accepts it but raises NotImplementedError in step.
        self.noise_sampler: BrownianNoiseSampler | None = None
        self._setup()

    @property
    def is_stochastic(self) -> bool:
        """True: both stages of every step but the last add Brownian noise."""
        return True

    def _lay_out(self, schedule: SigmaSchedule, index: torch.Tensor, device: Device) -> None:
        """Each step's log-sigma midpoint interleaved; the ancestral split of both sub-steps per position."""
        # midpoint timesteps from the float64 sigmas: sigma = exp(-(t_k + t_{k+1}) / 2) in t = -log(sigma)
        t_levels = -np.log(schedule.sigmas)
        mid_timesteps = sigma_to_t(np.exp(-(t_levels[:-1] + np.diff(t_levels) * 0.5)), schedule.log_train)  # [n - 1]
        # [s_0, s_1, s_1, ..., s_{n-1}, s_{n-1}, 0]: [2n]; timesteps [t_0, t_mid_0, t_1, t_mid_1, ...]: [2n - 1]
        self.sigmas = repeat_after_first(with_final_sigma(schedule.sigmas))[:-1]
        timesteps = torch.from_numpy(np.asarray(schedule.timesteps, dtype=np.float64))
        self.timesteps = interleave_midpoints(timesteps, torch.from_numpy(mid_timesteps)).to(device)
        self._sigma_range = (self.sigmas[self.sigmas > 0].min().item(), self.sigmas.max().item())

        # Per counter position, in diffusers' float32 arithmetic: the step runs from sigma to sigma_next.
        first = index % 2 == 0
        start = index - (~first).long()
        sigma, sigma_next = self.sigmas[start], self.sigmas[start + 1]
        t, t_next = sigma.log().neg(), sigma_next.log().neg()
        t_mid = t + (t_next - t) * 0.5
        sigma_mid = t_mid.neg().exp()
        t_to = torch.where(first, t_mid, t_next)  # the first stage ends at the midpoint
        sigma_from, sigma_to = t.neg().exp(), t_to.neg().exp()
        up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_up = torch.where(up < sigma_to, up, sigma_to)  # Python's min(sigma_to, up), as diffusers takes it
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        t_down = sigma_down.log().neg()
        self._set_model_sigmas(torch.where(first, sigma, sigma_mid))  # the noise level the model saw
        self._euler = (sigma_next == 0).tolist()
        self._sigma, self._dt = sigma.tolist(), (sigma_next - sigma).tolist()
        self._c_sample = (t_down.neg().exp() / t.neg().exp()).tolist()
        self._c_x0 = (t - t_down).expm1().tolist()
        self._noise_from, self._noise_to = sigma_from.tolist(), sigma_to.tolist()
        self._noise_std = sigma_up.tolist()
        self.noise_sampler = None

    def _make_noise_sampler(
        self, sample: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None
    ) -> BrownianNoiseSampler:
        """The Brownian path of this run, from ``generator``, else ``noise_sampler_seed``, else a random seed."""
        if generator is None:
            generator = torch.Generator()
            if self.config.noise_sampler_seed is None:
                generator.seed()
            else:
                generator.manual_seed(self.config.noise_sampler_seed)
        return BrownianNoiseSampler(sample, *self._sigma_range, generator=generator)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor | None,
        sample: torch.Tensor,
        return_dict: bool = True,
        s_noise: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One stage of DPM-Solver++ SDE: to the log-sigma midpoint, or the full step with the midpoint's x0."""
        # Notation (Lu et al. 2022 DPM-Solver++, in t = -log(sigma), h = t_{i+1} - t_i; k-diffusion dpmpp_sde):
        # x_i        -> sample at the first stage, at sigma_i; t_mid = t_i + h / 2
        # x0         -> pred_original_sample, D(x; sigma) at sigma_i (first stage) or sigma(t_mid) (second)
        # s_up       -> min(s_to, sqrt(s_to^2 (s_from^2 - s_to^2) / s_from^2)), the noise added over the sub-step
        # s_down     -> sqrt(s_to^2 - s_up^2), t_down = -log(s_down), the deterministic target of the sub-step
        # dW         -> the Brownian increment over (s_from, s_to), normalised, from ``noise_sampler``
        i = self._current_step_index()
        if self.noise_sampler is None:
            self.noise_sampler = self._make_noise_sampler(sample, generator)

        # 1. x0 from the model output: eps or v (Salimans & Ho 2022 sec. 4)
        pred_original_sample = self._predicted_x0(model_output, sample, i, self._model_sigma[i])

        if self._euler[i]:
            # 2. last step (sigma_next = 0): Euler, x_N = x + (0 - sigma) (x - x0) / sigma (Karras et al. eq. 3)
            derivative = (sample - pred_original_sample) / self._sigma[i]
            prev_sample = sample + derivative * self._dt[i]
        else:
            # 3. first-order DPM-Solver++ step (sec. 4, data prediction) from x_i to t_down, plus ancestral noise:
            #    x' = (s_down / s_from) x - expm1(t_from - t_down) x0 + s_up * s_noise * dW; the second stage
            #    restarts from x_i with the midpoint's x0 (DPM-Solver++(2S), Alg. 1)
            sample = self._stage_start(i, sample)
            prev_sample = self._c_sample[i] * sample - self._c_x0[i] * pred_original_sample
            noise = self.noise_sampler(self._noise_from[i], self._noise_to[i])
            prev_sample = prev_sample + noise * s_noise * self._noise_std[i]
        return self._finish_step(i, prev_sample, pred_original_sample, return_dict)
