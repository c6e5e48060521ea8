"""The accuracy sweep end to end on builtin:shapes: table, CSV, record, plot and report.html in a browser."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from browser import Page
from PIL import Image
from typer.testing import CliRunner

from schedcmp.cli import app
from schedcmp.outputs.plot import SERIES_COLOURS, layout

SCHEDULERS = ["ddim", "euler", "dpm", "unipc"]
STEPS = [5, 10, 20, 50]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    result = CliRunner().invoke(app, [
        "run", "--prompt", "a star", "--schedulers", ",".join(SCHEDULERS), "--steps", ",".join(map(str, STEPS)),
        "--reference", "dpm:200", "--device", "cpu", "--out", str(out)])  # the same device on every machine
    assert result.exit_code == 0, result.output
    return out, result


def test_the_table_has_accuracy_columns_and_the_cost_to_reach_table(sweep) -> None:
    _, result = sweep
    assert "accuracy against dpm 200 steps from the same seed" in " ".join(result.stdout.split())
    assert all(column in result.stdout for column in ("latent RMSE", "PSNR dB", "SSIM"))
    assert "Cost to reach latent RMSE <= 0.05 against dpm 200 steps" in " ".join(result.stdout.split())


def test_the_record_holds_the_reference_and_every_runs_accuracy(sweep) -> None:
    out, _ = sweep
    record = json.loads((out / "results.json").read_text())
    reference = record["reference"]
    assert (reference["kind"], reference["label"], reference["model_calls"]) == ("run", "dpm 200 steps", 200)
    assert reference["image"] == "reference.png" and (out / "reference.png").is_file()
    accuracies = [run["accuracy"] for run in record["runs"]]
    assert len(accuracies) == len(SCHEDULERS) * len(STEPS)
    assert all(set(a) == {"latent_rmse", "psnr", "ssim", "stochastic", "nearest_dataset_rmse", "nearest_caption",
                          "nearest_index", "on_reference_image", "adheres_to_prompt"} for a in accuracies)
    assert record["plot"] == "error_vs_calls.png"
    assert sorted(row["scheduler"] for row in record["cost_to_reach"]) == sorted(SCHEDULERS)


def test_the_csv_has_accuracy_columns(sweep) -> None:
    out, _ = sweep
    rows = list(csv.DictReader((out / "timings.csv").open()))
    assert all(row["latent_rmse"] and row["ssim"] and row["stochastic"] == "false" for row in rows)


def test_the_record_is_strict_json(sweep) -> None:
    out, _ = sweep

    def refuse(value: str) -> None:
        raise ValueError(f"non-standard JSON constant {value}")

    json.loads((out / "results.json").read_text(), parse_constant=refuse)


def test_the_plot_is_a_png_with_one_line_per_scheduler(sweep) -> None:
    out, _ = sweep
    with Image.open(out / "error_vs_calls.png") as image:
        image.verify()
    pixels = np.asarray(Image.open(out / "error_vs_calls.png").convert("RGB"))
    left, top, right, bottom = layout(len(SCHEDULERS)).plot
    area = pixels[top:bottom, left:right]
    counts = [int((area == colour).all(axis=-1).sum()) for colour in SERIES_COLOURS[:len(SCHEDULERS) + 1]]
    assert all(count > 100 for count in counts[:len(SCHEDULERS)]), counts
    assert counts[len(SCHEDULERS)] == 0  # no fifth line


def test_the_report_renders_in_chromium_with_every_run_and_the_plot(sweep, chromium) -> None:
    out, _ = sweep
    page = Page(chromium("--dump-dom", (out / "report.html").as_uri()))
    assert page.all("body")[0].get("data-ready") == "1"
    assert len(page.tables["runs"]["body"]) == len(SCHEDULERS) * len(STEPS)
    assert len(page.all("img", "cell")) == len(SCHEDULERS) * len(STEPS)
    assert len(page.all("img", None)) >= len(SCHEDULERS) * len(STEPS) + 2  # cells, grid.png, the plot
    assert [row[0] for row in page.tables["cost-to-reach"]["body"]] != []


def test_the_report_screenshot_shows_the_page(sweep, chromium, tmp_path: Path) -> None:
    out, _ = sweep
    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,1600", (out / "report.html").as_uri())
    with Image.open(shot) as image:
        assert image.size == (1280, 1600)
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50
