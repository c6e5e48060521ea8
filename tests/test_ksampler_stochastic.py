"""The stochastic k-samplers equal k-diffusion 0.1.1.post1 given the same noise (ComfyUI's loops, transcribed below,
for DDPM and for the ComfyUI options), and every model call they make is in ``timesteps``.

Same noise: both sides draw the initial latents from a generator seeded 0; the ancestral samplers' fresh noise
then continues that generator on both sides, and the Brownian samplers each build schedcmp's
``BrownianNoiseSampler`` from it at the same point of the draw order (ours at its first noise query, the oracle's
before sampling: no draw lies between).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from kdiffusion_oracle import generator_noise_sampler, sampling
from ksampler_harness import SD_CONFIG, initial_noise, make_eps_model, oracle_denoiser, relative_error, run_ours

from schedcmp.core.schedulers.dpmsolver_sde import BrownianNoiseSampler
from schedcmp.core.schedulers.k_sampler import KSampler
from schedcmp.core.schedulers.ksamplers.ddpm import DDPMSampler
from schedcmp.core.schedulers.ksamplers.dpm2_ancestral import DPM2AncestralSampler
from schedcmp.core.schedulers.ksamplers.dpmpp_2m_sde import DPMPP2MSDESampler
from schedcmp.core.schedulers.ksamplers.dpmpp_2s_ancestral import DPMPP2SAncestralSampler
from schedcmp.core.schedulers.ksamplers.dpmpp_3m_sde import DPMPP3MSDESampler
from schedcmp.core.schedulers.ksamplers.dpmpp_sde import DPMPPSDESampler
from schedcmp.core.schedulers.ksamplers.euler_ancestral import EulerAncestralSampler

STEPS = 10
SCHEDULES = ["normal", "karras", "exponential", "sgm_uniform"]
# max |ours - oracle| / std. Without noise both sides agree to < 2e-6 (float64 scalar coefficients here, float32
# tensor ones there). With noise, fresh draws put some elements near the test data's decision boundary at small
# sigma, where dD/dx reaches ~15, and float32 rounding (on both sides) is amplified: there k-diffusion in float32 is
# itself up to 1e-5 from k-diffusion in float64 (measured), so noisy runs get 5e-5 (measured max 2.0e-5).
TOLERANCE = 1e-5
NOISY_TOLERANCE = 5e-5


# --- ComfyUI's loops for eps / v models (comfy/k_diffusion/sampling.py @ a125cd84), in k-diffusion's style ---


def comfy_ddpm(model: Callable, x: torch.Tensor, sigmas: torch.Tensor, noise_sampler: Callable,
               s_noise: float = 1.0) -> torch.Tensor:
    """ComfyUI ``sample_ddpm``: DDPM's posterior step on the VP sample x / sqrt(1 + sigma^2), scaled back
    (``s_noise`` scales the draw; ComfyUI has 1)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in)
        eps = (x - denoised) / sigma
        x_vp = x / torch.sqrt(1.0 + sigma**2)
        alpha_cumprod, alpha_cumprod_prev = 1 / (sigma * sigma + 1), 1 / (sigma_prev * sigma_prev + 1)
        alpha = alpha_cumprod / alpha_cumprod_prev
        mu = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - alpha_cumprod).sqrt())
        if sigma_prev > 0:
            std = ((1 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod)).sqrt()
            mu = mu + std * noise_sampler(sigma, sigma_prev) * s_noise
            mu = mu * torch.sqrt(1.0 + sigma_prev**2)
        x = mu
    return x


def comfy_euler_ancestral(model: Callable, x: torch.Tensor, sigmas: torch.Tensor, noise_sampler: Callable,
                          eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """ComfyUI ``sample_euler_ancestral``: a step whose sigma_down is 0 returns the denoised output, no noise."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = sampling().get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if sigma_down == 0:
            x = denoised
        else:
            d = (x - denoised) / sigmas[i]
            x = x + d * (sigma_down - sigmas[i]) + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def k_diffusion(name: str) -> Callable[..., torch.Tensor]:
    """k-diffusion's ``sample_<name>`` as an oracle taking (model, x, sigmas, noise_sampler, **options)."""

    def oracle(model: Callable, x: torch.Tensor, sigmas: torch.Tensor, noise_sampler: Callable, **options: Any):
        return getattr(sampling(), f"sample_{name}")(model, x, sigmas, noise_sampler=noise_sampler, disable=True,
                                                     **options)

    return oracle


@dataclass(frozen=True)
class Case:
    cls: type[KSampler]
    oracle: Callable[..., torch.Tensor]
    quiet: dict[str, float]  # the options that turn its noise off


ETA_0 = {"eta": 0.0}
SAMPLERS = {
    "euler_ancestral": Case(EulerAncestralSampler, k_diffusion("euler_ancestral"), ETA_0),
    "dpm_2_ancestral": Case(DPM2AncestralSampler, k_diffusion("dpm_2_ancestral"), ETA_0),
    "dpmpp_2s_ancestral": Case(DPMPP2SAncestralSampler, k_diffusion("dpmpp_2s_ancestral"), ETA_0),
    "dpmpp_sde": Case(DPMPPSDESampler, k_diffusion("dpmpp_sde"), ETA_0),
    "dpmpp_2m_sde": Case(DPMPP2MSDESampler, k_diffusion("dpmpp_2m_sde"), ETA_0),
    "dpmpp_3m_sde": Case(DPMPP3MSDESampler, k_diffusion("dpmpp_3m_sde"), ETA_0),
    "ddpm": Case(DDPMSampler, comfy_ddpm, {"s_noise": 0.0}),
}
ANCESTRAL = ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral"]


# --- running both sides ---


def on_the_callers_times(noise_sampler: BrownianNoiseSampler, times: list[float]) -> Callable:
    """The oracle's Brownian queries moved to the noise levels our sampler queries. k-diffusion's dpmpp_sde asks
    at exp(-(-log sigma)) in float32, which can miss the grid sigma by an ulp (and computes its midpoints in
    float32); the path would take such a time as a new one and draw for it, shifting every later draw."""

    def snap(sigma: Any) -> float:
        value = float(sigma)
        nearest = min(times, key=lambda known: abs(known - value))
        assert abs(nearest - value) <= 1e-5 * nearest, f"k-diffusion asked for noise at an unknown sigma {value}"
        return nearest

    return lambda sigma, sigma_next: noise_sampler(snap(sigma), snap(sigma_next))


def oracle_noise(scheduler: KSampler, x: torch.Tensor, generator: torch.Generator) -> Callable:
    """The oracle's noise sampler: fresh draws from ``generator``, or a Brownian path drawn from it."""
    if not scheduler.brownian:
        return generator_noise_sampler(generator, x)
    grid = scheduler.grid
    positive = [s for s in grid if s > 0]
    path = BrownianNoiseSampler(x, min(positive), max(positive), generator)
    return on_the_callers_times(path, sorted({*positive, *scheduler.call_sigmas(grid)}))


def compare(name: str, oracle: Callable | None = None, comfy_stream: bool = False, options: dict | None = None,
            **config: Any) -> tuple[torch.Tensor, torch.Tensor, KSampler]:
    """(ours, the oracle's, our scheduler) for one configuration; asserts that ``timesteps`` lists exactly the
    oracle's model calls. ``options`` go to both sides, ``config`` only to ours; ``comfy_stream``: the oracle's
    fresh noise comes from a new generator seeded like the run (ComfyUI's default noise sampler)."""
    case = SAMPLERS[name]
    options = options or {}
    scheduler = case.cls.from_config(SD_CONFIG, **options, **config)
    scheduler.set_timesteps(STEPS)
    model = make_eps_model(scheduler, scheduler.config.prediction_type)
    x, generator = initial_noise(scheduler)
    ours = run_ours(scheduler, model, x.clone(), generator)

    oracle_generator = torch.Generator().manual_seed(0)
    if not comfy_stream:
        torch.randn(x.shape, generator=oracle_generator)  # the initial latents' draw
    called_at: list[torch.Tensor] = []

    def recording_model(x_in: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        called_at.append(t.reshape(-1)[0].float())
        return model(x_in, t, **kwargs)

    reference = (oracle or case.oracle)(oracle_denoiser(scheduler, recording_model), x.clone(), scheduler.sigmas,
                                        oracle_noise(scheduler, x, oracle_generator), **options)
    assert len(scheduler.timesteps) == len(called_at)
    torch.testing.assert_close(scheduler.timesteps, torch.stack(called_at), rtol=0, atol=1e-3)
    return ours, reference, scheduler


# --- parity ---


@pytest.mark.parametrize("timestep_type", ["continuous", "discrete"])
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", SAMPLERS)
def test_matches_the_reference_with_the_same_noise(name, schedule, timestep_type):
    ours, reference, scheduler = compare(name, schedule=schedule, timestep_type=timestep_type)
    assert scheduler.is_stochastic
    assert relative_error(ours, reference) < NOISY_TOLERANCE


@pytest.mark.parametrize("name", SAMPLERS)
def test_matches_the_reference_on_v_prediction(name):
    ours, reference, _ = compare(name, schedule="karras", prediction_type="v_prediction")
    assert relative_error(ours, reference) < NOISY_TOLERANCE


@pytest.mark.parametrize("name", SAMPLERS)
def test_without_noise_it_is_deterministic_and_matches(name):
    quiet = SAMPLERS[name].quiet
    ours, reference, scheduler = compare(name, options=quiet, schedule="karras")
    assert not scheduler.is_stochastic
    assert relative_error(ours, reference) < TOLERANCE
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5)) * scheduler.init_noise_sigma
    model = make_eps_model(scheduler)
    runs = []
    for seed in (1, 2):
        scheduler.set_timesteps(STEPS)
        runs.append(run_ours(scheduler, model, x.clone(), torch.Generator().manual_seed(seed)))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


@pytest.mark.parametrize(("name", "options"), [
    ("dpmpp_sde", {"r": 0.3}),
    ("dpmpp_sde", {"eta": 0.5, "s_noise": 0.8}),
    ("dpmpp_2m_sde", {"solver_type": "heun"}),
    ("dpmpp_2m_sde", {"eta": 0.5, "s_noise": 0.8}),
    ("dpmpp_3m_sde", {"eta": 0.5, "s_noise": 0.8}),
    ("dpm_2_ancestral", {"eta": 0.5, "s_noise": 0.8}),
])
def test_options_match_k_diffusion(name, options):
    ours, reference, _ = compare(name, options=options, schedule="exponential")
    assert relative_error(ours, reference) < NOISY_TOLERANCE


@pytest.mark.parametrize("name", [*ANCESTRAL, "dpmpp_sde"])
def test_eta_above_one_caps_the_noise_as_k_diffusion_does(name):
    """At eta = 1.2 the large steps (here the last five) have sigma_up = sigma_next and sigma_down = 0: the
    ancestral samplers make one call there."""
    ours, reference, scheduler = compare(name, options={"eta": 1.2}, schedule="karras")
    assert relative_error(ours, reference) < NOISY_TOLERANCE
    if name != "dpmpp_sde":
        assert len(scheduler.timesteps) < 2 * STEPS - 1


# --- ComfyUI's behaviour ---


@pytest.mark.parametrize("name", [*ANCESTRAL, "ddpm"])
def test_comfy_noise_stream_restarts_from_the_seed(name):
    """noise_source="seed": fresh noise from a new generator seeded like the run, as ComfyUI's default noise
    sampler; on the CPU its first draw repeats the initial latents."""
    ours, reference, _ = compare(name, comfy_stream=True, schedule="normal", timestep_type="discrete",
                                 noise_source="seed")
    assert relative_error(ours, reference) < NOISY_TOLERANCE
    continued, _, _ = compare(name, schedule="normal", timestep_type="discrete")
    assert relative_error(ours, continued) > 1e-2


def test_comfy_euler_ancestral_ends_a_capped_step_at_the_denoised_sample():
    ours, reference, _ = compare("euler_ancestral", oracle=comfy_euler_ancestral, comfy_stream=True,
                                 options={"eta": 1.2}, schedule="karras", noise_source="seed", renoise_capped=False)
    assert relative_error(ours, reference) < NOISY_TOLERANCE
    k_style, _, _ = compare("euler_ancestral", options={"eta": 1.2}, schedule="karras", noise_source="seed")
    assert relative_error(ours, k_style) > 1e-2


def test_renoise_capped_only_matters_above_eta_one():
    ours, reference, _ = compare("euler_ancestral", oracle=comfy_euler_ancestral, schedule="karras",
                                 renoise_capped=False)
    assert relative_error(ours, reference) < NOISY_TOLERANCE


# --- class facts ---


@pytest.mark.parametrize("name", SAMPLERS)
def test_class_facts(name):
    cls = SAMPLERS[name].cls
    assert cls.stochastic and cls.from_config(SD_CONFIG).is_stochastic
    assert cls.from_config(SD_CONFIG, s_noise=0.0).is_stochastic is False
    assert cls.brownian == (name in ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"))
    calls = 2 * STEPS - 1 if cls.calls_per_step == 2 else STEPS
    scheduler = cls.from_config(SD_CONFIG)
    scheduler.set_timesteps(STEPS)
    assert len(scheduler.timesteps) == calls
