"""Careless and hostile input through the real command line (a process per command, no mocks): every row ends in the
exit code it names and exactly one line on stderr, and leaves no output folder behind."""

from __future__ import annotations

from pathlib import Path

import pytest

QUICK = ("--schedulers", "ddim", "--steps", "2")


def _file(path: str, text: str | bytes = "") -> callable:
    def make(root: Path) -> None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text) if isinstance(text, bytes) else target.write_text(text, encoding="utf-8")
    return make


def _folder(path: str) -> callable:
    return lambda root: (root / path).mkdir(parents=True)


def _nothing(root: Path) -> None:
    return None


# (id, setup, arguments, exit code, the one line on stderr). "{root}" is the test's working folder.
CASES = [
    ("unknown flag", _nothing, ["run", "--stpes", "3"], 2,
     "error: No such option: --stpes (Possible options: --dtype, --seeds, --steps) (see 'schedcmp run --help')"),
    ("flag without its value", _nothing, ["run", "--steps"], 2,
     "error: Option '--steps' requires an argument (see 'schedcmp --help')"),
    ("device not offered", _nothing, ["run", "--device", "gpu"], 2,
     "error: Invalid value for '--device': 'gpu' is not one of 'auto', 'cpu', 'cuda', 'mps' "
     "(see 'schedcmp run --help')"),
    ("unknown command", _nothing, ["sample"], 2, "error: No such command 'sample' (see 'schedcmp --help')"),
    ("negative tolerance", _nothing, ["run", "--tolerance", "-1"], 1,
     "error: --tolerance must be a PSNR in dB, 0 or more; got -1"),
    ("nan tolerance", _nothing, ["run", "--tolerance", "nan"], 1,
     "error: --tolerance must be a PSNR in dB, 0 or more; got nan"),
    ("zero steps", _nothing, ["run", "--schedulers", "ddim", "--steps", "0"], 1,
     "error: steps must be at least 1, got 0"),
    ("steps that are not numbers", _nothing, ["run", "--schedulers", "ddim", "--steps", "ten"], 1,
     "error: steps must be whole numbers, got 'ten'"),
    ("too many steps", _nothing, ["run", "--schedulers", "ddim", "--steps", "2000"], 1,
     "error: run 1 (ddim, 2000 steps): DDIMScheduler: num_inference_steps must be between 1 and 1000 "
     "(num_train_timesteps), got 2000"),
    ("unknown scheduler", _nothing, ["run", "--schedulers", "ddim,eulr"], 1,
     "error: unknown scheduler 'eulr'; did you mean 'euler', 'euler_a', 'edm_euler'?"),
    ("no scheduler at all", _nothing, ["run", "--schedulers", ",", "--steps", "2"], 1,
     "error: schedulers must name at least one scheduler"),
    ("size not a multiple of 8", _nothing, ["run", *QUICK, "--size", "13x13"], 1,
     "error: size sides must be multiples of 8 from 8 to 4096, got 13x13"),
    ("size the built-in model lacks", _nothing, ["run", *QUICK, "--size", "128x128"], 1,
     "error: builtin:shapes draws its data set at 64x64; got size 128x128 (use --size 64x64 or leave --size out)"),
    ("negative guidance", _nothing, ["run", *QUICK, "--guidance", "-1"], 1,
     "error: guidance must be a number from 0 to 100, got -1"),
    ("negative seed", _nothing, ["run", *QUICK, "--seed", "-1"], 1,
     "error: seed must be a whole number from 0 to 9223372036854775807, got -1"),
    ("zero lanes", _nothing, ["run", *QUICK, "--batched", "--max-batch", "0"], 1,
     "error: max_batch must be 'auto' or a whole number >= 1, got 0"),
    ("zero target error", _nothing, ["run", *QUICK, "--target-error", "0"], 1,
     "error: target_error must be a number > 0 (a latent RMSE), got 0.0"),
    ("stochastic reference", _nothing, ["run", *QUICK, "--reference", "euler_a"], 1,
     "error: reference: euler_a 200 steps is stochastic (it draws fresh noise every step), so it is no converged answer; "
     "choose a deterministic scheduler, e.g. --reference dpm:200"),
    ("clip skip on the built-in model", _nothing, ["run", *QUICK, "--clip-skip", "2"], 1,
     "error: clip_skip applies to models with a CLIP text encoder; builtin:shapes has none"),
    ("CUDA graphs without CUDA", _nothing, ["run", *QUICK, "--cuda-graphs", "--device", "cpu"], 1,
     "error: --cuda-graphs needs a CUDA device; this run is on cpu (use --compile instead)"),
    ("a model that is nowhere", _nothing, ["run", *QUICK, "--prompt", "x", "--model", "no-such-model"], 1,
     "error: model 'no-such-model' is neither 'builtin:shapes', an existing folder, nor a hub id (owner/name)"),
    ("a real model without a prompt", _folder("sd"), ["run", *QUICK, "--model", "sd"], 1,
     "error: no prompt: pass --prompt TEXT or set prompt: in the plan file (only builtin:shapes has a default "
     "prompt)"),
    ("--out is a file", _file("taken"), ["run", *QUICK, "--out", "taken"], 1,
     "error: --out taken is a file; choose a folder"),
    ("--out below a file", _file("taken"), ["run", *QUICK, "--out", "taken/run"], 1,
     "error: --out taken/run lies below taken, which is a file; choose a folder"),
    ("--expect names no run", _folder("empty"), ["run", *QUICK, "--expect", "empty"], 1,
     "error: --expect empty: no results.json there; point --expect at the --out folder of a previous schedcmp run"),
    ("--expect is the output folder", _folder("same"), ["run", *QUICK, "--expect", "same", "--out", "same"], 1,
     "error: --expect same is the output folder of this run; point it at a previous run's folder (copy it aside "
     "first)"),
    ("a plan file that is missing", _nothing, ["run", "nothing.yaml"], 1,
     "error: plan file nothing.yaml does not exist"),
    ("a plan that is not YAML", _file("plan.yaml", "prompt: x\nschedulers: [ddim\n"), ["run", "plan.yaml"], 1,
     "error: plan.yaml:3: invalid YAML: while parsing a flow sequence expected ',' or ']', but got '<stream end>'"),
    ("a plan that is not UTF-8", _file("plan.yaml", b"prompt: \xff\xfe\n"), ["run", "plan.yaml"], 1,
     "error: plan.yaml: not a UTF-8 text file; expected a YAML plan"),
    ("a plan with an unknown key", _file("plan.yaml", "prompt: x\nschedulrs: [ddim]\n"), ["run", "plan.yaml"], 1,
     "error: plan.yaml:2: unknown plan key 'schedulrs'; did you mean 'schedulers'? allowed: model, prompt, "
     "negative_prompt, prompts, negative_prompts, prompt_sr, seed, seeds, size, guidance, device, dtype, mode, max_batch, generator_device, clip_skip, prediction_type, vae, "
     "schedulers, schedules, option_axes, steps, runs, reference, target_error"),
    ("a scheduler option of the wrong type",
     _file("plan.yaml", "runs:\n  - {scheduler: ddim, steps: 4, options: {num_train_timesteps: 'a lot'}}\n"),
     ["run", "plan.yaml"], 1,
     "error: plan.yaml:2: DDIMScheduler: num_train_timesteps must be a whole number >= 1; got 'a lot'"),
    ("a YAML alias bomb", _file("plan.yaml", 'prompt: x\nx0: &a0 [1,1,1,1,1,1,1,1,1,1]\nx1: &a1 [*a0,*a0,*a0,*a0,*a0,*a0,*a0,*a0,*a0,*a0]\nx2: &a2 [*a1,*a1,*a1,*a1,*a1,*a1,*a1,*a1,*a1,*a1]\nx3: &a3 [*a2,*a2,*a2,*a2,*a2,*a2,*a2,*a2,*a2,*a2]\nx4: &a4 [*a3,*a3,*a3,*a3,*a3,*a3,*a3,*a3,*a3,*a3]\nx5: &a5 [*a4,*a4,*a4,*a4,*a4,*a4,*a4,*a4,*a4,*a4]\nx6: &a6 [*a5,*a5,*a5,*a5,*a5,*a5,*a5,*a5,*a5,*a5]\nx7: &a7 [*a6,*a6,*a6,*a6,*a6,*a6,*a6,*a6,*a6,*a6]\nx8: &a8 [*a7,*a7,*a7,*a7,*a7,*a7,*a7,*a7,*a7,*a7]\nsteps: *a8\n'), ["run", "plan.yaml"], 1,
     "error: plan.yaml:7: the plan expands to more than 1048576 values (YAML aliases repeat too much); a plan is a "
     "few dozen keys"),
    ("5,000 nested lists", _file("plan.yaml", "[" * 5000 + "]" * 5000 + "\n"), ["run", "plan.yaml"], 1,
     "error: plan.yaml:1: the plan nests lists and mappings more than 50 levels deep; a plan needs five at "
     "most"),
    ("a folder given as the plan", _folder("configs"), ["run", "configs"], 1,
     "error: plan file configs/ is a directory; pass a YAML file (a plan file, not the folder it is in)"),
    ("list-compatible of a missing folder", _nothing, ["list-compatible", "--model", "./gone"], 1,
     "error: model './gone' is neither 'builtin:shapes', an existing folder, nor a hub id (owner/name)"),
    ("show-config as an unknown scheduler", _nothing, ["show-config", "--as", "eulr"], 1,
     "error: unknown scheduler 'eulr'; did you mean 'euler', 'euler_a', 'edm_euler'?"),
]


@pytest.mark.parametrize(("setup", "arguments", "code", "line"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_careless_input_ends_in_one_line_and_its_exit_code(schedcmp, tmp_path: Path, setup, arguments: list[str],
                                                           code: int, line: str) -> None:
    setup(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = schedcmp(*arguments, cwd=tmp_path)
    assert (result.returncode, result.stderr.splitlines()) == (code, [line]), result.stderr
    assert "Traceback" not in result.stdout
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_debug_shows_the_traceback_of_a_user_error(schedcmp, tmp_path: Path) -> None:
    result = schedcmp("run", "--schedulers", "eulr", "--debug", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert result.stderr.splitlines()[-1] == "error: unknown scheduler 'eulr'; did you mean 'euler', 'euler_a', " \
                                             "'edm_euler'?"
