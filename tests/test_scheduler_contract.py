"""Every scheduler keeps diffusers' public contract and never synchronises host and device inside a step."""

from __future__ import annotations

import inspect

import diffusers
import pytest
import torch
from scheduler_cases import BASE_CONFIGS

import schedcmp.core as core
from schedcmp.core.schedulers import SCHEDULER_CLASSES

# Where we take an argument diffusers does not: DPMSolverSDE draws its Brownian noise from the run's generator.
EXTRA_STEP_ARGS = {"DPMSolverSDEScheduler": {"generator"}}
CLASSES = pytest.mark.parametrize("cls", SCHEDULER_CLASSES, ids=lambda c: c.__name__)


def params(function) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name not in ("self", "kwargs")]


@CLASSES
def test_step_takes_diffusers_arguments_in_diffusers_order(cls: type) -> None:
    ours, theirs = params(cls.step), params(getattr(diffusers, cls.__name__).step)
    assert [p for p in ours if p in theirs] == theirs
    assert set(ours) - set(theirs) == EXTRA_STEP_ARGS.get(cls.__name__, set())


@CLASSES
def test_set_timesteps_takes_diffusers_arguments(cls: type) -> None:
    assert set(params(getattr(diffusers, cls.__name__).set_timesteps)) <= set(params(cls.set_timesteps))


@CLASSES
def test_init_takes_diffusers_config_keys_with_diffusers_defaults(cls: type) -> None:
    ours = inspect.signature(cls.__init__).parameters
    theirs = inspect.signature(getattr(diffusers, cls.__name__).__init__).parameters
    assert set(ours) - {"kwargs"} == set(theirs) - {"kwargs"}
    for name, parameter in theirs.items():
        if name not in ("self", "kwargs"):
            assert ours[name].default == parameter.default, name


# Whether a configuration's samples depend on the generator (DDIM's eta is a step argument, so DDIM is not).
STOCHASTIC_TABLE = [
    ("DDIMScheduler", {}, False),
    ("DDPMScheduler", {}, True),
    ("PNDMScheduler", {}, False),
    ("PNDMScheduler", {"skip_prk_steps": True}, False),
    ("LMSDiscreteScheduler", {}, False),
    ("EulerDiscreteScheduler", {}, False),
    ("HeunDiscreteScheduler", {}, False),
    ("EulerAncestralDiscreteScheduler", {}, True),
    ("DPMSolverMultistepScheduler", {}, False),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, True),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min"}, True),
    ("DPMSolverSinglestepScheduler", {}, False),
    ("DPMSolverSinglestepScheduler", {"algorithm_type": "sde-dpmsolver++"}, True),
    ("KDPM2DiscreteScheduler", {}, False),
    ("KDPM2AncestralDiscreteScheduler", {}, True),
    ("DEISMultistepScheduler", {}, False),
    ("UniPCMultistepScheduler", {}, False),
    ("DPMSolverSDEScheduler", {}, True),
    ("EDMEulerScheduler", {}, False),
]


@pytest.mark.parametrize(("name", "options", "stochastic"), STOCHASTIC_TABLE)
def test_is_stochastic(name: str, options: dict, stochastic: bool) -> None:
    assert getattr(core, name)(**options).is_stochastic is stochastic


@pytest.mark.parametrize(("name", "options", "stochastic"), STOCHASTIC_TABLE)
def test_draws_noise_without_step_options_is_is_stochastic(name: str, options: dict, stochastic: bool) -> None:
    assert getattr(core, name)(**options).draws_noise({}) is stochastic


@pytest.mark.parametrize(
    ("name", "step_options", "draws"),
    [
        ("DDIMScheduler", {"eta": 0.0}, False),
        ("DDIMScheduler", {"eta": 1.0}, True),
        ("EulerDiscreteScheduler", {"s_churn": 0.0}, False),
        ("EulerDiscreteScheduler", {"s_churn": 0.5}, True),
        ("EDMEulerScheduler", {"s_churn": 0.5}, True),
        ("HeunDiscreteScheduler", {}, False),
    ],
)
def test_step_arguments_that_add_noise(name: str, step_options: dict, draws: bool) -> None:
    assert getattr(core, name)().draws_noise(step_options) is draws


def test_stochastic_table_covers_every_class() -> None:
    assert {row[0] for row in STOCHASTIC_TABLE} == {cls.__name__ for cls in SCHEDULER_CLASSES}


@CLASSES
@pytest.mark.parametrize("steps", [1, 4, 11])
def test_loop_runs_on_meta_tensors(cls: type, steps: int) -> None:
    """Meta tensors carry no data: any .item(), nonzero() or data-dependent branch in a step would raise."""
    scheduler = cls.from_config(BASE_CONFIGS["sd15"])
    scheduler.set_timesteps(steps, device="meta")
    sample = torch.empty((1, 4, 8, 8), device="meta")
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, t)
        model_output = torch.empty_like(model_input)
        sample = scheduler.step(model_output, t, sample).prev_sample
    assert sample.device.type == "meta" and sample.shape == (1, 4, 8, 8)
