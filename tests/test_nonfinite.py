"""Numbers that cannot lie: a run whose latents go NaN or infinite is 'failed' with the model call where it happened,
shown as failed in the grid, the tables and the record, never an 'ok' black image; every formatter copes."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_sd import build_tiny_sd

from schedcmp.core import load_pipeline
from schedcmp.core.builtin import ShapesPipeline
from schedcmp.engine import Engine
from schedcmp.outputs import wording
from schedcmp.plan import build_plan


class BreaksAtCall(ShapesPipeline):
    """The built-in model, except that model call number ``bad`` (1-based, warm-up not counted) returns ``value``
    for its first sample (the first lane's, in batched mode)."""

    def __init__(self, bad: int, value: float = math.nan):
        super().__init__()
        self.bad, self.value, self.calls = bad, value, -1  # -1: the warm-up call comes first

    def denoise(self, latents, timesteps, conditioning):
        self.calls += 1
        output = super().denoise(latents, timesteps, conditioning)
        if self.calls == self.bad:
            output = output.clone()
            output[0] = self.value
        return output


def run_plan(pipeline, schedulers: str, steps: str = "6", mode: str = "sequential"):
    # max_batch is given, so no untimed measuring call comes before the runs' own
    plan = build_plan(None, {"schedulers": schedulers, "steps": steps, "mode": mode, "reference": "none",
                             "max_batch": 2})
    return Engine(pipeline, plan).run().results


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("mode", ["sequential", "batched"])
def test_a_run_that_goes_non_finite_fails_with_the_model_call(value: float, mode: str) -> None:
    broken, fine = run_plan(BreaksAtCall(bad=4, value=value), "euler,ddim", mode=mode)
    assert (broken.status, broken.image) == ("failed", None)
    assert broken.error == "latents became NaN or infinite at model call 4 of 6"
    assert fine.status == "ok" and fine.image is not None


def test_the_failed_run_is_failed_in_the_grid_record_and_exit_code(schedcmp, tmp_path: Path) -> None:
    # 1000 steps of the SD 1.5 'leading' schedule repeat a timestep; the multistep solvers then divide by zero.
    result = schedcmp("run", "--schedulers", "dpm,euler", "--steps", "1000", "--reference", "none", "--out", "out",
                      cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "error: 1 of 2 runs failed: 1 (dpm)"
    runs = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["failed", "ok"]
    assert runs[0]["error"].startswith("latents became NaN or infinite at model call ")
    assert runs[0]["image"] is None and not (tmp_path / "out" / "images" / "001-dpm-1000.png").exists()
    assert "failed" in (tmp_path / "out" / "report.html").read_text()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "sd1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_tiny_sd(folder, "sd1")
    return folder


def poisoned(tiny_folder: Path, tmp_path: Path, component: str) -> Path:
    """A copy of the tiny model with every weight of ``component`` set to NaN."""
    folder = tmp_path / f"nan-{component}"
    shutil.copytree(tiny_folder, folder)
    weights = folder / component / "diffusion_pytorch_model.safetensors"
    save_file({k: torch.full_like(v, math.nan) for k, v in load_file(weights).items()}, weights)
    return folder


def test_nan_unet_weights_fail_the_run_at_the_first_call(tiny_folder: Path, tmp_path: Path) -> None:
    (result,) = run_plan(load_pipeline(str(poisoned(tiny_folder, tmp_path, "unet"))), "euler", steps="3")
    assert (result.status, result.error) == ("failed", "latents became NaN or infinite at model call 1 of 3")


def test_nan_vae_weights_fail_the_decode_instead_of_a_black_image(tiny_folder: Path, tmp_path: Path) -> None:
    folder = poisoned(tiny_folder, tmp_path, "vae")
    (result,) = run_plan(load_pipeline(str(folder)), "euler", steps="3")
    assert result.status == "failed" and result.image is None
    assert result.error == (f"{folder}: the VAE decoded NaN or infinite pixels from finite latents; its weights may "
                            "be broken (check the vae folder or file)")


@pytest.mark.parametrize(("function", "value", "shown"), [
    (wording.duration, None, ""), (wording.duration, math.nan, "nan"), (wording.duration, math.inf, "∞"),
    (wording.duration, 0.0021, "2.1 ms"), (wording.duration, 12.345, "12.35 s"),
    (wording.number, None, ""), (wording.number, math.nan, "nan"), (wording.number, -math.inf, "-∞"),
    (wording.number, 0.012345, "0.0123"),
    (wording.milliseconds, math.inf, "∞"), (wording.milliseconds, 0.0123, "12.30"),
    (wording.psnr_db, math.inf, "∞"), (wording.psnr_db, math.nan, "nan"), (wording.psnr_db, 38.14, "38.1"),
])
def test_every_number_wording_copes_with_missing_and_non_finite_values(function, value, shown: str) -> None:
    assert function(value) == shown


@pytest.mark.parametrize(("rmse", "psnr", "stochastic", "shown"), [
    (0.0123, 38.14, False, "RMSE 0.0123 · 38.1 dB"),
    (1e-9, math.inf, True, "identical to the reference · stochastic"),
    (math.nan, math.nan, False, "RMSE nan · nan dB"),
    (math.inf, -math.inf, False, "RMSE ∞ · -∞ dB"),
])
def test_accuracy_captions_cope_with_non_finite_values(rmse: float, psnr: float, stochastic: bool,
                                                       shown: str) -> None:
    assert wording.accuracy_caption(rmse, psnr, stochastic) == shown
