"""Heun, DPM2, LMS, DPM++ 2M, DPM fast and DPM adaptive equal k-diffusion's sample_heun, sample_dpm_2,
sample_lms, sample_dpmpp_2m, sample_dpm_fast and sample_dpm_adaptive on several schedule types, both timestep
types, eps and v, and make exactly the oracle's number of model calls; their ComfyUI options equal ComfyUI's loops.

DPM fast and adaptive get the grid's range as A1111 and ComfyUI pass it: sigma_min the smallest positive sigma,
sigma_max the largest, n the step count. DPM adaptive decides its calls while sampling, so ours is driven the way
the engine drives a dynamic sampler: call until ``len(timesteps)`` stops growing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from kdiffusion_oracle import generator_noise_sampler, hijacked_noise, sampling
from ksampler_harness import SD_CONFIG, SHAPE, initial_noise, make_eps_model, oracle_denoiser, relative_error, run_ours

from schedcmp.core.errors import ConfigError
from schedcmp.core.schedulers.k_sampler import KSampler
from schedcmp.core.schedulers.ksamplers.dpm2 import DPM2Sampler
from schedcmp.core.schedulers.ksamplers.dpm_adaptive import DPMAdaptiveSampler
from schedcmp.core.schedulers.ksamplers.dpm_fast import DPMFastSampler
from schedcmp.core.schedulers.ksamplers.dpmpp_2m import DPMPP2MSampler
from schedcmp.core.schedulers.ksamplers.heun import HeunSampler
from schedcmp.core.schedulers.ksamplers.lms import LMSSampler

SCHEDULES = ["normal", "karras", "exponential", "sgm_uniform"]
TOLERANCE = 1e-5
# DPM adaptive's first error estimates are float32 rounding noise (x_low and x_high agree to ~3e-7, and two float32
# implementations' estimates differ by ~15 %), which moves its step size h by ~1e-4 relative: the same tries and
# calls, accepted alike, at slightly different sigmas (measured up to 1.1e-4, 2.3e-4 with eta). DPM fast with eta
# jumps up to h = 6 in lambda in one DPM-Solver-3 step, where expm1(h) / h ~ 80 amplifies float32 rounding:
# measured 9e-5, and k-diffusion's own float32 result is as far from its float64 run (1e-4, 3e-4 at 5 steps).
FLOAT32_SENSITIVE = 5e-4
# Churn from sigma_max: k-diffusion takes sqrt(sigma_hat^2 - sigma^2) of float32 tensors near 16 (a 5x cancellation);
# its float32 result is 1.1e-5 from its own float64 run, ours 2.3e-6 (measured; ours vs it 9.6e-6).
CHURN_TOLERANCE = 3e-5


def _range(sigmas: torch.Tensor) -> tuple[float, float]:
    """(sigma_min, sigma_max) as ComfyUI's dpm_fast / dpm_adaptive wrappers take them from the grid."""
    sigma_min = float(sigmas[-1]) if sigmas[-1] > 0 else float(sigmas[-2])
    return sigma_min, float(sigmas[0])


def _on_grid(name: str) -> Callable[..., torch.Tensor]:
    def oracle(model: Any, x: torch.Tensor, sigmas: torch.Tensor, **options: Any) -> torch.Tensor:
        return getattr(sampling(), name)(model, x, sigmas, disable=True, **options)

    return oracle


def _dpm_fast(model: Any, x: torch.Tensor, sigmas: torch.Tensor, **options: Any) -> torch.Tensor:
    return sampling().sample_dpm_fast(model, x, *_range(sigmas), len(sigmas) - 1, disable=True, **options)


def _dpm_adaptive(model: Any, x: torch.Tensor, sigmas: torch.Tensor, **options: Any) -> torch.Tensor:
    return sampling().sample_dpm_adaptive(model, x, *_range(sigmas), disable=True, **options)


@dataclass(frozen=True)
class Case:
    cls: type[KSampler]
    oracle: Callable[..., torch.Tensor]  # (model, x, sigmas, **options) -> final sample
    tolerance: float = TOLERANCE

    def __repr__(self) -> str:
        return self.cls.__name__


CASES = {
    "heun": Case(HeunSampler, _on_grid("sample_heun")),
    "dpm_2": Case(DPM2Sampler, _on_grid("sample_dpm_2")),
    "lms": Case(LMSSampler, _on_grid("sample_lms")),
    "dpmpp_2m": Case(DPMPP2MSampler, _on_grid("sample_dpmpp_2m")),
    "dpm_fast": Case(DPMFastSampler, _dpm_fast),
    "dpm_adaptive": Case(DPMAdaptiveSampler, _dpm_adaptive, FLOAT32_SENSITIVE),
}


class CountingDenoiser:
    """The oracle's denoiser, counting its calls."""

    def __init__(self, inner: Callable[..., torch.Tensor]):
        self.inner, self.calls = inner, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.calls += 1
        return self.inner(x, sigma, **kwargs)


def run_dynamic(scheduler: KSampler, model: Callable[..., torch.Tensor], x: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
    """The engine's loop for a sampler that adds calls while sampling: step until the schedule is used up."""
    calls = 0
    while calls < len(scheduler.timesteps):
        t = scheduler.timesteps[calls]
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x, generator=generator).prev_sample
        calls += 1
    return x


def _setup(cls: type[KSampler], steps: int = 10, **config: Any):
    scheduler = cls.from_config(SD_CONFIG, **config)
    scheduler.set_timesteps(steps)
    model = make_eps_model(scheduler, scheduler.config.prediction_type)
    x, generator = initial_noise(scheduler)
    return scheduler, model, x, generator


def _oracle_generator(x: torch.Tensor) -> torch.Generator:
    """The oracle's generator in the state ours is in after the initial latents' draw."""
    generator = torch.Generator().manual_seed(0)
    torch.randn(x.shape, generator=generator)
    return generator


def compare(case: Case, steps: int = 10, options: dict[str, Any] | None = None,
            oracle_options: dict[str, Any] | None = None, **config: Any) -> float:
    """Relative error of ours against the oracle (same seed); asserts both made the same number of model calls
    (ours one more when the first point moves: the engine's priming call on the initial sample)."""
    options = options or {}
    scheduler, model, x, generator = _setup(case.cls, steps, **options, **config)
    run = run_dynamic if case.cls.dynamic_timesteps else run_ours
    ours = run(scheduler, model, x.clone(), generator)
    denoiser = CountingDenoiser(oracle_denoiser(scheduler, model))
    with hijacked_noise(_oracle_generator(x)):
        reference = case.oracle(denoiser, x.clone(), scheduler.sigmas, **(oracle_options or options))
    assert len(scheduler.timesteps) == denoiser.calls + scheduler.first_point_moves()
    return relative_error(ours, reference)


@pytest.mark.parametrize("timestep_type", ["continuous", "discrete"])
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_k_diffusion(case, schedule, timestep_type):
    assert compare(case, schedule=schedule, timestep_type=timestep_type) < case.tolerance


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_k_diffusion_on_v_prediction(case):
    assert compare(case, schedule="karras", prediction_type="v_prediction") < case.tolerance


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("lms", {"order": 2}),
        ("lms", {"order": 6}),
        ("dpm_adaptive", {"order": 2}),
        ("dpm_adaptive", {"rtol": 0.01, "atol": 0.002, "pcoeff": 0.2, "icoeff": 0.5, "dcoeff": 0.1}),
    ],
)
def test_options_match_k_diffusion(name, options):
    assert compare(CASES[name], options=options, schedule="karras") < CASES[name].tolerance


@pytest.mark.parametrize("steps", [1, 2, 3, 5, 9])
def test_dpm_fast_makes_exactly_n_calls_as_k_diffusion(steps):
    """n mod 3 picks the tail orders: (1), (2), (2, 1), (3, 2), (3, 3, 2, 1)."""
    assert compare(CASES["dpm_fast"], steps=steps, schedule="karras") < TOLERANCE


@pytest.mark.parametrize("churn", [{"s_tmax": 50.0}, {"s_tmax": 5.0}], ids=["from_the_start", "windowed"])
@pytest.mark.parametrize("name", ["heun", "dpm_2"])
def test_churn_matches_k_diffusion_with_the_same_noise(name, churn):
    """A churned first step moves the first point (a priming call); a window below sigma_max shifts the noise, as
    k-diffusion draws a randn at every step."""
    options = {"s_churn": 1.0, "s_tmin": 0.05, **churn}
    assert compare(CASES[name], options=options, schedule="karras") < CHURN_TOLERANCE


@pytest.mark.parametrize("noise_source", ["generator", "seed"])
@pytest.mark.parametrize("name", ["dpm_fast", "dpm_adaptive"])
def test_eta_matches_k_diffusion_with_the_same_noise(name, noise_source):
    """"generator": the run's generator after the initial latents (A1111's randn_like); "seed": ComfyUI's default
    noise sampler, a new generator seeded with the run's seed (on the CPU its first draw repeats the latents')."""
    options = {"eta": 1.0, "s_noise": 0.9}
    oracle_options = dict(options)
    if noise_source == "seed":
        oracle_options["noise_sampler"] = generator_noise_sampler(torch.Generator().manual_seed(0), torch.zeros(SHAPE))
    error = compare(CASES[name], options={**options, "noise_source": noise_source}, oracle_options=oracle_options,
                    schedule="karras")
    assert error < FLOAT32_SENSITIVE


# --- ComfyUI's variants ----------------------------------------------------------------------------------------


@contextmanager
def draws_only_where_churned(generator: torch.Generator, churned: list[bool]) -> Iterator[None]:
    """k-diffusion's randn_like, one call per step, drawing from ``generator`` only on the steps in ``churned``
    (zeros elsewhere, unused there): ComfyUI's noise order for Euler, Heun and DPM2 churn."""
    steps = iter(churned)
    with hijacked_noise(generator):
        module = sampling()
        draw = module.torch.randn_like
        module.torch.randn_like = lambda x, **kw: draw(x, **kw) if next(steps) else torch.zeros_like(x)
        yield


@pytest.mark.parametrize("name", ["heun", "dpm_2"])
def test_comfy_churn_draws_only_on_churned_steps(name):
    options = {"s_churn": 1.0, "s_tmin": 0.05, "s_tmax": 5.0}
    scheduler, model, x, generator = _setup(CASES[name].cls, schedule="karras", churn_draws="churn_steps", **options)
    ours = run_ours(scheduler, model, x.clone(), generator)
    churned = [0.05 <= s <= 5.0 for s in scheduler.sigmas[:-1].tolist()]
    with draws_only_where_churned(_oracle_generator(x), churned):
        reference = CASES[name].oracle(oracle_denoiser(scheduler, model), x.clone(), scheduler.sigmas, **options)
    assert relative_error(ours, reference) < TOLERANCE


def comfy_lms(model: Any, x: torch.Tensor, sigmas: torch.Tensor, order: int = 4) -> torch.Tensor:
    """ComfyUI's sample_lms: k-diffusion's LMS, except that the step to sigma = 0 returns the prediction."""
    coefficient = sampling().linear_multistep_coeff
    grid = sigmas.numpy()
    slopes: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]))
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        slopes = [(x - denoised) / sigmas[i], *slopes][:order]
        x = x + sum(coefficient(len(slopes), grid, i, j) * d for j, d in enumerate(slopes))
    return x


@pytest.mark.parametrize("timestep_type", ["continuous", "discrete"])
def test_comfy_lms_last_step_returns_the_prediction(timestep_type):
    scheduler, model, x, generator = _setup(LMSSampler, schedule="karras", timestep_type=timestep_type,
                                            last_step="denoised")
    ours = run_ours(scheduler, model, x.clone(), generator)
    reference = comfy_lms(oracle_denoiser(scheduler, model), x.clone(), scheduler.sigmas)
    assert relative_error(ours, reference) < TOLERANCE
    kdiffusion = sampling().sample_lms(oracle_denoiser(scheduler, model), x.clone(), scheduler.sigmas, disable=True)
    assert relative_error(ours, kdiffusion) > 1e-3  # the option changes the result


# --- DPM adaptive's schedule ------------------------------------------------------------------------------------


def test_dpm_adaptive_schedule_grows_while_sampling_and_restarts():
    scheduler, model, x, generator = _setup(DPMAdaptiveSampler, schedule="karras")
    assert len(scheduler.timesteps) == 1  # only the first call is known before sampling
    first = run_dynamic(scheduler, model, x.clone(), generator)
    calls = len(scheduler.timesteps)
    assert calls > 3 and calls % 3 == 0  # order 3: three calls per try, accepted or not
    scheduler.set_timesteps(10)
    assert len(scheduler.timesteps) == 1
    again = run_dynamic(scheduler, model, x.clone(), generator)
    assert len(scheduler.timesteps) == calls and torch.equal(first, again)


def test_dpm_adaptive_needs_a_sigma_range():
    scheduler = DPMAdaptiveSampler.from_config(SD_CONFIG)
    with pytest.raises(ConfigError, match="two distinct"):
        scheduler.set_timesteps(1)

