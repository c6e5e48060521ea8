"""Behaviour of the Euler family (Euler, Euler ancestral, LMS, EDM Euler) beyond the parity table."""

from __future__ import annotations

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
    run_on_meta,
    seeded_normal,
)
from scheduler_testing import pair as pair_on
from scheduler_testing import smooth_model as model
from scheduler_testing import trace_loop as run

import schedcmp.core as core
from schedcmp.core.errors import ConfigError

CONFIGS = {
    "EulerDiscreteScheduler": SD15,
    "EulerAncestralDiscreteScheduler": SD15,
    "LMSDiscreteScheduler": SD15,
    "EDMEulerScheduler": {},
}
NAMES = list(CONFIGS)


def pair(name: str, **options: object) -> tuple[object, object]:
    """Our scheduler and diffusers' from the same config (EDM Euler from its defaults)."""
    return pair_on(name, CONFIGS[name], **options)


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler"])
def test_step_count_errors(name: str) -> None:
    assert_step_count_errors(our_scheduler(name))


def test_edm_step_counts() -> None:
    ours, theirs = pair("EDMEulerScheduler")
    with pytest.raises(ConfigError) as zero:
        ours.set_timesteps(0)
    assert str(zero.value) == "EDMEulerScheduler: num_inference_steps must be at least 1, got 0"
    # A continuous schedule: diffusers accepts more steps than num_train_timesteps, and so do we.
    ours.set_timesteps(2000)
    theirs.set_timesteps(2000)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas)


@pytest.mark.parametrize(
    "kwargs",
    [{"timesteps": [999.0, 700.5, 400.0, 101.0, 3.0]}, {"sigmas": [14.0, 6.0, 2.5, 0.8, 0.1, 0.0]}],
    ids=["timesteps", "sigmas"],
)
@pytest.mark.parametrize("options", [{}, {"timestep_type": "continuous", "prediction_type": "v_prediction"}])
def test_euler_custom_schedule_matches_diffusers(kwargs: dict, options: dict) -> None:
    ours, theirs = pair("EulerDiscreteScheduler", **options)
    if "timesteps" in kwargs and options:
        with pytest.raises(ConfigError, match="custom timesteps"):
            ours.set_timesteps(**kwargs)
        return
    ours.set_timesteps(**kwargs)
    theirs.set_timesteps(**kwargs)
    assert_same_schedule(ours, theirs)
    assert_traces_close(run(ours), run(theirs))


def test_euler_custom_schedule_errors() -> None:
    scheduler = core.EulerDiscreteScheduler.from_config({**SD15, "use_karras_sigmas": True})
    with pytest.raises(ConfigError, match="use_karras_sigmas"):
        scheduler.set_timesteps(timesteps=[999, 500, 1])
    with pytest.raises(ConfigError, match="not both"):
        scheduler.set_timesteps(timesteps=[999, 1], sigmas=[14.0, 0.0])
    with pytest.raises(ConfigError, match="exactly one"):
        scheduler.set_timesteps()


def test_edm_custom_ramp_matches_diffusers() -> None:
    ramp = [0.0, 0.2, 0.5, 0.9, 1.0]
    for options in ({}, {"sigma_schedule": "exponential", "final_sigmas_type": "sigma_min"}):
        ours, theirs = pair("EDMEulerScheduler", **options)
        ours.set_timesteps(sigmas=ramp)
        theirs.set_timesteps(sigmas=torch.tensor(ramp))  # diffusers needs a tensor here
        torch.testing.assert_close(ours.timesteps, theirs.timesteps)
        assert_traces_close(run(ours), run(theirs))


@pytest.mark.parametrize("name", NAMES)
def test_add_noise_matches_diffusers(name: str) -> None:
    ours, theirs = pair(name)
    ours.set_timesteps(20)
    theirs.set_timesteps(20)
    timesteps = theirs.timesteps[[3, 11]]
    torch.testing.assert_close(*add_noise_both(ours, theirs, timesteps))
    ours.set_begin_index(5)
    theirs.set_begin_index(5)
    torch.testing.assert_close(*add_noise_both(ours, theirs, timesteps))


@pytest.mark.parametrize("name", NAMES)
def test_return_dict_false_and_output_match(name: str) -> None:
    ours, theirs = pair(name)
    ours.set_timesteps(6)
    theirs.set_timesteps(6)
    t = ours.timesteps[0]
    sample = seeded_normal(SHAPE, 3)
    output = model(sample, 0)

    def seeded() -> dict:
        return {} if name == "LMSDiscreteScheduler" else {"generator": torch.Generator().manual_seed(4)}

    as_tuple = ours.step(output, t, sample, return_dict=False, **seeded())
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    reference = theirs.step(output, t, sample, return_dict=False, **seeded())
    assert len(reference) == len(as_tuple)
    for a, b in zip(as_tuple, reference, strict=True):
        torch.testing.assert_close(a, b)
    ours.set_timesteps(6)
    as_output = ours.step(output, t, sample, **seeded())
    torch.testing.assert_close(as_output.prev_sample, as_tuple[0])
    torch.testing.assert_close(as_output.pred_original_sample, as_tuple[1])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_fp16_output_dtypes_match_diffusers(name: str, prediction_type: str) -> None:
    ours, theirs = pair(name, prediction_type=prediction_type)
    ours.set_timesteps(4)
    theirs.set_timesteps(4)
    assert_same_dtypes(run(ours, dtype=torch.float16), run(theirs, dtype=torch.float16))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [1, 5])
def test_no_host_sync_on_meta(name: str, steps: int) -> None:
    run_on_meta(our_scheduler(name, CONFIGS[name]), steps)


def test_churn_on_meta_and_cached_tables() -> None:
    run_on_meta(our_scheduler("EulerDiscreteScheduler"), 4, s_churn=1.0)


def test_lms_order_argument_matches_diffusers() -> None:
    for order in (1, 2, 3, 6):
        ours, theirs = pair("LMSDiscreteScheduler")
        ours.set_timesteps(9)
        theirs.set_timesteps(9)
        assert_traces_close(run(ours, order=order), run(theirs, order=order))


def test_edm_given_pred_original_sample_matches_diffusers() -> None:
    ours, theirs = pair("EDMEulerScheduler")
    ours.set_timesteps(5)
    theirs.set_timesteps(5)
    sample = seeded_normal(SHAPE, 5) * ours.init_noise_sigma
    for t in ours.timesteps:
        x0 = torch.tanh(sample) * 0.9
        a = ours.step(torch.zeros(SHAPE), t, sample, pred_original_sample=x0).prev_sample
        b = theirs.step(torch.zeros(SHAPE), t, sample, pred_original_sample=x0).prev_sample
        torch.testing.assert_close(a, b)
        sample = b


def test_begin_index_starts_part_way() -> None:
    ours, theirs = pair("EulerDiscreteScheduler")
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    ours.set_begin_index(4)
    theirs.set_begin_index(4)
    sample = seeded_normal(SHAPE, 6)
    for index, t in enumerate(theirs.timesteps[4:]):
        output = model(theirs.scale_model_input(sample, t), index)
        torch.testing.assert_close(ours.scale_model_input(sample, t), theirs.scale_model_input(sample, t))
        a = ours.step(output, t, sample).prev_sample
        sample = theirs.step(output, t, sample).prev_sample
        torch.testing.assert_close(a, sample)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("EulerDiscreteScheduler", {"use_karras_sigmas": True, "use_beta_sigmas": True}, "only one of"),
        ("LMSDiscreteScheduler", {"use_exponential_sigmas": True, "use_karras_sigmas": True}, "only one of"),
        ("EulerDiscreteScheduler", {"interpolation_type": "cubic"}, "interpolation_type must be one of"),
        ("EulerAncestralDiscreteScheduler", {"prediction_type": "sample"}, "prediction_type must be one of"),
        ("EDMEulerScheduler", {"sigma_schedule": "linear"}, "sigma_schedule must be one of"),
    ],
)
def test_bad_options_fail_at_init(name: str, options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        getattr(core, name)(**options)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_step_leaves_its_inputs_alone(name: str, prediction_type: str) -> None:
    ours, _ = pair(name, prediction_type=prediction_type)
    assert_step_leaves_inputs_alone(ours)
