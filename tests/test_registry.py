"""Scheduler names: aliases, diffusers classes, A1111 and ComfyUI samplers and schedule types, each resolved as its
tool means it; unknown names get suggestions."""

from __future__ import annotations

import diffusers
import pytest
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers
from scheduler_cases import BASE_CONFIGS

import schedcmp.core as core
from schedcmp.core.schedulers import (
    ALIASES,
    COMFY_SAMPLERS,
    SCHEDULER_CLASSES,
    known_scheduler_names,
    resolve_schedule,
    resolve_scheduler,
    schedule_overrides,
)

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

# The diffusers documentation's stand-ins for A1111 names, behind the diffusers: prefix.
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

# A1111 1.10's sampler list (modules/sd_samplers_kdiffusion.py samplers_k_diffusion and the timestep, LCM and
# extra samplers): label -> class, the schedule "Automatic" means, discard_next_to_last_sigma, options.
A1111_TABLE = [
    ("DPM++ 2M", "DPMPP2MSampler", "karras", False, {}),
    ("DPM++ SDE", "DPMPPSDESampler", "karras", False, {}),
    ("DPM++ 2M SDE", "DPMPP2MSDESampler", "exponential", False, {}),
    ("DPM++ 2M SDE Heun", "DPMPP2MSDESampler", "exponential", False, {"solver_type": "heun"}),
    ("DPM++ 2S a", "DPMPP2SAncestralSampler", "karras", False, {}),
    ("DPM++ 3M SDE", "DPMPP3MSDESampler", "exponential", True, {}),
    ("Euler a", "EulerAncestralSampler", "uniform", False, {}),
    ("Euler", "EulerSampler", "uniform", False, {}),
    ("LMS", "LMSSampler", "uniform", False, {}),
    ("Heun", "HeunSampler", "uniform", False, {}),
    ("DPM2", "DPM2Sampler", "karras", True, {}),
    ("DPM2 a", "DPM2AncestralSampler", "karras", True, {}),
    ("DPM fast", "DPMFastSampler", "uniform", False, {}),
    ("DPM adaptive", "DPMAdaptiveSampler", "uniform", False, {}),
    ("Restart", "RestartSampler", "karras", False, {}),
    ("DDIM", "A1111DDIMSampler", "uniform", False, {}),
    ("DDIM CFG++", "A1111DDIMCFGPPSampler", "uniform", False, {}),
    ("PLMS", "A1111PLMSSampler", "uniform", False, {}),
    ("UniPC", "A1111UniPCSampler", "uniform", False, {}),
    ("LCM", "A1111LCMSampler", "uniform", False, {}),
]

# ComfyUI's SAMPLER_NAMES (comfy/samplers.py: KSAMPLER_NAMES + ddim, uni_pc, uni_pc_bh2; exp_heun_2_x0(_sde) and
# cfgpp_ud10_ab from later releases).
COMFY_NAMES = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "exp_heun_2_x0",
    "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm",
    "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "cfgpp_ud10_ab", "ddim", "uni_pc", "uni_pc_bh2",
]
COMFY_DISCARDS = {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}  # DISCARD_PENULTIMATE_SIGMA_SAMPLERS


@pytest.mark.parametrize(("alias", "class_name"), ALIAS_TABLE.items())
def test_alias_resolves_to_its_class(alias: str, class_name: str) -> None:
    assert resolve_scheduler(alias).cls.__name__ == class_name


def test_aliases_cover_the_whole_family() -> None:
    assert {p.cls for p in ALIASES} == set(SCHEDULER_CLASSES)


def test_family_is_the_one_diffusers_lists_for_stable_diffusion() -> None:
    assert {c.__name__ for c in SCHEDULER_CLASSES} == {e.name for e in KarrasDiffusionSchedulers}


@pytest.mark.parametrize(("name", "class_name", "options"), PRESET_TABLE, ids=[p[0] for p in PRESET_TABLE])
def test_diffusers_prefix_builds_the_documented_class(name: str, class_name: str, options: dict) -> None:
    scheduler = resolve_scheduler(f"diffusers:{name}").build(BASE_CONFIGS["sd15"])
    assert type(scheduler).__name__ == class_name
    for key, value in options.items():
        assert scheduler.config[key] == value
    assert scheduler.config.beta_schedule == "scaled_linear"


@pytest.mark.parametrize(("label", "class_name", "schedule", "discard", "options"), A1111_TABLE,
                         ids=[row[0] for row in A1111_TABLE])
def test_a1111_label_builds_a1111s_sampler_at_its_automatic_schedule(label, class_name, schedule, discard, options):
    scheduler = resolve_scheduler(label).build(BASE_CONFIGS["sd15"])
    assert type(scheduler).__name__ == class_name
    assert (scheduler.config.schedule, scheduler.config.discard_penultimate_sigma) == (schedule, discard)
    assert (scheduler.config.timestep_type, scheduler.config.noise_scaling) == ("continuous", "sigma")
    for key, value in options.items():
        assert scheduler.config[key] == value


@pytest.mark.parametrize("name", [n for n in COMFY_NAMES if n != "cfgpp_ud10_ab"])
def test_comfy_name_builds_comfys_sampler_at_its_default_scheduler(name: str) -> None:
    scheduler = resolve_scheduler(f"comfy:{name}").build(BASE_CONFIGS["sd15"])
    assert scheduler.config.schedule == "simple"
    assert scheduler.config.discard_penultimate_sigma is (name in COMFY_DISCARDS)
    assert (scheduler.config.timestep_type, scheduler.config.noise_scaling) == ("discrete", "marginal")


def test_comfy_names_are_all_known() -> None:
    assert [p.name for p in COMFY_SAMPLERS] + ["cfgpp_ud10_ab"] == [n for n in COMFY_NAMES if n != "cfgpp_ud10_ab"] + [
        "cfgpp_ud10_ab"]


def test_a_comfy_name_we_do_not_provide_says_why() -> None:
    with pytest.raises(core.UnknownSchedulerError) as error:
        resolve_scheduler("cfgpp_ud10_ab")
    assert str(error.value).startswith("ComfyUI's cfgpp_ud10_ab is not available: ComfyUI PR #15951")


@pytest.mark.parametrize(("name", "tool", "class_name"), [
    ("ddim", "schedcmp", "DDIMScheduler"),
    ("DDIM", "a1111", "A1111DDIMSampler"),
    ("comfy:ddim", "comfy", "EulerSampler"),
    ("a1111:ddim", "a1111", "A1111DDIMSampler"),
    ("unipc", "schedcmp", "UniPCMultistepScheduler"),
    ("UniPC", "a1111", "A1111UniPCSampler"),
    ("uni_pc", "comfy", "ComfyUniPCSampler"),
    ("euler", "schedcmp", "EulerDiscreteScheduler"),
    ("Euler", "a1111", "EulerSampler"),
    ("dpmpp_2m", "comfy", "DPMPP2MSampler"),
    ("dpm++ 2m", "a1111", "DPMPP2MSampler"),
    ("DPMSolverMultistepScheduler", "diffusers", "DPMSolverMultistepScheduler"),
    ("diffusers:dpm++ 2m karras", "diffusers", "DPMSolverMultistepScheduler"),
])
def test_exact_spelling_then_prefix_pick_the_tool(name: str, tool: str, class_name: str) -> None:
    preset = resolve_scheduler(name)
    assert (preset.tool, preset.cls.__name__) == (tool, class_name)


@pytest.mark.parametrize(("label", "sampler", "schedule"), [
    ("DPM++ 2M Karras", "DPMPP2MSampler", "karras"),
    ("DPM++ SDE Karras", "DPMPPSDESampler", "karras"),
    ("DPM++ 2M SDE Exponential", "DPMPP2MSDESampler", "exponential"),
    ("DPM++ 2M SDE Heun Karras", "DPMPP2MSDESampler", "karras"),
    ("DPM2 a Karras", "DPM2AncestralSampler", "karras"),
    ("LMS Karras", "LMSSampler", "karras"),
])
def test_pre_1_9_a1111_labels_mean_the_sampler_with_that_schedule(label: str, sampler: str, schedule: str) -> None:
    scheduler = resolve_scheduler(label).build(BASE_CONFIGS["sd15"])
    assert (type(scheduler).__name__, scheduler.config.schedule) == (sampler, schedule)


@pytest.mark.parametrize("spelling", ["DPM++ 2M Karras", "dpm++ 2m karras", "dpm++_2m_karras", " DPM++-2M-Karras ", "dpm++2mkarras"])
def test_lookup_ignores_case_and_separators(spelling: str) -> None:
    assert resolve_scheduler(spelling).name == "DPM++ 2M Karras"


@pytest.mark.parametrize("cls", SCHEDULER_CLASSES, ids=lambda c: c.__name__)
def test_class_names_resolve(cls: type) -> None:
    assert resolve_scheduler(cls.__name__).cls is cls


def test_build_options_override_preset_options() -> None:
    scheduler = resolve_scheduler("diffusers:DPM++ 2M Karras").build(BASE_CONFIGS["sd15"], use_karras_sigmas=False)
    assert scheduler.config.use_karras_sigmas is False


def test_unknown_name_lists_the_closest_names() -> None:
    with pytest.raises(core.UnknownSchedulerError) as error:
        resolve_scheduler("eulr")
    assert str(error.value) == "unknown scheduler 'eulr'; did you mean 'euler', 'euler_a', 'edm_euler'?"


def test_unknown_name_without_neighbours_points_to_the_list() -> None:
    with pytest.raises(core.UnknownSchedulerError) as error:
        resolve_scheduler("zzzzzzzz")
    assert str(error.value) == "unknown scheduler 'zzzzzzzz'; see `schedcmp list-compatible`"


def test_every_known_name_resolves_to_itself() -> None:
    for name in known_scheduler_names():
        assert resolve_scheduler(name).name == name.partition("diffusers:")[2] or resolve_scheduler(name).name == name


@pytest.mark.parametrize(("name", "tool", "schedule_id"), [
    ("Karras", "a1111", "karras"),
    ("karras", "comfy", "karras"),
    ("SGM Uniform", "a1111", "sgm_uniform"),
    ("sgm_uniform", "comfy", "sgm_uniform"),
    ("Align Your Steps", "a1111", "align_your_steps"),
    ("align-your-steps", "a1111", "align_your_steps"),
    ("DDIM", "a1111", "ddim_uniform"),
    ("ddim_uniform", "comfy", "ddim_uniform"),
    ("Beta", "a1111", "beta"),
    ("beta", "comfy", "comfy_beta"),
    ("comfy:beta", "a1111", "comfy_beta"),
    ("KL Optimal", "a1111", "kl_optimal"),
    ("kl_optimal", "comfy", "comfy_kl_optimal"),
    ("a1111:kl_optimal", "comfy", "kl_optimal"),
    ("Normal", "comfy", "normal"),
    ("linear_quadratic", "comfy", "linear_quadratic"),
    ("Automatic", "a1111", "automatic"),
])
def test_schedule_names_mean_their_tools_schedule(name: str, tool: str, schedule_id: str) -> None:
    assert resolve_schedule(name, tool) == schedule_id


def test_unknown_schedule_lists_the_schedules() -> None:
    with pytest.raises(core.UnknownSchedulerError) as error:
        resolve_schedule("karas")
    assert str(error.value).startswith("unknown schedule 'karas'; did you mean 'Karras'")


@pytest.mark.parametrize(("name", "schedule", "overrides"), [
    ("dpm", "Karras", {"use_karras_sigmas": True}),
    ("euler", "exponential", {"use_exponential_sigmas": True}),
    ("unipc", "simple", {"timestep_spacing": "trailing"}),
    ("ddim", "DDIM", {"timestep_spacing": "leading"}),
    ("dpm", "Automatic", {}),
    ("DPM++ 2M", "Simple", {"schedule": "simple"}),
    ("comfy:euler", "beta", {"schedule": "comfy_beta"}),
    ("DDIM", "Karras", {}),  # A1111's DDIM ignores the schedule type, as in A1111
])
def test_schedule_overrides_per_sampler(name: str, schedule: str, overrides: dict) -> None:
    assert schedule_overrides(resolve_scheduler(name), schedule) == overrides


def test_a_diffusers_class_refuses_a_schedule_it_cannot_reproduce() -> None:
    with pytest.raises(core.ConfigError) as error:
        schedule_overrides(resolve_scheduler("dpm"), "KL Optimal")
    assert str(error.value) == ("dpm (DPMSolverMultistepScheduler, diffusers semantics) has no KL Optimal schedule; "
                                "use an A1111 or ComfyUI sampler name for it (e.g. a1111:Euler, comfy:dpmpp_2m)")


def test_make_scheduler_answers_which_scheduler_is_dpm_2m_karras() -> None:
    scheduler = core.make_scheduler("DPM++ 2M", schedule="Karras", config=BASE_CONFIGS["sd15"])
    scheduler.set_timesteps(20)
    assert type(scheduler).__name__ == "DPMPP2MSampler"
    assert scheduler.config.schedule == "karras"
    assert float(scheduler.sigmas[0]) == pytest.approx(14.6146, abs=1e-4)


@pytest.mark.parametrize("cls", SCHEDULER_CLASSES, ids=lambda c: c.__name__)
def test_compatibles_name_the_same_classes_as_diffusers(cls: type) -> None:
    ours = {c.__name__ for c in cls().compatibles}
    theirs = {c.__name__ for c in getattr(diffusers, cls.__name__)().compatibles}
    assert ours == theirs


@pytest.mark.parametrize("cls", SCHEDULER_CLASSES, ids=lambda c: c.__name__)
def test_every_class_is_importable_from_the_core(cls: type) -> None:
    assert getattr(core, cls.__name__) is cls


def test_a_saved_sampler_config_resolves_by_its_class_name(tmp_path) -> None:
    scheduler = core.make_scheduler("comfy:dpmpp_2m_sde_heun", config=BASE_CONFIGS["sd15"])
    scheduler.save_config(tmp_path)
    config = type(scheduler).load_config(tmp_path)
    rebuilt = resolve_scheduler(config["_class_name"]).cls.from_config(config)
    assert type(rebuilt).__name__ == "DPMPP2MSDESampler"
    assert (rebuilt.config.solver_type, rebuilt.config.timestep_type) == ("heun", "discrete")


@pytest.mark.parametrize("spelling", ["cfgpp_ud10_ab", "CFGPP-UD10-AB", "comfy:cfgpp_ud10_ab"])
def test_the_comfy_sampler_we_lack_says_why_however_spelled(spelling: str) -> None:
    with pytest.raises(core.UnknownSchedulerError) as error:
        resolve_scheduler(spelling)
    assert str(error.value).startswith("ComfyUI's cfgpp_ud10_ab is not available: ComfyUI PR #15951")
