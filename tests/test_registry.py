"""Scheduler names: aliases, A1111 presets and class names, looked up forgivingly; unknown names get suggestions."""

from __future__ import annotations

import diffusers
import pytest
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers
from scheduler_cases import BASE_CONFIGS

import schedcmp.core as core
from schedcmp.core.schedulers import ALIASES, SCHEDULER_CLASSES, known_scheduler_names, resolve_scheduler

ALIAS_TABLE = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "dpm_sde": "DPMSolverSDEScheduler",
    "dpm_single": "DPMSolverSinglestepScheduler",
    "kdpm2": "KDPM2DiscreteScheduler",
    "kdpm2_a": "KDPM2AncestralDiscreteScheduler",
    "deis": "DEISMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "edm_euler": "EDMEulerScheduler",
}

PRESET_TABLE = [
    ("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    ("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    ("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
    ("DPM++ SDE Karras", "DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
    ("Euler a", "EulerAncestralDiscreteScheduler", {}),
    ("LMS Karras", "LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    ("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}),
    ("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
    ("UniPC", "UniPCMultistepScheduler", {}),
]


@pytest.mark.parametrize(("alias", "class_name"), ALIAS_TABLE.items())
def test_alias_resolves_to_its_class(alias: str, class_name: str) -> None:
    assert resolve_scheduler(alias).cls.__name__ == class_name


def test_aliases_cover_the_whole_family() -> None:
    assert {p.cls for p in ALIASES} == set(SCHEDULER_CLASSES)


def test_family_is_the_one_diffusers_lists_for_stable_diffusion() -> None:
    assert {c.__name__ for c in SCHEDULER_CLASSES} == {e.name for e in KarrasDiffusionSchedulers}


@pytest.mark.parametrize(("name", "class_name", "options"), PRESET_TABLE, ids=[p[0] for p in PRESET_TABLE])
def test_preset_builds_its_class_with_its_options(name: str, class_name: str, options: dict) -> None:
    scheduler = resolve_scheduler(name).build(BASE_CONFIGS["sd15"])
    assert type(scheduler).__name__ == class_name
    for key, value in options.items():
        assert scheduler.config[key] == value
    assert scheduler.config.beta_schedule == "scaled_linear" or class_name == "EDMEulerScheduler"


@pytest.mark.parametrize("spelling", ["DPM++ 2M Karras", "dpm++ 2m karras", "dpm++_2m_karras", " DPM++-2M-Karras ", "dpm++2mkarras"])
def test_lookup_ignores_case_and_separators(spelling: str) -> None:
    assert resolve_scheduler(spelling).name == "DPM++ 2M Karras"


@pytest.mark.parametrize("cls", SCHEDULER_CLASSES, ids=lambda c: c.__name__)
def test_class_names_resolve(cls: type) -> None:
    assert resolve_scheduler(cls.__name__).cls is cls


def test_build_options_override_preset_options() -> None:
    scheduler = resolve_scheduler("DPM++ 2M Karras").build(BASE_CONFIGS["sd15"], use_karras_sigmas=False)
    assert scheduler.config.use_karras_sigmas is False


def test_unknown_name_lists_the_closest_names() -> None:
    with pytest.raises(core.UnknownSchedulerError) as error:
        resolve_scheduler("eulr")
    assert str(error.value) == "unknown scheduler 'eulr'; did you mean 'euler', 'euler_a', 'edm_euler'?"


def test_unknown_name_without_neighbours_points_to_the_list() -> None:
    with pytest.raises(core.UnknownSchedulerError) as error:
        resolve_scheduler("zzzzzzzz")
    assert str(error.value) == "unknown scheduler 'zzzzzzzz'; see `schedcmp list-compatible`"


def test_every_known_name_resolves() -> None:
    for name in known_scheduler_names():
        assert resolve_scheduler(name).cls in SCHEDULER_CLASSES


@pytest.mark.parametrize("cls", SCHEDULER_CLASSES, ids=lambda c: c.__name__)
def test_compatibles_name_the_same_classes_as_diffusers(cls: type) -> None:
    ours = {c.__name__ for c in cls().compatibles}
    theirs = {c.__name__ for c in getattr(diffusers, cls.__name__)().compatibles}
    assert ours == theirs


@pytest.mark.parametrize("cls", SCHEDULER_CLASSES, ids=lambda c: c.__name__)
def test_every_class_is_importable_from_the_core(cls: type) -> None:
    assert getattr(core, cls.__name__) is cls
