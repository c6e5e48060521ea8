"""Plans from YAML files and flags: what they build, and the exact message for every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from schedcmp.errors import PlanError
from schedcmp.plan import build_plan, parse_size


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return path


def test_runs_list_keeps_order_labels_and_options(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prompt: a red circle\n"
        "runs:\n"
        "  - {scheduler: ddim, steps: 50, label: DDIM}\n"
        "  - {scheduler: DPM++ 2M Karras, steps: 20}\n"
        "  - {scheduler: euler, steps: 30, options: {use_karras_sigmas: true, s_churn: 0.5}}\n",
    )
    plan = build_plan(path)
    assert plan.layout == "list"
    assert [(r.label, r.preset.cls.__name__, r.steps) for r in plan.runs] == [
        ("DDIM", "DDIMScheduler", 50),
        ("DPM++ 2M Karras", "DPMPP2MSampler", 20),
        ("euler", "EulerDiscreteScheduler", 30),
    ]
    assert dict(plan.runs[2].config_options) == {"use_karras_sigmas": True}
    assert dict(plan.runs[2].step_options) == {"s_churn": 0.5}


def test_flags_make_a_cross_product_of_schedulers_and_steps() -> None:
    plan = build_plan(None, {"prompt": "x", "schedulers": "ddim,euler", "steps": "20,30"})
    assert plan.layout == "matrix"
    assert [(r.scheduler, r.steps) for r in plan.runs] == [("ddim", 20), ("ddim", 30), ("euler", 20), ("euler", 30)]


def test_defaults() -> None:
    plan = build_plan(None, {"prompt": "x", "schedulers": "ddim"})
    assert (plan.model, plan.seed, plan.guidance, plan.mode, plan.size) == ("builtin:shapes", 8, None, "sequential", None)
    assert [r.steps for r in plan.runs] == [20]


@pytest.mark.parametrize(("given", "model_default", "expected"), [(None, 7.5, 7.5), (None, 5.0, 5.0), (3.0, 5.0, 3.0)])
def test_guidance_left_out_is_the_model_default(given, model_default, expected) -> None:
    plan = build_plan(None, {"prompt": "x", "schedulers": "ddim", "guidance": given})

    class Model:
        default_guidance = model_default

    assert plan.with_model_defaults(Model()).guidance == expected


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "prompt: from file\nseed: 1\nschedulers: [ddim]\nsteps: [10]\n")
    plan = build_plan(path, {"prompt": "from flag", "seed": 5, "steps": "7"})
    assert (plan.prompt, plan.seed, [r.steps for r in plan.runs]) == ("from flag", 5, [7])


def test_steps_flag_applies_to_every_listed_run(tmp_path: Path) -> None:
    path = write(tmp_path, "prompt: x\nruns:\n  - {scheduler: ddim, steps: 50, label: D}\n  - {scheduler: euler}\n")
    plan = build_plan(path, {"steps": "5,10"})
    assert [(r.label, r.steps) for r in plan.runs] == [("D 5", 5), ("D 10", 10), ("euler 5", 5), ("euler 10", 10)]


def test_schedulers_flag_replaces_the_files_runs(tmp_path: Path) -> None:
    path = write(tmp_path, "prompt: x\nruns:\n  - {scheduler: ddim, steps: 50}\n")
    plan = build_plan(path, {"schedulers": "heun"})
    assert [(r.scheduler, r.steps) for r in plan.runs] == [("heun", 20)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prompt: x\n  bad: [\n", "{path}:2: invalid YAML: mapping values are not allowed here"),
        ("- just\n- a list\n", "{path}:1: a plan must be a YAML mapping of keys (model, prompt, negative_prompt, prompts, negative_prompts, prompt_sr, seed, "
         "seeds, size, guidance, device, dtype, mode, max_batch, generator_device, clip_skip, prediction_type, vae, schedulers, schedules, option_axes, steps, runs, reference, target_error)"),
        ("prompt: x\nsed: 3\nschedulers: [ddim]\n", "{path}:2: unknown plan key 'sed'; did you mean 'seed'? allowed: "
         "model, prompt, negative_prompt, prompts, negative_prompts, prompt_sr, seed, seeds, size, guidance, device, dtype, mode, max_batch, generator_device, clip_skip, prediction_type, vae, "
         "schedulers, schedules, option_axes, steps, runs, reference, target_error"),
        ("prompt: x\nruns:\n  - {scheduler: eulr, steps: 5}\n",
         "{path}:3: unknown scheduler 'eulr'; did you mean 'euler', 'euler_a', 'edm_euler'?"),
        ("prompt: x\nruns:\n  - {scheduler: ddim, steps: 0}\n", "{path}:3: steps must be at least 1, got 0"),
        ("prompt: x\nruns:\n  - {scheduler: ddim, steps: many}\n", "{path}:3: steps must be a whole number, got 'many'"),
        ("prompt: x\nruns:\n  - {scheduler: ddim}\n",
         "{path}:3: this run has no steps: give steps: N in the run or top-level steps:"),
        ("prompt: x\nruns:\n  - {scheduler: ddim, step: 5}\n",
         "{path}:3: unknown run key 'step'; did you mean 'steps'? allowed: scheduler, schedule, steps, sigmas, timesteps, label, options"),
        ("prompt: x\nsize: 30x30\nschedulers: [ddim]\n",
         "{path}:2: size sides must be multiples of 8 from 8 to 4096, got 30x30"),
        ("prompt: x\nseed: -1\nschedulers: [ddim]\n", "{path}:2: seed must be a whole number from 0 to 9223372036854775807, got -1"),
        ("prompt: x\nguidance: lots\nschedulers: [ddim]\n", "{path}:2: guidance: cannot read 'lots'; write numbers and ranges such as 8, 1-5, 1-10 (+2) or 1-10 [5]"),
        ("prompt: x\nmode: parallel\nschedulers: [ddim]\n",
         "{path}:2: mode must be one of sequential, batched; got 'parallel'"),
        ("prompt: x\nschedulers: [ddim]\nsteps: [10, ten]\n", "{path}:3: steps must be whole numbers, got 'ten'"),
        ("model: my/sd-folder\nschedulers: [ddim]\n",
         "no prompt: pass --prompt TEXT or set prompt: in the plan file (only builtin:shapes has a default prompt)"),
        ("prompt: x\n", "no schedulers: pass --schedulers a,b,c or list runs: / schedulers: in the plan file"),
    ],
    ids=["yaml-syntax", "not-a-mapping", "unknown-key", "unknown-scheduler", "zero-steps", "word-steps", "no-steps",
         "unknown-run-key", "bad-size", "negative-seed", "bad-guidance", "bad-mode", "bad-steps-list", "no-prompt",
         "no-schedulers"],
)
def test_bad_plan_file_messages(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PlanError) as error:
        build_plan(path)
    assert str(error.value) == message.format(path=path)


def test_unknown_option_names_the_class_and_the_closest_option(tmp_path: Path) -> None:
    path = write(tmp_path, "prompt: x\nruns:\n  - scheduler: euler\n    steps: 5\n    options:\n      karras_sigmas: true\n")
    with pytest.raises(PlanError) as error:
        build_plan(path)
    assert str(error.value).startswith(
        f"{path}:6: EulerDiscreteScheduler has no option 'karras_sigmas'; did you mean 'use_karras_sigmas'? options: "
    )


def test_impossible_option_combination_is_reported_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prompt: x\nruns:\n  - scheduler: euler\n    steps: 5\n    options: {use_karras_sigmas: true, use_beta_sigmas: true}\n",
    )
    with pytest.raises(PlanError, match=rf"^{path}:5: "):
        build_plan(path)


def test_flag_errors_carry_no_file_position(tmp_path: Path) -> None:
    path = write(tmp_path, "prompt: x\nschedulers: [ddim]\n")
    with pytest.raises(PlanError) as error:
        build_plan(path, {"schedulers": "nope_nope"})
    assert str(error.value) == "unknown scheduler 'nope_nope'; see `schedcmp list-compatible`"


def test_missing_plan_file() -> None:
    with pytest.raises(PlanError, match=r"^plan file missing\.yaml does not exist$"):
        build_plan(Path("missing.yaml"))


@pytest.mark.parametrize(("text", "size"), [("512x768", (512, 768)), ("64X64", (64, 64)), (64, (64, 64))])
def test_size_forms(text, size) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"generator_device": "tpu"}, "generator_device must be one of cpu, cuda, mps; got 'tpu'"),
        ({"clip_skip": -1}, "clip_skip must be a whole number >= 0, got -1"),
    ],
)
def test_execution_option_messages(overrides: dict, message: str) -> None:
    with pytest.raises(PlanError) as error:
        build_plan(None, {"prompt": "x", "schedulers": "ddim", **overrides})
    assert str(error.value) == message


def test_the_builtin_model_has_a_default_prompt() -> None:
    assert build_plan(None, {"schedulers": "ddim"}).prompt == "a red circle on a blue background"


def _reference(value, **extra):
    return build_plan(None, {"prompt": "x", "schedulers": "ddim", "reference": value, **extra}).reference


@pytest.mark.parametrize(
    ("value", "kind", "scheduler", "steps", "label"),
    [
        ("exact", "exact", None, None, "exact float64 ODE solution"),
        ("dpm:200", "run", "DPMSolverMultistepScheduler", 200, "dpm 200 steps"),
        ("ddim", "run", "DDIMScheduler", 200, "ddim 200 steps"),  # steps default to many
        ("DPM++ 2M Karras:50", "run", "DPMPP2MSampler", 50, "DPM++ 2M Karras 50 steps"),
        ({"scheduler": "unipc", "steps": 80, "label": "fine UniPC"}, "run", "UniPCMultistepScheduler", 80,
         "fine UniPC 80 steps"),
    ],
)
def test_reference_forms(value, kind, scheduler, steps, label) -> None:
    reference = _reference(value)
    assert reference.kind == kind
    assert reference.label == label
    if scheduler:
        assert (reference.run.preset.cls.__name__, reference.run.steps) == (scheduler, steps)


def test_reference_defaults_to_exact_on_the_builtin_model_and_to_none_elsewhere() -> None:
    assert build_plan(None, {"prompt": "x", "schedulers": "ddim"}).reference.kind == "exact"
    assert build_plan(None, {"prompt": "x", "schedulers": "ddim", "model": "some/folder"}).reference is None


@pytest.mark.parametrize("value", ["auto", True])
def test_reference_auto_is_exact_on_the_builtin_model_and_many_step_dpm_solver_elsewhere(value) -> None:
    assert _reference(value).kind == "exact"
    run = _reference(value, model="some/folder").run
    assert (run.preset.cls.__name__, run.steps, dict(run.preset.options)) == ("DPMSolverMultistepScheduler", 200, {})


def test_reference_none_turns_accuracy_off() -> None:
    assert _reference("none") is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("dpn:20", "reference: unknown scheduler 'dpn'; did you mean 'dpm', 'pndm', 'DPM2'?"),
        ("dpm:0", "reference: steps must be at least 1, got 0"),
        ({"scheduler": "dpm", "stepz": 3},
         "reference: unknown reference key 'stepz'; did you mean 'steps'? allowed: scheduler, schedule, steps, label, options"),
        (12, "reference: reference must be 'auto', 'exact', 'none', NAME[:STEPS] (e.g. dpm:200) or a mapping, got 12"),
    ],
)
def test_bad_reference_messages(value, message: str) -> None:
    with pytest.raises(PlanError) as err:
        _reference(value)
    assert str(err.value) == message


def test_bad_reference_in_a_file_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "prompt: x\nschedulers: ddim\nreference:\n  scheduler: ddim\n  steps: zero\n")
    with pytest.raises(PlanError) as err:
        build_plan(path)
    assert str(err.value) == f"{path}:3: reference: steps must be a whole number, got 'zero'"


@pytest.mark.parametrize("value", [0, -1, "small", True])
def test_target_error_must_be_positive(value) -> None:
    with pytest.raises(PlanError) as err:
        build_plan(None, {"prompt": "x", "schedulers": "ddim", "target_error": value})
    assert str(err.value) == f"target_error must be a number > 0 (a latent RMSE), got {value!r}"


def test_schedules_are_a_third_axis_of_the_cross_product() -> None:
    plan = build_plan(None, {"schedulers": "DPM++ 2M,dpm", "schedules": "karras,simple", "steps": "5,10"})
    assert [(r.label, r.steps, r.config_options.get("schedule"), r.config_options.get("use_karras_sigmas"),
             r.config_options.get("timestep_spacing")) for r in plan.runs] == [
        ("DPM++ 2M karras", 5, "karras", None, None),
        ("DPM++ 2M karras", 10, "karras", None, None),
        ("DPM++ 2M simple", 5, "simple", None, None),
        ("DPM++ 2M simple", 10, "simple", None, None),
        ("dpm karras", 5, None, True, None),
        ("dpm karras", 10, None, True, None),
        ("dpm simple", 5, None, None, "trailing"),
        ("dpm simple", 10, None, None, "trailing"),
    ]


def test_a_run_names_its_schedule_and_the_plans_schedules_fill_the_others(tmp_path: Path) -> None:
    path = write(tmp_path, "schedules: [Karras, Exponential]\nsteps: 10\nruns:\n"
                           "  - {scheduler: comfy:dpmpp_2m, schedule: beta}\n"
                           "  - {scheduler: DPM++ 2M SDE}\n")
    plan = build_plan(path)
    assert [(r.label, r.config_options["schedule"]) for r in plan.runs] == [
        ("comfy:dpmpp_2m beta", "comfy_beta"),
        ("DPM++ 2M SDE Karras", "karras"),
        ("DPM++ 2M SDE Exponential", "exponential"),
    ]


def test_custom_sigmas_make_the_schedule_and_its_step_count(tmp_path: Path) -> None:
    path = write(tmp_path, "runs:\n  - {scheduler: Euler, sigmas: [14.6, 6.3, 2.0, 0.5, 0.0]}\n"
                           "  - {scheduler: comfy:dpmpp_2m, timesteps: [999, 700, 400, 100]}\n")
    plan = build_plan(path)
    assert [(r.steps, r.sigmas, r.timesteps) for r in plan.runs] == [
        (4, (14.6, 6.3, 2.0, 0.5, 0.0), None), (4, None, (999.0, 700.0, 400.0, 100.0))]
    assert plan.to_json()["runs"][0]["sigmas"] == [14.6, 6.3, 2.0, 0.5, 0.0]


@pytest.mark.parametrize(("run", "message"), [
    ("{scheduler: Euler, schedule: karas, steps: 5}",
     "unknown schedule 'karas'; did you mean 'Karras'? A1111 schedule types: Automatic, Uniform, Karras, "
     "Exponential, Polyexponential, SGM Uniform, KL Optimal, Align Your Steps, Simple, Normal, DDIM, Beta; ComfyUI "
     "schedulers: simple, sgm_uniform, karras, exponential, ddim_uniform, beta, normal, linear_quadratic, "
     "kl_optimal"),
    ("{scheduler: dpm, schedule: KL Optimal, steps: 5}",
     "dpm (DPMSolverMultistepScheduler, diffusers semantics) has no KL Optimal schedule; use an A1111 or ComfyUI "
     "sampler name for it (e.g. a1111:Euler, comfy:dpmpp_2m)"),
    ("{scheduler: ddim, sigmas: [10.0, 1.0, 0.0]}", "ddim (DDIMScheduler) takes no custom sigmas"),
    ("{scheduler: Euler, sigmas: [10.0]}", "sigmas must be a list of at least two numbers, largest first, got [10.0]"),
    ("{scheduler: Euler, sigmas: [10.0, 0.0], timesteps: [999]}", "give sigmas or timesteps, not both"),
])
def test_bad_schedules_are_reported_with_their_line(tmp_path: Path, run: str, message: str) -> None:
    path = write(tmp_path, f"steps: 5\nruns:\n  - {run}\n")
    with pytest.raises(PlanError) as error:
        build_plan(path)
    assert str(error.value) == f"{path}:3: {message}"
