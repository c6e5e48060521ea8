"""The command line end to end on builtin:shapes: exit codes, files, tables and messages word for word."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from schedcmp import __version__
from schedcmp.cli import app
from schedcmp.core.builtin import ShapesPipeline

PROMPT = "a red circle on a blue background"


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def run_quick(out: Path, *extra: str, schedulers: str = "ddim,euler", steps: str = "8"):
    return invoke("run", "--prompt", PROMPT, "--schedulers", schedulers, "--steps", steps, "--out", str(out), "--device", "cpu",
                  *extra)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"schedcmp {__version__}\n"


def test_run_writes_grid_images_table_csv_and_record(tmp_path: Path) -> None:
    result = run_quick(tmp_path / "out")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "images").iterdir()) == ["001-ddim-8.png", "002-euler-8.png"]
    assert (out / "grid.png").is_file()
    rows = list(csv.DictReader((out / "timings.csv").open()))
    assert [(r["label"], r["class"], r["steps"], r["model_calls"], r["status"]) for r in rows] == [
        ("ddim", "DDIMScheduler", "8", "8", "ok"),
        ("euler", "EulerDiscreteScheduler", "8", "8", "ok"),
    ]
    record = json.loads((out / "results.json").read_text())
    assert record["plan"]["prompt"] == PROMPT
    assert record["environment"]["device"] == "cpu"
    assert [r["scheduler_config"]["_class_name"] for r in record["runs"]] == ["DDIMScheduler", "EulerDiscreteScheduler"]
    assert "DDIMScheduler" in result.stdout and "EulerDiscreteScheduler" in result.stdout


def test_image_carries_its_parameters(tmp_path: Path) -> None:
    run_quick(tmp_path / "out", schedulers="euler")
    text = Image.open(tmp_path / "out" / "images" / "001-euler-8.png").text
    assert text["parameters"].startswith(f"{PROMPT}\nSteps: 8, Sampler: euler, Scheduler class: EulerDiscreteScheduler")
    assert json.loads(text["schedcmp"])["model_calls"] == 8


def test_json_flag_prints_the_record(tmp_path: Path) -> None:
    result = run_quick(tmp_path / "out", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["runs"][0]["label"] == "ddim"


def test_images_match_the_prompt(tmp_path: Path) -> None:
    """The built-in model draws what the prompt says: a red shape in the middle, blue in the corners."""
    result = run_quick(tmp_path / "out", schedulers="dpm", steps="20")
    assert result.exit_code == 0, result.output
    image = pixels(tmp_path / "out" / "images" / "001-dpm-20.png")
    corner = image[:4, :4].reshape(-1, 3).mean(0)
    assert corner[2] > 150 and corner[0] < 80, f"corner is not blue: {corner}"
    red = (image[..., 0] > 150) & (image[..., 1] < 80) & (image[..., 2] < 80)
    assert red.sum() > 50, "no red shape"


def test_same_seed_gives_identical_images(tmp_path: Path) -> None:
    run_quick(tmp_path / "a", schedulers="euler_a")
    run_quick(tmp_path / "b", schedulers="euler_a")
    assert np.array_equal(pixels(tmp_path / "a/images/001-euler-a-8.png"), pixels(tmp_path / "b/images/001-euler-a-8.png"))


def test_a_runs_image_does_not_depend_on_the_other_runs(tmp_path: Path) -> None:
    run_quick(tmp_path / "alone", schedulers="euler_a")
    run_quick(tmp_path / "crowd", schedulers="ddpm,dpm,euler_a")
    alone = pixels(tmp_path / "alone/images/001-euler-a-8.png")
    assert np.array_equal(alone, pixels(tmp_path / "crowd/images/003-euler-a-8.png"))


def test_batched_mode_gives_the_sequential_images(tmp_path: Path) -> None:
    names = "ddim,euler_a,heun,dpm,unipc"
    assert run_quick(tmp_path / "seq", schedulers=names, steps="6,9").exit_code == 0
    result = run_quick(tmp_path / "bat", "--batched", "--max-batch", "3", schedulers=names, steps="6,9")
    assert result.exit_code == 0, result.output
    for path in sorted((tmp_path / "seq/images").iterdir()):
        difference = np.abs(pixels(path) - pixels(tmp_path / "bat/images" / path.name)).max()
        assert difference <= 1, f"{path.name} differs by {difference}"
    seq = json.loads((tmp_path / "seq/results.json").read_text())
    bat = json.loads((tmp_path / "bat/results.json").read_text())
    assert [r["model_calls"] for r in seq["runs"]] == [r["model_calls"] for r in bat["runs"]]
    assert bat["mode"] == "batched"


def test_model_calls_count_second_order_evaluations(tmp_path: Path) -> None:
    run_quick(tmp_path / "out", schedulers="heun", steps="5")
    record = json.loads((tmp_path / "out/results.json").read_text())
    assert record["runs"][0]["model_calls"] == 9  # Heun: two calls per step but the last


def test_existing_results_are_not_overwritten(tmp_path: Path) -> None:
    assert run_quick(tmp_path / "out").exit_code == 0
    again = run_quick(tmp_path / "out")
    assert again.exit_code == 1
    assert again.stderr.strip() == (
        f"error: {tmp_path / 'out'} already holds results (grid.png, timings.csv, results.json, images, "
        "reference.png, error_vs_calls.png, report.html); pass "
        "--overwrite to replace them or choose another --out"
    )
    assert run_quick(tmp_path / "out", "--overwrite").exit_code == 0


def test_unknown_scheduler_is_one_line_with_suggestions(tmp_path: Path) -> None:
    result = run_quick(tmp_path / "out", schedulers="ddim,eulr")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: unknown scheduler 'eulr'; did you mean 'euler', 'euler_a', 'edm_euler'?"
    assert not (tmp_path / "out" / "results.json").exists()


def test_too_many_steps_names_the_run_and_the_limit(tmp_path: Path) -> None:
    result = run_quick(tmp_path / "out", schedulers="ddim", steps="2000")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: run 1 (ddim, 2000 steps): DDIMScheduler: num_inference_steps must be between 1 and 1000 "
        "(num_train_timesteps), got 2000"
    )


def test_bad_size_for_the_builtin_model(tmp_path: Path) -> None:
    result = run_quick(tmp_path / "out", "--size", "128x128")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: builtin:shapes draws its data set at 64x64; got size 128x128 (use --size 64x64 or leave --size out)"
    )


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("prompt: x\nschedulers: [ddim\n")
    result = invoke("run", str(plan), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {plan}:3: invalid YAML:")


def test_prompt_that_matches_nothing_warns_with_the_known_words(tmp_path: Path) -> None:
    result = invoke("run", "--prompt", "a purple dragon", "--schedulers", "euler", "--steps", "3",
                    "--out", str(tmp_path / "out"))
    assert result.exit_code == 0
    assert 'warning: no image in builtin:shapes matches "a purple dragon"; using the whole data set. Known words:' in (
        " ".join(result.stderr.split())
    )


def test_interrupted_run_keeps_what_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    original = ShapesPipeline.denoise

    def interrupt_on_the_twelfth_call(self, *args):
        calls["n"] += 1
        if calls["n"] == 12:  # warm-up + 8 calls of run 1 + 3 of run 2
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(ShapesPipeline, "denoise", interrupt_on_the_twelfth_call)
    result = run_quick(tmp_path / "out", schedulers="ddim,euler,dpm")
    assert result.exit_code == 130
    record = json.loads((tmp_path / "out/results.json").read_text())
    assert record["interrupted"] is True
    assert [r["status"] for r in record["runs"]] == ["ok", "not run", "not run"]
    assert (tmp_path / "out/grid.png").is_file()
    assert [p.name for p in (tmp_path / "out/images").iterdir()] == ["001-ddim-8.png"]


def test_a_failing_run_does_not_lose_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from schedcmp.core import EulerDiscreteScheduler

    def broken_step(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(EulerDiscreteScheduler, "step", broken_step)
    result = run_quick(tmp_path / "out", schedulers="ddim,euler,dpm")
    assert result.exit_code == 1
    assert result.stderr.strip().endswith("error: 1 of 3 runs failed: 2 (euler)")
    record = json.loads((tmp_path / "out/results.json").read_text())
    assert [r["status"] for r in record["runs"]] == ["ok", "failed", "ok"]
    assert record["runs"][1]["error"] == "RuntimeError: boom"
    assert len(list((tmp_path / "out/images").iterdir())) == 2


def test_grid_has_a_cell_of_at_least_256_pixels_per_run(tmp_path: Path) -> None:
    run_quick(tmp_path / "out", schedulers="ddim,euler,dpm", steps="4,8")
    grid = Image.open(tmp_path / "out/grid.png")
    assert grid.width >= 2 * 256 and grid.height >= 3 * 256


def test_list_compatible_shows_every_sampler_with_its_tool_and_calls_per_step() -> None:
    result = invoke("list-compatible")
    assert result.exit_code == 0
    lines = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 3}
    assert {"ddim", "euler_a", "heun", "dpm", "DPM++ 2M", "dpmpp_2m", "comfy:euler",
            "diffusers:DPM++ 2M Karras"} <= set(lines)
    assert " 1.95 " in lines["heun"]  # Heun: 2 x 20 - 1 = 39 calls for 20 steps
    assert [cell.strip() for cell in lines["DPM++ 2M"].split("│")[2:7]] == [
        "A1111", "DPMPP2MSampler", "1", "no", "Karras"]
    assert [cell.strip() for cell in lines["DPM++ SDE"].split("│")[4:6]] == ["1.95", "yes (Brownian)"]
    assert "varies" in lines["DPM adaptive"]


def test_list_compatible_shows_the_schedule_types_of_both_tools() -> None:
    result = invoke("list-compatible")
    lines = [line for line in result.stdout.splitlines() if line.count("│") > 3]
    assert any("Align Your Steps" in line and "ays_model" in line for line in lines)
    assert any("linear_quadratic" in line for line in lines)


def test_show_config_prints_the_models_scheduler_config() -> None:
    result = invoke("show-config")
    assert result.exit_code == 0
    config = json.loads(result.stdout)
    assert config["_class_name"] == "PNDMScheduler" and config["beta_schedule"] == "scaled_linear"


def test_show_config_as_shows_the_swap_and_what_changed() -> None:
    result = invoke("show-config", "--as", "diffusers:DPM++ 2M Karras")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["use_karras_sigmas"] is True
    assert "PNDMScheduler -> DPMSolverMultistepScheduler" in result.stderr
    assert "use_karras_sigmas: '—' -> True" in result.stderr


def test_show_config_as_an_a1111_name_shows_a1111s_sampler_and_schedule() -> None:
    result = invoke("show-config", "--as", "DPM++ 2M Karras")
    assert result.exit_code == 0
    config = json.loads(result.stdout)
    assert (config["_class_name"], config["schedule"], config["timestep_type"]) == (
        "DPMPP2MSampler", "karras", "continuous")


def test_a_failing_lane_does_not_stop_the_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from schedcmp.core import EulerDiscreteScheduler

    def broken_step(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(EulerDiscreteScheduler, "step", broken_step)
    result = run_quick(tmp_path / "out", "--batched", schedulers="ddim,euler,dpm")
    assert result.exit_code == 1
    record = json.loads((tmp_path / "out/results.json").read_text())
    assert [r["status"] for r in record["runs"]] == ["ok", "failed", "ok"]


def test_edm_euler_warns_that_the_model_was_not_trained_for_it(tmp_path: Path) -> None:
    result = run_quick(tmp_path / "out", schedulers="edm_euler", steps="4")
    assert result.exit_code == 0
    assert (
        "warning: run 1 (edm_euler): EDMEulerScheduler feeds the model EDM-preconditioned inputs and noise levels "
        "(Karras et al. 2022); builtin:shapes was trained as a DDPM model, so expect noise rather than an image"
    ) in result.stderr


def test_summary_line_counts_runs_calls_and_wall_time(tmp_path: Path) -> None:
    result = run_quick(tmp_path / "out", schedulers="ddim,heun", steps="4")
    assert "2 runs, 11 model calls, " in result.stdout and "s wall (sequential)" in result.stdout


def test_generator_device_is_recorded_and_used(tmp_path: Path) -> None:
    result = run_quick(tmp_path / "out", "--generator-device", "cpu", schedulers="euler_a")
    assert result.exit_code == 0
    assert json.loads((tmp_path / "out/results.json").read_text())["plan"]["generator_device"] == "cpu"


def test_clip_skip_is_refused_for_the_builtin_model(tmp_path: Path) -> None:
    result = run_quick(tmp_path / "out", "--clip-skip", "2")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: clip_skip applies to models with a CLIP text encoder; builtin:shapes has none"
    )


def test_compile_flag_compiles_the_denoiser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: compiled.append((module, mode)) or module)
    assert run_quick(tmp_path / "out", "--compile").exit_code == 0
    assert [(type(m).__name__, mode) for m, mode in compiled] == [("ShapesDenoiser", None)]


def test_cuda_graphs_compile_in_reduce_overhead_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: compiled.append(mode) or module)
    monkeypatch.setattr("schedcmp.compare.resolve_device", lambda name: torch.device("cuda"))  # as if on a GPU
    monkeypatch.setattr("schedcmp.compare.load_pipeline", lambda *args: ShapesPipeline())  # which still runs here
    assert run_quick(tmp_path / "out", "--cuda-graphs").exit_code == 0
    assert compiled == ["reduce-overhead"]


def test_cuda_graphs_need_a_cuda_device(tmp_path: Path) -> None:
    result = run_quick(tmp_path / "out", "--cuda-graphs", "--device", "cpu")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: --cuda-graphs needs a CUDA device; this run is on cpu (use --compile instead)"


def test_the_record_in_each_png_is_strict_json(tmp_path: Path) -> None:
    run_quick(tmp_path / "out", schedulers="dpm")  # its config holds lambda_min_clipped = -inf

    def refuse(value: str) -> None:
        raise ValueError(f"non-standard JSON constant {value}")

    text = Image.open(tmp_path / "out" / "images" / "001-dpm-8.png").text["schedcmp"]
    assert json.loads(text, parse_constant=refuse)["scheduler_config"]["lambda_min_clipped"] == "-inf"
