"""EulerSampler equals k-diffusion's sample_euler on every schedule type, both timestep types, eps and v."""

from __future__ import annotations

import pytest
import torch
from kdiffusion_oracle import hijacked_noise, sampling
from ksampler_harness import SD_CONFIG, initial_noise, make_eps_model, oracle_denoiser, relative_error, run_ours

from schedcmp.core.schedulers.ksamplers import EulerSampler
from schedcmp.core.schedulers.schedule_types import SCHEDULE_TYPES

SCHEDULES = [s.id for s in SCHEDULE_TYPES]


def _pair(steps: int, **config):
    scheduler = EulerSampler.from_config(SD_CONFIG, **config)
    scheduler.set_timesteps(steps)
    model = make_eps_model(scheduler, scheduler.config.prediction_type)
    x, generator = initial_noise(scheduler)
    return scheduler, model, x, generator


@pytest.mark.parametrize("timestep_type", ["continuous", "discrete"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_euler_matches_k_diffusion_on_every_schedule(schedule, timestep_type):
    scheduler, model, x, generator = _pair(10, schedule=schedule, timestep_type=timestep_type)
    ours = run_ours(scheduler, model, x.clone(), generator)
    reference = sampling().sample_euler(oracle_denoiser(scheduler, model), x.clone(), scheduler.sigmas, disable=True)
    assert relative_error(ours, reference) < 1e-5


def test_euler_matches_k_diffusion_on_v_prediction():
    scheduler, model, x, generator = _pair(10, schedule="karras", prediction_type="v_prediction")
    ours = run_ours(scheduler, model, x.clone(), generator)
    reference = sampling().sample_euler(oracle_denoiser(scheduler, model), x.clone(), scheduler.sigmas, disable=True)
    assert relative_error(ours, reference) < 1e-5


def test_euler_churn_matches_k_diffusion_with_the_same_noise():
    scheduler, model, x, generator = _pair(10, schedule="karras", s_churn=1.0, s_tmin=0.05, s_tmax=50.0)
    oracle_generator = torch.Generator().manual_seed(0)
    torch.randn(x.shape, generator=oracle_generator)  # the initial latents' draw
    ours = run_ours(scheduler, model, x.clone(), generator)
    with hijacked_noise(oracle_generator):
        reference = sampling().sample_euler(oracle_denoiser(scheduler, model), x.clone(), scheduler.sigmas,
                                            s_churn=1.0, s_tmin=0.05, s_tmax=50.0, disable=True)
    assert len(scheduler.timesteps) == 11  # a priming call: the first step's churn moves the first point
    assert relative_error(ours, reference) < 1e-5
