"""CI smoke checks: --expect against a previous run, --check-determinism, and warnings for swaps that did nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from schedcmp.cli import app
from schedcmp.core.builtin import ShapesPipeline
from schedcmp.core.schedulers import DDIMScheduler, SchedulerPreset

PROMPT = "a star"


def sample(out: Path, *extra: str, schedulers: str = "ddim,euler"):
    # --device cpu: "auto" would take a GPU where there is one, and these checks are about the CLI, not the device
    args = ["run", "--prompt", PROMPT, "--schedulers", schedulers, "--steps", "8", "--device", "cpu", "--out", str(out),
            *extra]
    return CliRunner().invoke(app, args)


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("expected") / "run"
    assert sample(out).exit_code == 0
    return out


def test_an_identical_rerun_passes(tmp_path: Path, previous: Path) -> None:
    result = sample(tmp_path / "again", "--expect", str(previous))
    assert result.exit_code == 0, result.output
    assert f"expect: all 2 images match {previous}" in result.stderr
    assert "Images against" in result.stdout and "∞" in result.stdout


def test_a_changed_scheduler_fails_with_the_drift_table(tmp_path: Path, previous: Path) -> None:
    result = sample(tmp_path / "changed", "--expect", str(previous), schedulers="ddim,heun")
    assert result.exit_code == 1
    drift_table = result.stdout.split("Images against")[1]
    rows = [line for line in drift_table.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() + " " + row.split("│")[4].strip() for row in rows] == [
        "ddim ok", "heun new run", "euler missing"]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: 2 of 3 images differ from {previous}: heun 8 (new run), euler 8 (missing)")


def test_a_changed_image_drifts_below_the_tolerance(tmp_path: Path, previous: Path) -> None:
    result = sample(tmp_path / "seed", "--expect", str(previous), "--seed", "9")
    assert result.exit_code == 1
    assert "drifted" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: 2 of 2 images differ from {previous}: ddim 8 (drifted), euler 8 (drifted)")


def test_the_tolerance_sets_the_psnr_that_passes(tmp_path: Path, previous: Path) -> None:
    # 8-bit images never differ by more than the full range, so any PSNR is >= 0 dB
    assert sample(tmp_path / "lenient", "--expect", str(previous), "--seed", "9", "--tolerance", "0").exit_code == 0


def test_expect_without_a_previous_run_fails_before_sampling(tmp_path: Path) -> None:
    result = sample(tmp_path / "out", "--expect", str(tmp_path / "nothing"))
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: --expect {tmp_path / 'nothing'}: no results.json there; point --expect at the --out folder of a "
        "previous schedcmp run")
    assert not (tmp_path / "out").exists()


def test_expect_with_a_corrupt_record_says_so(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text("{not json")
    result = sample(tmp_path / "out", "--expect", str(tmp_path / "old"))
    assert result.exit_code == 1
    assert result.stderr.strip().startswith(f"error: --expect {tmp_path / 'old'}: results.json is not valid JSON (")


def test_check_determinism_passes_on_this_model(tmp_path: Path) -> None:
    result = sample(tmp_path / "out", "--check-determinism")
    assert result.exit_code == 0, result.output
    assert "determinism: run 1 (ddim, 8 steps) gave bit-identical latents twice" in result.stderr


def test_check_determinism_fails_when_the_model_is_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exact = ShapesPipeline.denoise

    def jittery(self, latents, timesteps, embeddings):
        return exact(self, latents, timesteps, embeddings) + 1e-3 * torch.rand_like(latents)  # unseeded

    monkeypatch.setattr(ShapesPipeline, "denoise", jittery)
    result = sample(tmp_path / "out", "--check-determinism")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: run 1 (ddim, 8 steps) is not deterministic: sampled twice from seed 8, its latents differ by up to ")


def test_a_swap_that_did_nothing_is_warned_about(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SchedulerPreset, "build", lambda self, config=None, **options: DDIMScheduler.from_config(
        dict(config or {})))
    result = sample(tmp_path / "out", schedulers="ddim,euler")
    assert result.exit_code == 0, result.output
    message = ("warning: runs 1 (ddim, 8 steps) and 2 (euler, 8 steps) ended on bit-identical latents although they "
               "ask for different samplers: check that the scheduler swap took effect")
    assert message in " ".join(result.stderr.split())
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    assert any("bit-identical latents" in warning for warning in record["warnings"])


def test_the_same_sampler_twice_is_not_a_broken_swap(tmp_path: Path) -> None:
    result = sample(tmp_path / "out", schedulers="euler,EulerDiscreteScheduler")
    assert result.exit_code == 0
    assert "bit-identical" not in result.stderr
