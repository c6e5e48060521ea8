"""Behaviour of the Euler family (Euler, Euler ancestral, LMS, EDM Euler) beyond the parity table."""

from __future__ import annotations

import inspect

import diffusers
import pytest
import torch

import schedcmp.core as core
from schedcmp.core.errors import ConfigError

SD15 = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}
CONFIGS = {
    "EulerDiscreteScheduler": SD15,
    "EulerAncestralDiscreteScheduler": SD15,
    "LMSDiscreteScheduler": SD15,
    "EDMEulerScheduler": {},
}
NAMES = list(CONFIGS)
SHAPE = (2, 4, 8, 8)


def pair(name: str, **options: object) -> tuple[object, object]:
    """Our scheduler and diffusers' from the same config."""
    config = {**CONFIGS[name], **options}
    return getattr(core, name).from_config(config), getattr(diffusers, name).from_config(config)


def model(sample: torch.Tensor, index: int) -> torch.Tensor:
    return 0.5 * torch.tanh(sample) + 0.1 * (index + 1)


def run(scheduler: object, *, seed: int = 7, dtype: torch.dtype = torch.float32, **step_kwargs: object) -> list:
    """A full loop; returns (scaled input, prev_sample, pred_original_sample) per step."""
    generator = torch.Generator().manual_seed(seed)
    sample = (torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma).to(dtype)
    trace = []
    for index, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(sample, t)
        kwargs = dict(step_kwargs)
        if "generator" in inspect.signature(scheduler.step).parameters:
            kwargs["generator"] = generator
        prev, pred = scheduler.step(model(model_input, index), t, sample, return_dict=False, **kwargs)
        trace.append((model_input, prev, pred))
        sample = prev
    return trace


def assert_traces_close(ours: list, theirs: list) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        for x, y in zip(a, b, strict=True):
            assert x.dtype == y.dtype
            torch.testing.assert_close(x.float(), y.float(), rtol=1e-5, atol=1e-5 * max(1.0, y.abs().max().item()))


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler"])
def test_step_count_errors(name: str) -> None:
    scheduler = getattr(core, name).from_config(CONFIGS[name])
    with pytest.raises(ConfigError) as zero:
        scheduler.set_timesteps(0)
    assert str(zero.value) == f"{name}: num_inference_steps must be between 1 and 1000 (num_train_timesteps), got 0"
    with pytest.raises(ConfigError) as many:
        scheduler.set_timesteps(1001)
    assert str(many.value) == f"{name}: num_inference_steps must be between 1 and 1000 (num_train_timesteps), got 1001"


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
    assert ours.timesteps.dtype == theirs.timesteps.dtype
    torch.testing.assert_close(ours.timesteps, theirs.timesteps)
    assert ours.init_noise_sigma == pytest.approx(float(theirs.init_noise_sigma), rel=1e-6)
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
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    timesteps = theirs.timesteps[[3, 11]]
    torch.testing.assert_close(ours.add_noise(x0, noise, timesteps), theirs.add_noise(x0, noise, timesteps))
    ours.set_begin_index(5)
    theirs.set_begin_index(5)
    torch.testing.assert_close(ours.add_noise(x0, noise, timesteps), theirs.add_noise(x0, noise, timesteps))


@pytest.mark.parametrize("name", NAMES)
def test_return_dict_false_and_output_match(name: str) -> None:
    ours, theirs = pair(name)
    ours.set_timesteps(6)
    theirs.set_timesteps(6)
    t = ours.timesteps[0]
    sample = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
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


def test_is_stochastic() -> None:
    assert core.EulerAncestralDiscreteScheduler().is_stochastic is True
    assert core.EulerDiscreteScheduler().is_stochastic is False
    assert core.LMSDiscreteScheduler().is_stochastic is False
    assert core.EDMEulerScheduler().is_stochastic is False


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_fp16_output_dtypes_match_diffusers(name: str, prediction_type: str) -> None:
    ours, theirs = pair(name, prediction_type=prediction_type)
    ours.set_timesteps(4)
    theirs.set_timesteps(4)
    for (a_in, a_prev, a_pred), (b_in, b_prev, b_pred) in zip(
        run(ours, dtype=torch.float16), run(theirs, dtype=torch.float16), strict=True
    ):
        assert (a_in.dtype, a_prev.dtype, a_pred.dtype) == (b_in.dtype, b_prev.dtype, b_pred.dtype)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [1, 5])
def test_no_host_sync_on_meta(name: str, steps: int) -> None:
    scheduler = getattr(core, name).from_config(CONFIGS[name])
    scheduler.set_timesteps(steps, device="meta")
    assert scheduler.timesteps.device.type == "meta"
    sample = torch.empty(SHAPE, device="meta")
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, t)
        output = scheduler.step(torch.empty(SHAPE, device="meta"), t, model_input)
        sample = output.prev_sample
        assert sample.device.type == "meta"


def test_churn_on_meta_and_cached_tables() -> None:
    scheduler = core.EulerDiscreteScheduler.from_config(SD15)
    scheduler.set_timesteps(4, device="meta")
    sample = torch.empty(SHAPE, device="meta")
    for t in scheduler.timesteps:
        sample = scheduler.step(torch.empty(SHAPE, device="meta"), t, sample, s_churn=1.0).prev_sample
    assert sample.device.type == "meta"


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
    sample = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5)) * ours.init_noise_sigma
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
    sample = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6))
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
