"""k-diffusion-style samplers behind diffusers' scheduler contract: ``KSampler`` and its shared configuration.

A k-diffusion sampler is a loop over a sigma grid that calls a denoiser D(x, sigma) one or more times per step
(Karras et al. 2022, arXiv:2206.00364, Table 1, VP column: the network sees c_in x = x / sqrt(sigma^2 + 1) and
D = x - sigma eps, or the v form). Each ``KSampler`` subclass writes that loop once, as a Python generator
``program(x)`` that yields every point it wants denoised and receives D there. ``step`` converts the model output
to D, sends it in and returns the next point to evaluate as ``prev_sample`` (the final sample after the last
call), so the engine batches these samplers exactly like diffusers' classes and ``len(timesteps)`` is the true
number of model calls.

What makes a sampler A1111's or ComfyUI's is configuration, not code: the schedule type (``schedule``, see
``schedule_types``), whether the penultimate sigma is discarded, whether the UNet gets fractional
(k-diffusion, A1111) or nearest-integer (ComfyUI) timesteps, and the initial noise scale (A1111: sigma_0;
ComfyUI: sqrt(1 + sigma_0^2) at full denoise).
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable, Generator, Sequence
from typing import Annotated, Any, ClassVar, Literal

import torch

from ..configuration import PositiveFloat, PositiveInt, Range, register_to_config
from ..errors import ConfigError
from .base import SchedulerMixin, SchedulerOutput, cast, randn_tensor, step_scalars
from .schedule_types import (
    AysModel,
    ScheduleId,
    checked_custom_sigmas,
    nearest_timestep,
    sigma_grid,
    sigma_to_t,
    t_to_sigma,
)
from .schedules import Beta, BetaSchedule, TrainedBetas, check_num_inference_steps, make_betas
from .sigma_space import train_alphas_cumprod

Program = Generator[torch.Tensor, torch.Tensor, torch.Tensor]  # yields points to denoise, receives D, returns x
BetaParameter = Annotated[float, Range(gt=0)]

_P = inspect.Parameter


def _keyword(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return _P(name, _P.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)


# The configuration every KSampler shares: the model's training schedule (diffusers' keys, so a pipeline's
# scheduler_config.json builds one) and how the tool turns it into a sampling grid.
COMMON_PARAMETERS: tuple[inspect.Parameter, ...] = (
    _keyword("num_train_timesteps", PositiveInt, 1000),
    _keyword("beta_start", Beta, 0.00085),
    _keyword("beta_end", Beta, 0.012),
    _keyword("beta_schedule", BetaSchedule, "scaled_linear"),
    _keyword("trained_betas", TrainedBetas | None, None),
    _keyword("prediction_type", Literal["epsilon", "v_prediction"], "epsilon"),
    _keyword("schedule", ScheduleId, "normal"),
    _keyword("rho", PositiveFloat | None, None),
    _keyword("schedule_alpha", BetaParameter, 0.6),
    _keyword("schedule_beta", BetaParameter, 0.6),
    _keyword("ays_model", AysModel, "sd15"),
    _keyword("threshold_noise", Annotated[float, Range(gt=0, lt=1)], 0.025),
    _keyword("linear_steps", PositiveInt | None, None),
    _keyword("schedule_sigma_min", PositiveFloat | None, None),  # A1111's "sigma min / max" settings
    _keyword("schedule_sigma_max", PositiveFloat | None, None),
    _keyword("discard_penultimate_sigma", bool, False),
    _keyword("timestep_type", Literal["continuous", "discrete"], "continuous"),
    _keyword("noise_scaling", Literal["sigma", "marginal"], "sigma"),
    _keyword("training_arithmetic", Literal["diffusers", "a1111", "comfy"], "diffusers"),
)
COMMON_KEYS = frozenset(p.name for p in COMMON_PARAMETERS)


def sampler_config(own: Callable[..., None]) -> Callable[..., None]:
    """Decorate a KSampler's bodiless ``__init__(self, <its own options>)``: the recorded signature becomes the
    shared ``COMMON_PARAMETERS`` followed by those options, so every config key stays declared in a signature."""
    hints = typing.get_type_hints(own, include_extras=True)  # the sampler module's names, also when postponed
    own_parameters = [p.replace(annotation=hints.get(p.name, p.annotation))
                      for p in list(inspect.signature(own).parameters.values())[1:]]
    clash = COMMON_KEYS.intersection(p.name for p in own_parameters)
    if clash:
        raise TypeError(f"{own.__qualname__} redeclares shared config keys {sorted(clash)}")
    parameters = [
        _P("self", _P.POSITIONAL_OR_KEYWORD),
        *COMMON_PARAMETERS,
        *(p.replace(kind=_P.POSITIONAL_OR_KEYWORD) for p in own_parameters),
    ]

    def __init__(self: KSampler, *args: Any, **kwargs: Any) -> None:
        self._setup()

    __init__.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    __init__.__annotations__ = {p.name: p.annotation for p in parameters[1:]}
    __init__.__qualname__, __init__.__doc__ = own.__qualname__, own.__doc__
    return register_to_config(__init__)


def training_schedule(config: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """alpha-bar, sigma = sqrt((1 - abar) / abar) and log sigma of the training steps [T] (float32, ascending in t),
    in the arithmetic of ``config.training_arithmetic``: diffusers' float32 betas and cumprod; A1111's LDM model
    (float64 betas and cumprod, alpha-bar rounded to float32, sigma from it in float32); or ComfyUI's
    ``ModelSamplingDiscrete`` (float64 throughout, sigma and log sigma rounded to float32). The tools' small
    sigmas differ from diffusers' by up to 1.3e-5 relative, enough to show in a parity test."""
    arithmetic = config.training_arithmetic
    if arithmetic == "diffusers":
        alphas_cumprod = train_alphas_cumprod(config)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        return alphas_cumprod, sigmas, sigmas.log()
    betas = float64_betas(config)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # [T] float64
    if arithmetic == "a1111":
        rounded = alphas_cumprod.float()
        sigmas = ((1 - rounded) / rounded) ** 0.5
        return rounded, sigmas, sigmas.log()
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    return alphas_cumprod.float(), sigmas.float(), sigmas.log().float()


def float64_betas(config: Any) -> torch.Tensor:
    """The training betas [T] in float64, as the LDM code A1111 and ComfyUI run computes them (its "linear" is
    diffusers' "scaled_linear"); other schedules are diffusers' betas, widened."""
    n, start, end = config.num_train_timesteps, config.beta_start, config.beta_end
    if config.trained_betas is not None:
        return torch.as_tensor(list(config.trained_betas), dtype=torch.float64)
    if config.beta_schedule == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    if config.beta_schedule == "linear":
        return torch.linspace(start, end, n, dtype=torch.float64)
    return make_betas(n, start, end, config.beta_schedule).double()


class KSampler(SchedulerMixin):
    """Base of the k-diffusion-style samplers: sigma grid, denoiser conversion, noise, and the step driver.

    Subclasses set the class facts (``calls_per_step``, ``stochastic``, ...), write ``program`` and, when a step
    calls the model more than once or not at the grid sigmas, ``call_sigmas``.
    """

    calls_per_step: ClassVar[int] = 1  # model calls per step (the listing's figure; 0: variable)
    stochastic: ClassVar[bool] = False  # draws fresh noise during sampling at its default options
    noise_options: ClassVar[tuple[str, ...]] = ()  # config keys that, at 0, turn the noise off

    def _setup(self) -> None:
        """Training schedule from the config; nothing to sample until ``set_timesteps``."""
        self.alphas_cumprod, self.train_sigmas, self.log_sigmas = training_schedule(self.config)
        self.num_inference_steps: int | None = None
        self.sigmas = torch.zeros(0)
        self.timesteps = torch.zeros(0)
        self._program: Program | None = None
        self._generator: torch.Generator | list[torch.Generator] | None = None
        self.uncond_denoised: torch.Tensor | None = None
        self._step_index = None

    @classmethod
    def compatible_classes(cls) -> list[type[SchedulerMixin]]:
        """diffusers' family and every KSampler: their configs share the training schedule, so keys of one
        (timestep_spacing, clip_sample, ...) are dropped quietly when building another."""
        from . import SCHEDULER_CLASSES
        from .ksamplers import KSAMPLER_CLASSES

        return [*SCHEDULER_CLASSES, *KSAMPLER_CLASSES]

    # --- facts the engine and the listing read ---------------------------------------------------------------

    @property
    def is_stochastic(self) -> bool:
        """Whether sampling draws fresh noise with this config (a noise option at 0 turns it off)."""
        return self.stochastic and all(self.config[key] != 0 for key in self.noise_options)

    @property
    def init_noise_sigma(self) -> float:
        """Std of the initial noise: sigma_0 (A1111, k-diffusion), or sqrt(1 + sigma_0^2) when sampling starts at
        the model's largest noise level (ComfyUI's ``noise_scaling`` at full denoise)."""
        sigma_0 = float(self.sigmas[0]) if len(self.sigmas) else float(self.train_sigmas[-1])
        sigma_max = float(self.train_sigmas[-1])
        starts_at_max = math.isclose(sigma_max, sigma_0, rel_tol=1e-5) or sigma_0 > sigma_max
        if self.config.noise_scaling == "marginal" and starts_at_max:
            return math.sqrt(1.0 + sigma_0**2)
        return sigma_0

    # --- the schedule ----------------------------------------------------------------------------------------

    def schedule_sigmas(self) -> torch.Tensor:
        """The noise levels [T'] ascending that the schedule types are computed on: the training sigmas."""
        return self.train_sigmas

    def sigma_grid(self, num_inference_steps: int) -> torch.Tensor:
        """The configured schedule type's noise levels for ``num_inference_steps`` steps (then the discard)."""
        config = self.config
        extra = 1 if config.discard_penultimate_sigma else 0
        grid = sigma_grid(
            config.schedule,
            num_inference_steps + extra,
            self.schedule_sigmas(),
            rho=config.rho,
            alpha=config.schedule_alpha,
            beta=config.schedule_beta,
            ays_model=config.ays_model,
            threshold_noise=config.threshold_noise,
            linear_steps=config.linear_steps,
            min_sigma=config.schedule_sigma_min,
            max_sigma=config.schedule_sigma_max,
        )
        if extra:  # A1111's discard_next_to_last_sigma, ComfyUI's DISCARD_PENULTIMATE_SIGMA_SAMPLERS
            grid = torch.cat([grid[:-2], grid[-1:]])
        return grid

    def custom_grid(self, sigmas: Sequence[float] | torch.Tensor | None,
                    timesteps: Sequence[float] | torch.Tensor | None) -> torch.Tensor:
        """The grid of custom ``sigmas``, or of training ``timesteps`` (their sigmas, then 0), checked."""
        owner = type(self).__name__
        if sigmas is not None and timesteps is not None:
            raise ConfigError(f"{owner}.set_timesteps: give custom sigmas or custom timesteps, not both")
        if timesteps is not None:
            t = torch.as_tensor(timesteps, dtype=torch.float32).flatten()
            last = len(self.train_sigmas) - 1
            if not bool(((t >= 0) & (t <= last)).all()):
                raise ConfigError(f"{owner}.set_timesteps: custom timesteps must lie in 0..{last}")
            sigmas = torch.cat([t_to_sigma(t, self.log_sigmas), torch.zeros(1)])
        return checked_custom_sigmas(sigmas, owner)

    def call_sigmas(self, sigmas: list[float]) -> list[float]:
        """The noise level of every model call, in order (one per step at the grid's sigmas by default)."""
        return sigmas[:-1]

    def prepare_grid(self) -> None:
        """Compute what ``program`` needs per grid (multistep weights, ...) once, after the grid is set."""

    def first_point_moves(self) -> bool:
        """Whether the program's first model input is not the initial sample (churn at the first step). The
        engine calls the model on the initial sample first, so such a schedule starts with one priming call
        whose prediction is not used: counted, like every call."""
        return False

    def model_timesteps(self, sigmas: Sequence[float]) -> torch.Tensor:
        """The UNet's timestep for each noise level: fractional (k-diffusion) or the nearest integer (ComfyUI)."""
        sigma = torch.tensor(list(sigmas), dtype=torch.float32)
        if self.config.timestep_type == "discrete":
            return nearest_timestep(sigma, self.log_sigmas).float()
        return sigma_to_t(sigma, self.log_sigmas)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
        timesteps: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        """Build the sigma grid (the schedule type, or custom ``sigmas`` / training ``timesteps`` with a final 0)
        and every model call's timestep and input scale; restarts the sampler."""
        if sigmas is not None or timesteps is not None:
            grid = self.custom_grid(sigmas, timesteps)
            self.requested_steps = len(grid) - 1
        else:
            self.requested_steps = check_num_inference_steps(type(self).__name__, num_inference_steps, None)
            grid = self.sigma_grid(self.requested_steps)
        self.num_inference_steps = len(grid) - 1
        self.sigmas = grid
        self._grid = [float(s) for s in grid]
        self._priming = self.first_point_moves()
        self._install_calls([self._grid[0]] * self._priming + self.call_sigmas(self._grid), device)
        self.prepare_grid()
        self._device = device
        self._program = None
        self._step_index = None

    def _install_calls(self, call_sigmas: list[float], device: str | torch.device | None) -> None:
        """Timesteps and c_in / c_skip / c_out of each model call (Karras et al. 2022 Table 1, VP column)."""
        self._call_sigmas = list(call_sigmas)
        self.timesteps = self.model_timesteps(call_sigmas).to(device)
        c_in = [1.0 / math.sqrt(s * s + 1.0) for s in call_sigmas]
        self._c_in = step_scalars(c_in)
        if self.config.prediction_type == "v_prediction":
            self._c_skip = step_scalars([1.0 / (s * s + 1.0) for s in call_sigmas])
            self._c_out = step_scalars([-s / math.sqrt(s * s + 1.0) for s in call_sigmas])
        else:
            self._c_skip = None
            self._c_out = step_scalars([-s for s in call_sigmas])

    # --- the step driver -------------------------------------------------------------------------------------

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """The network's input c_in x for the next model call."""
        return sample * self._c_in[self._step_index or 0]

    def denoised(self, model_output: torch.Tensor, sample: torch.Tensor, call: int) -> torch.Tensor:
        """D(x, sigma) of call ``call`` from an eps or v prediction, float32."""
        output = cast(model_output, torch.float32)
        if self._c_skip is None:
            return sample + self._c_out[call] * output
        return sample * self._c_skip[call] + self._c_out[call] * output

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        uncond_output: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """Feed the model's prediction at the current point to the sampler; ``prev_sample`` is the next point to
        evaluate, or the final sample after the last call. ``uncond_output`` is the unconditional prediction
        (CFG++ samplers only)."""
        if len(self.timesteps) == 0:
            raise ConfigError(f"{type(self).__name__}.step called before set_timesteps")
        call = self._step_index or 0
        if call >= len(self.timesteps):
            raise ConfigError(f"{type(self).__name__}.step called {call + 1} times for {len(self.timesteps)} "
                              "model calls; call set_timesteps again to sample anew")
        self._generator = generator
        if self._program is None:
            self._program = self.program(cast(sample, torch.float32))
            self._point = next(self._program)  # the initial sample, unless the first point moves
            if self._priming:
                self._step_index = call + 1
                return self._output(self._point, self.denoised(model_output, cast(sample, torch.float32), call),
                                    sample.dtype, return_dict)
        point = self._point
        denoised = self.denoised(model_output, point, call)
        if self.needs_uncond:
            if uncond_output is None:
                raise ConfigError(f"{type(self).__name__} is a CFG++ sampler: step needs uncond_output, the "
                                  "model's unconditional prediction")
            self.uncond_denoised = self.denoised(uncond_output, point, call)
        try:
            self._point = self._program.send(denoised)
            final = None
        except StopIteration as stop:
            final = stop.value
            self._point = final
        self._step_index = call + 1
        if self.dynamic_timesteps and final is None:
            self._extend_calls()
        if final is not None:
            self._program = None
        return self._output(self._point, denoised, sample.dtype, return_dict)

    @staticmethod
    def _output(point: torch.Tensor, denoised: torch.Tensor, dtype: torch.dtype,
                return_dict: bool) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        prev_sample, x0 = cast(point, dtype), cast(denoised, dtype)
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0) if return_dict else (prev_sample, x0)

    def _extend_calls(self) -> None:
        """A dynamic sampler asked for one more call at ``self.next_sigma``: append it to the schedule."""
        self._install_calls([*self._call_sigmas[: self._step_index], self.next_sigma], self._device)

    def program(self, x: torch.Tensor) -> Program:
        """The sampling loop: ``denoised = yield point`` for every model call, ``return`` the final sample."""
        raise NotImplementedError

    # --- what programs use -----------------------------------------------------------------------------------

    @property
    def grid(self) -> list[float]:
        """The sigma grid as Python floats (scalar arithmetic on them never syncs a device)."""
        return self._grid

    def noise_like(self, x: torch.Tensor) -> torch.Tensor:
        """One standard normal draw shaped like ``x`` from the run's generator (k-diffusion's ``randn_like``)."""
        return randn_tensor(x.shape, self._generator, x.device, x.dtype)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x0 + sigma(t) noise at training timesteps ``timesteps`` (Karras et al. 2022 eq. 1)."""
        sigma = t_to_sigma(timesteps.float().cpu(), self.log_sigmas).to(original_samples.device)
        while sigma.ndim < original_samples.ndim:
            sigma = sigma.unsqueeze(-1)
        return original_samples + noise * sigma.to(original_samples.dtype)


def ancestral_split(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step: the deterministic target and the fresh noise's std
    (k-diffusion ``get_ancestral_step``; Song et al. 2021, arXiv:2011.13456, in sigma form)."""
    if not eta or sigma_next == 0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
    return sigma_down, sigma_up
