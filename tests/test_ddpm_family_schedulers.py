"""DDPM, DDIM and PNDM behaviour the parity table does not cover: errors, custom timesteps, add_noise, begin index,
return forms, dtypes and the no-host-sync guarantee (a whole loop on the ``meta`` device)."""

from __future__ import annotations

import pytest
import torch
from scheduler_testing import (
    SHAPE,
    add_noise_both,
    assert_step_count_errors,
    assert_step_leaves_inputs_alone,
    assert_traces_close,
    our_scheduler,
    pair,
    run_on_meta,
    seeded_normal,
    takes_generator,
)

import schedcmp.core as core
from schedcmp.core.errors import ConfigError

NAMES = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler")


def loop(scheduler: object, timesteps: torch.Tensor, dtype: torch.dtype = torch.float32, **kwargs: object) -> list:
    """Step through ``timesteps`` with seeded model outputs and noise; returns every step's output tuple."""
    if takes_generator(scheduler):
        kwargs = {**kwargs, "generator": torch.Generator().manual_seed(7)}
    sample = seeded_normal(SHAPE, 0).to(dtype)
    outputs = []
    for index, t in enumerate(timesteps):
        model_output = seeded_normal(SHAPE, index).to(dtype)
        out = scheduler.step(model_output, t, scheduler.scale_model_input(sample, t), return_dict=False, **kwargs)
        sample = out[0]
        outputs.append(out)
    return outputs


def assert_same(ours: list, theirs: list) -> None:
    assert_traces_close(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_step_count_errors(name: str) -> None:
    assert_step_count_errors(our_scheduler(name))


@pytest.mark.parametrize("name", NAMES)
def test_schedule_past_last_training_timestep_is_refused_at_set_timesteps(name: str) -> None:
    # leading spacing + steps_offset=1 + 1000 steps reaches t = 1000; diffusers fails later with an IndexError
    ours, _ = pair(name)
    with pytest.raises(ConfigError, match=r"reach timestep 1000, outside the training range 0\.\.999"):
        ours.set_timesteps(1000)


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("DDPMScheduler", "variance_type", "fixed"),
        ("DDIMScheduler", "timestep_spacing", "uniform"),
        ("PNDMScheduler", "prediction_type", "sample"),
        ("DDIMScheduler", "beta_schedule", "sigmoid"),
    ],
)
def test_bad_option_names_key_value_and_choices(name: str, key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"{name}: {key} must be one of .*; got '{value}'"):
        getattr(core, name)(**{key: value})


def test_ddpm_custom_timesteps_match_diffusers() -> None:
    custom = [999, 800, 640, 333, 100, 20, 0]
    ours, theirs = pair("DDPMScheduler", variance_type="fixed_small_log")
    ours.set_timesteps(timesteps=custom)
    theirs.set_timesteps(timesteps=custom)
    assert torch.equal(ours.timesteps, theirs.timesteps) and ours.custom_timesteps
    assert_same(loop(ours, ours.timesteps), loop(theirs, theirs.timesteps))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_inference_steps": 5, "timesteps": [10, 0]}, "not both"),
        ({"timesteps": [10, 10, 0]}, "strictly descending"),
        ({"timesteps": [1000, 0]}, r"lie in 0\.\.999"),
        ({"timesteps": [10, -1]}, r"lie in 0\.\.999"),
        ({"timesteps": []}, "non-empty list of integers"),
        ({}, "pass num_inference_steps or timesteps"),
    ],
)
def test_ddpm_custom_timestep_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        core.DDPMScheduler().set_timesteps(**kwargs)


@pytest.mark.parametrize("beta_schedule", ["sigmoid", "laplace"])
def test_ddpm_extra_beta_schedules_match_diffusers(beta_schedule: str) -> None:
    ours, theirs = pair("DDPMScheduler", beta_schedule=beta_schedule, timestep_spacing="trailing")
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, rtol=1e-6, atol=0)
    ours.set_timesteps(12)
    theirs.set_timesteps(12)
    assert_same(loop(ours, ours.timesteps), loop(theirs, theirs.timesteps))


def test_ddpm_steps_without_set_timesteps_like_diffusers() -> None:
    ours, theirs = pair("DDPMScheduler")
    assert torch.equal(ours.timesteps, theirs.timesteps)
    assert_same(loop(ours, ours.timesteps[:5]), loop(theirs, theirs.timesteps[:5]))


@pytest.mark.parametrize("name", NAMES)
def test_add_noise_matches_diffusers(name: str) -> None:
    ours, theirs = pair(name)
    t = torch.tensor([0, 500, 999])
    assert torch.equal(*add_noise_both(ours, theirs, t))
    x0, noise = seeded_normal((3, *SHAPE[1:]), 1), seeded_normal((3, *SHAPE[1:]), 2)
    assert ours.add_noise(x0.half(), noise.half(), t).dtype == torch.float16
    if hasattr(theirs, "get_velocity"):
        assert torch.equal(ours.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t))


@pytest.mark.parametrize("name", NAMES)
def test_return_dict_false_and_fp16_dtype_match_diffusers(name: str) -> None:
    ours, theirs = pair(name)
    ours.set_timesteps(6)
    theirs.set_timesteps(6)
    mine, reference = loop(ours, ours.timesteps, torch.float16), loop(theirs, theirs.timesteps, torch.float16)
    assert [len(out) for out in mine] == [len(out) for out in reference]  # (prev, x0) or PNDM's (prev,)
    for a, b in zip(mine, reference, strict=True):
        assert all(x.dtype == y.dtype == torch.float16 for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_loop_is_bit_identical_to_diffusers(name: str) -> None:
    ours, theirs = pair(name, prediction_type="v_prediction")
    ours.set_timesteps(20)
    theirs.set_timesteps(20)
    for a, b in zip(loop(ours, ours.timesteps), loop(theirs, theirs.timesteps), strict=True):
        assert torch.equal(a[0], b[0])


def test_ddim_eta_and_variance_noise_match_diffusers() -> None:
    ours, theirs = pair("DDIMScheduler", timestep_spacing="trailing")
    ours.set_timesteps(8)
    theirs.set_timesteps(8)
    assert_same(loop(ours, ours.timesteps, eta=0.3), loop(theirs, theirs.timesteps, eta=0.3))
    ours.set_timesteps(8)
    noise = torch.ones(SHAPE)
    sample = torch.zeros(SHAPE)
    a = ours.step(sample, ours.timesteps[0], sample, eta=1.0, variance_noise=noise).prev_sample
    b = theirs.step(sample, theirs.timesteps[0], sample, eta=1.0, variance_noise=noise).prev_sample
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="generator or variance_noise, not both"):
        ours.step(sample, 0, sample, eta=1.0, variance_noise=noise, generator=torch.Generator())


@pytest.mark.parametrize("name", ["DDIMScheduler", "PNDMScheduler"])
def test_step_before_set_timesteps_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="call set_timesteps before step"):
        getattr(core, name)().step(torch.zeros(SHAPE), 0, torch.zeros(SHAPE))


@pytest.mark.parametrize("name", NAMES)
def test_step_past_the_end_is_refused(name: str) -> None:
    ours, _ = pair(name)
    ours.set_timesteps(2)
    loop(ours, ours.timesteps)
    with pytest.raises(ConfigError, match="call set_timesteps again"):
        ours.step(torch.zeros(SHAPE), 0, torch.zeros(SHAPE))


@pytest.mark.parametrize("skip_prk_steps", [True, False])
def test_pndm_schedule_lengths_and_prk_minimum(skip_prk_steps: bool) -> None:
    ours, theirs = pair("PNDMScheduler", skip_prk_steps=skip_prk_steps)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    assert len(ours.timesteps) == (11 if skip_prk_steps else 19)  # PLMS start repeats one; PRK adds 12 - 3 calls
    if not skip_prk_steps:
        with pytest.raises(ConfigError, match="skip_prk_steps=False needs num_inference_steps >= 4"):
            ours.set_timesteps(3)


@pytest.mark.parametrize(("name", "options"), [(n, {}) for n in NAMES] + [("PNDMScheduler", {"skip_prk_steps": False})])
def test_begin_index_matches_diffusers_on_the_tail_of_the_schedule(name: str, options: dict) -> None:
    # img2img: our counter starts at begin_index; diffusers' loop simply sees the tail (its PNDM counter at 0)
    ours, theirs = pair(name, **options)
    ours.set_timesteps(25)
    theirs.set_timesteps(25)
    ours.set_begin_index(13)
    assert_same(loop(ours, ours.timesteps[13:]), loop(theirs, theirs.timesteps[13:]))


@pytest.mark.parametrize(
    ("name", "options", "step_kwargs"),
    [
        ("DDPMScheduler", {}, {}),
        ("DDPMScheduler", {"variance_type": "learned_range"}, {}),
        ("DDIMScheduler", {"thresholding": True}, {"eta": 0.5}),
        ("PNDMScheduler", {}, {}),
        ("PNDMScheduler", {"skip_prk_steps": False, "prediction_type": "v_prediction"}, {}),
    ],
)
def test_no_host_sync_loop_on_meta(name: str, options: dict, step_kwargs: dict) -> None:
    channels = 8 if options.get("variance_type") == "learned_range" else 4
    run_on_meta(our_scheduler(name, **options), 12, out_channels=channels, **step_kwargs)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("DDPMScheduler", {}),
        ("DDPMScheduler", {"prediction_type": "v_prediction", "clip_sample": True}),
        ("DDIMScheduler", {"prediction_type": "v_prediction"}),
        ("PNDMScheduler", {}),
        ("PNDMScheduler", {"skip_prk_steps": False, "prediction_type": "v_prediction"}),
    ],
)
def test_step_leaves_its_inputs_alone(name: str, options: dict) -> None:
    assert_step_leaves_inputs_alone(our_scheduler(name, **options), steps=8)
