"""Behaviour of the second-order k-diffusion family (Heun, KDPM2, KDPM2 ancestral, DPM-Solver SDE) beyond parity."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
from scheduler_testing import (
    SD15,
    SHAPE,
    add_noise_both,
    assert_same_dtypes,
    assert_same_schedule,
    assert_step_count_errors,
    assert_step_leaves_inputs_alone,
    assert_traces_close,
    our_scheduler,
    pair,
    run_on_meta,
    seeded_normal,
    trace_loop,
)
from scheduler_testing import smooth_model as model
from sde_bridge import share_brownian_noise

import schedcmp.core as core
from schedcmp.core.errors import ConfigError
from schedcmp.core.schedulers.dpmsolver_sde import BrownianNoiseSampler

NAMES = ["HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DPMSolverSDEScheduler"]
SDE = "DPMSolverSDEScheduler"
run = functools.partial(trace_loop, seed=4)  # the seed set_both gives diffusers' SDE noise


def set_both(ours: object, theirs: object, *args: object, **kwargs: object) -> None:
    """set_timesteps on both; diffusers' SDE scheduler then draws our Brownian path (seed 4)."""
    ours.set_timesteps(*args, **kwargs)
    theirs.set_timesteps(*args, **kwargs)
    if type(ours).__name__ == SDE:
        share_brownian_noise(theirs, generator_seed=4, ours=False)


@pytest.mark.parametrize("name", NAMES)
def test_step_count_errors(name: str) -> None:
    assert_step_count_errors(our_scheduler(name))


@pytest.mark.parametrize("name", NAMES)
def test_config_errors(name: str) -> None:
    cls = getattr(core, name)
    with pytest.raises(ConfigError, match="use_karras_sigmas=True and use_beta_sigmas=True"):
        cls(use_karras_sigmas=True, use_beta_sigmas=True)
    if name != "HeunDiscreteScheduler":  # diffusers takes "sample" here but raises NotImplementedError in step
        with pytest.raises(ConfigError, match="prediction_type must be one of 'epsilon', 'v_prediction'; got 'sample'"):
            cls(prediction_type="sample")


@pytest.mark.parametrize("options", [{}, {"prediction_type": "v_prediction", "clip_sample": True}])
def test_heun_custom_timesteps_match_diffusers(options: dict) -> None:
    ours, theirs = pair("HeunDiscreteScheduler", **options)
    set_both(ours, theirs, timesteps=[999, 800, 501, 250, 20])
    assert_same_schedule(ours, theirs)
    assert_traces_close(run(ours), run(theirs))


def test_heun_custom_timesteps_errors() -> None:
    scheduler = core.HeunDiscreteScheduler.from_config({**SD15, "use_karras_sigmas": True})
    with pytest.raises(ConfigError, match="custom timesteps cannot be used with use_karras_sigmas=True"):
        scheduler.set_timesteps(timesteps=[999, 500, 1])
    with pytest.raises(ConfigError, match="exactly one"):
        scheduler.set_timesteps(4, timesteps=[999, 1])
    with pytest.raises(ConfigError, match="exactly one"):
        scheduler.set_timesteps()


def test_heun_exp_beta_schedule_matches_diffusers() -> None:
    ours, theirs = pair("HeunDiscreteScheduler", beta_schedule="exp", use_karras_sigmas=True)
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, rtol=0, atol=0)
    set_both(ours, theirs, 9)
    assert_traces_close(run(ours), run(theirs))


@pytest.mark.parametrize("name", NAMES)
def test_begin_index_loop_matches_diffusers(name: str) -> None:
    """img2img starts at begin_index = t_start * order; the counter picks up there without a timestep search."""
    ours, theirs = pair(name)
    set_both(ours, theirs, 10)
    ours.set_begin_index(6)
    theirs.set_begin_index(6)
    assert_traces_close(run(ours, start=6), run(theirs, start=6))


@pytest.mark.parametrize("name", NAMES)
def test_add_noise_matches_diffusers(name: str) -> None:
    ours, theirs = pair(name)
    set_both(ours, theirs, 20)
    timesteps = theirs.timesteps[[3, 12]]
    torch.testing.assert_close(*add_noise_both(ours, theirs, timesteps))
    ours.set_begin_index(4)
    theirs.set_begin_index(4)
    torch.testing.assert_close(*add_noise_both(ours, theirs, timesteps))


@pytest.mark.parametrize("name", NAMES)
def test_return_dict_false_and_output_match(name: str) -> None:
    ours, theirs = pair(name)
    set_both(ours, theirs, 6)
    as_tuple, reference = run(ours)[0][1:], run(theirs)[0][1:]
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    for a, b in zip(as_tuple, reference, strict=True):
        torch.testing.assert_close(a, b)
    ours.set_timesteps(6)
    sample = seeded_normal(SHAPE, 0) * ours.init_noise_sigma
    kwargs = {"generator": torch.Generator().manual_seed(4)} if name in (SDE, "KDPM2AncestralDiscreteScheduler") else {}
    output = ours.step(model(ours.scale_model_input(sample, 0), 0), 0, sample, **kwargs)
    assert isinstance(output, core.SchedulerOutput)
    torch.testing.assert_close(output.prev_sample, as_tuple[0])
    torch.testing.assert_close(output.pred_original_sample, as_tuple[1])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_fp16_output_dtypes_match_diffusers(name: str, prediction_type: str) -> None:
    ours, theirs = pair(name, prediction_type=prediction_type)
    set_both(ours, theirs, 4)
    assert_same_dtypes(run(ours, dtype=torch.float16), run(theirs, dtype=torch.float16), torch.float16)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_no_host_sync_on_meta(name: str, steps: int) -> None:
    scheduler = our_scheduler(name, use_karras_sigmas=True)
    run_on_meta(scheduler, steps)
    assert len(scheduler.timesteps) == 2 * steps - 1


# --- the Brownian noise of DPMSolverSDEScheduler ---


def brownian(seed: int = 0, shape: tuple[int, ...] = (200_000,)) -> BrownianNoiseSampler:
    """One sampler over [0.03, 14.6] whose elements are independent Brownian paths."""
    return BrownianNoiseSampler(torch.empty(shape), 0.03, 14.6, generator=torch.Generator().manual_seed(seed))


def test_brownian_increments_are_standard_normal_and_correlated_like_one_path() -> None:
    sampler = brownian()
    sigmas = [14.6, 7.0, 2.5, 0.9, 0.2, 0.05]
    for sigma, sigma_next in itertools.pairwise(sigmas):
        midpoint = math.sqrt(sigma * sigma_next)
        half, full = sampler(sigma, midpoint), sampler(sigma, sigma_next)  # the SDE step's two queries
        for z in (half, full):
            assert abs(z.mean().item()) < 0.01 and abs(z.var().item() - 1) < 0.02
        # increments over nested intervals of one path: corr = sqrt(|mid - sigma| / |next - sigma|)
        expected = math.sqrt((sigma - midpoint) / (sigma - sigma_next))
        assert torch.corrcoef(torch.stack([half, full]))[0, 1].item() == pytest.approx(expected, abs=0.01)


def test_brownian_increments_add_up_and_repeat() -> None:
    sampler = brownian(shape=(1000,))
    t0, t1, t2 = 9.0, 4.0, 0.5
    whole = sampler(t0, t2) * math.sqrt(t0 - t2)
    parts = sampler(t0, t1) * math.sqrt(t0 - t1) + sampler(t1, t2) * math.sqrt(t1 - t2)
    torch.testing.assert_close(whole, parts, rtol=0, atol=1e-5)
    torch.testing.assert_close(sampler(t1, t0), -sampler(t0, t1))  # orientation follows the arguments
    # times beyond [sigma_min, sigma_max] extend the same path
    outside = sampler(20.0, 0.01) * math.sqrt(19.99)
    pieces = sampler(20.0, t0) * math.sqrt(20.0 - t0) + whole + sampler(t2, 0.01) * math.sqrt(t2 - 0.01)
    torch.testing.assert_close(outside, pieces, rtol=0, atol=1e-5)


def test_brownian_path_is_reproducible_from_the_generator() -> None:
    queries = [(14.6, 6.0), (14.6, 3.0), (3.0, 1.5), (3.0, 0.7)]
    first, again, other = brownian(1, (64,)), brownian(1, (64,)), brownian(2, (64,))
    for query in queries:
        torch.testing.assert_close(first(*query), again(*query), rtol=0, atol=0)
        assert not torch.equal(first(*query), other(*query))


def sde_images(seed: int | None, **options: object) -> torch.Tensor:
    """The final sample of a 6-step DPM-Solver SDE loop given a generator seeded with ``seed`` (None: none)."""
    scheduler = core.DPMSolverSDEScheduler.from_config({**SD15, **options})
    scheduler.set_timesteps(6)
    sample = seeded_normal(SHAPE, 0) * scheduler.init_noise_sigma
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    for index, t in enumerate(scheduler.timesteps):
        output = model(scheduler.scale_model_input(sample, t), index)
        sample = scheduler.step(output, t, sample, generator=generator).prev_sample
    return sample


def test_sde_images_follow_the_generator_seed() -> None:
    torch.testing.assert_close(sde_images(8), sde_images(8), rtol=0, atol=0)
    assert not torch.allclose(sde_images(8), sde_images(9))
    # the generator wins over noise_sampler_seed, which seeds runs without a generator
    torch.testing.assert_close(sde_images(8, noise_sampler_seed=3), sde_images(8), rtol=0, atol=0)
    torch.testing.assert_close(sde_images(None, noise_sampler_seed=3), sde_images(None, noise_sampler_seed=3))
    assert not torch.allclose(sde_images(None, noise_sampler_seed=3), sde_images(None, noise_sampler_seed=5))
    assert not torch.allclose(sde_images(None), sde_images(None))  # neither: a fresh random path each run


def test_sde_s_noise_scales_the_brownian_term() -> None:
    ours, theirs = pair(SDE)
    set_both(ours, theirs, 5)
    sample = seeded_normal(SHAPE, 0) * ours.init_noise_sigma
    output = model(sample, 0)
    a = ours.step(output, 0, sample, s_noise=0.5, generator=torch.Generator().manual_seed(4)).prev_sample
    b = theirs.step(output, theirs.timesteps[0], sample, s_noise=0.5).prev_sample
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_step_leaves_its_inputs_alone(name: str, prediction_type: str) -> None:
    assert_step_leaves_inputs_alone(our_scheduler(name, prediction_type=prediction_type))
