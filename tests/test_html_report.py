"""report.html: one self-contained page (inline images, CSS and JS), checked as text and in headless Chromium."""

from __future__ import annotations

import base64
import copy
import re
from pathlib import Path
from typing import Any

from browser import Page
from PIL import Image, ImageDraw

from schedcmp.outputs.html import write_html_report

SCHEDULERS = [("ddim", "DDIMScheduler"), ("euler", "EulerDiscreteScheduler"), ("dpm", "DPMSolverMultistepScheduler")]
STEPS = [5, 10]
# ms/call 10.1, 9.0, 20.0, 0.5, 0.45 and the failed run's empty cell: neither text nor digit-run ("natural")
# order is numeric order.
SECONDS_PER_CALL = [0.0101, 0.009, 0.02, 0.0005, 0.00045, None]
NASTY = '<b>"x" & </script>'


def png(path: Path, color: tuple[int, int, int], size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (size, size), color)
    ImageDraw.Draw(image).rectangle((size // 4, size // 4, size // 2, size // 2), fill=(255, 255, 255))
    image.save(path)


def make_run(folder: Path, layout: str = "matrix", accuracy: bool = False) -> dict[str, Any]:
    """A run folder modelled on a real one: 3 schedulers x 2 step counts, the last run failed without an image."""
    specs = [(name, cls, steps) for name, cls in SCHEDULERS for steps in STEPS]
    runs = []
    for i, ((name, cls, steps), per_call) in enumerate(zip(specs, SECONDS_PER_CALL, strict=True), start=1):
        ok = per_call is not None
        image = f"images/{i:03d}-{name}-{steps}.png" if ok else None
        if image:
            png(folder / image, (40 * i, 20, 200 - 30 * i))
        runs.append({
            "scheduler": name, "class": cls, "steps": steps, "label": name, "options": {}, "index": i,
            "status": "ok" if ok else "failed", "error": None if ok else "RuntimeError: boom",
            "model_calls": steps if ok else 2, "seconds": (per_call or 0.001) * steps,
            "seconds_per_call": per_call or 0.0, "scheduler_seconds": 0.0002 * steps,
            "timing": "wall time of the run alone", "image": image,
            "scheduler_config": {"num_train_timesteps": 1000, "_class_name": cls, "steps_marker": f"cfg-{i}"},
        })
    png(folder / "grid.png", (90, 90, 90), size=48)
    document = {
        "schedcmp_version": "0.1.0",
        "plan": {"model": "builtin:shapes", "prompt": "a red circle on a blue background", "negative_prompt": "blurry",
                 "seed": 8, "size": None, "guidance": 7.5, "device": "auto", "dtype": "auto", "mode": "sequential",
                 "layout": layout, "runs": [{k: r[k] for k in ("scheduler", "class", "steps", "label", "options")}
                                            for r in runs]},
        "environment": {"model": "builtin:shapes", "device": "cpu", "dtype": "float32", "cpu_threads": 1,
                        "versions": {"torch": "2.13.0+cpu", "python": "3.11.7"}, "platform": "Linux"},
        "size": [16, 16], "mode": "sequential", "wall_seconds": 0.5, "interrupted": False,
        "warnings": ["dpm 10 steps failed"], "runs": runs,
    }
    if accuracy:
        for i, run in enumerate(runs[:-1]):
            run["accuracy"] = {"latent_rmse": 0.1 / (i + 1), "psnr": None if i == 4 else 20.0 + i, "ssim": 0.9,
                               "stochastic": i == 2, "nearest_dataset_rmse": 0.01,
                               "nearest_caption": "a red circle on a blue background"}
        runs[-1]["accuracy"] = None
        png(folder / "error_vs_calls.png", (250, 250, 250), size=40)
        document["plot"] = "error_vs_calls.png"
        png(folder / "reference.png", (9, 99, 199))
        document["reference"] = {"kind": "exact", "label": "exact float64 ODE solution", "image": "reference.png"}
        document["plan"]["target_error"] = 0.05
        document["cost_to_reach"] = [
            {"scheduler": "ddim", "stochastic": False, "model_calls": 20, "steps": 20, "best_error": 0.01,
             "best_model_calls": 50},
            {"scheduler": "euler", "stochastic": True, "model_calls": None, "steps": None, "best_error": 0.2,
             "best_model_calls": 10},
        ]
    return document


def report(tmp_path: Path, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    document = make_run(tmp_path, **kwargs)
    return write_html_report(tmp_path, document).read_text(encoding="utf-8"), document


def test_report_is_written_into_the_run_folder(tmp_path: Path) -> None:
    path = write_html_report(tmp_path, make_run(tmp_path))
    assert path == tmp_path / "report.html"
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_report_is_self_contained(tmp_path: Path) -> None:
    text, _ = report(tmp_path, accuracy=True)
    for needle in ("http://", "https://", 'src="images/', "<link", "<script src", "@import", "url("):
        assert needle not in text
    srcs = [a["src"] for a in Page(text).all("img") if a.get("src")]
    assert srcs and all(src.startswith("data:image/png;base64,") for src in srcs)


def test_every_run_image_is_embedded_byte_for_byte(tmp_path: Path) -> None:
    text, document = report(tmp_path)
    cells = Page(text).all("img", "cell")
    expected = [(tmp_path / run["image"]).read_bytes() for run in document["runs"] if run["image"]]
    assert [base64.b64decode(cell["src"].split(",", 1)[1]) for cell in cells] == expected


def test_grid_png_itself_is_included(tmp_path: Path) -> None:
    text, _ = report(tmp_path)
    (grid,) = [a for a in Page(text).all("img") if a.get("id") == "grid-png"]
    assert base64.b64decode(grid["src"].split(",", 1)[1]) == (tmp_path / "grid.png").read_bytes()


def test_every_run_has_exactly_one_row_in_the_runs_table(tmp_path: Path) -> None:
    text, document = report(tmp_path)
    assert Page(text).column("runs", "#") == [str(run["index"]) for run in document["runs"]]


def test_runs_table_shows_milliseconds_per_call_and_nothing_for_a_failed_run(tmp_path: Path) -> None:
    text, _ = report(tmp_path)
    assert Page(text).column("runs", "ms/call") == ["10.10", "9.00", "20.00", "0.50", "0.45", ""]


def test_matrix_grid_has_schedulers_as_rows_and_step_counts_as_columns(tmp_path: Path) -> None:
    text, _ = report(tmp_path)
    grid = re.search(r'<table class="grid">.*?</table></div>', text, re.S).group(0)
    assert re.findall(r"<thead><tr>(.*?)</tr>", grid)[0] == "<th></th><th>5 steps</th><th>10 steps</th>"
    rows = {name: re.findall(r'alt="([^"]*)"', cells) for name, cells in re.findall(r"<tr><th>(\w+)</th>(.*?)</tr>", grid)}
    assert rows == {"ddim": ["ddim · 5 steps", "ddim · 10 steps"], "euler": ["euler · 5 steps", "euler · 10 steps"],
                    "dpm": ["dpm · 5 steps"]}  # dpm at 10 steps failed: its cell holds the error


def test_list_layout_shows_every_run_in_run_order(tmp_path: Path) -> None:
    text, document = report(tmp_path, layout="list")
    assert 'class="grid"' not in text
    alts = [cell["alt"] for cell in Page(text).all("img", "cell")]
    assert alts == [f"{run['label']} · {run['steps']} steps" for run in document["runs"] if run["image"]]


def test_failed_run_shows_its_error_instead_of_an_image(tmp_path: Path) -> None:
    text, document = report(tmp_path)
    assert len(Page(text).all("img", "cell")) == len(document["runs"]) - 1
    assert re.search(r'<div class="failed"><b>failed</b><br>RuntimeError: boom</div>', text)


def test_missing_image_file_is_reported_in_its_cell(tmp_path: Path) -> None:
    document = make_run(tmp_path)
    (tmp_path / document["runs"][0]["image"]).unlink()
    text = write_html_report(tmp_path, document).read_text(encoding="utf-8")
    assert "image missing: images/001-ddim-5.png" in text


def test_html_special_text_is_escaped(tmp_path: Path) -> None:
    document = make_run(tmp_path)
    document["plan"]["prompt"] = document["plan"]["negative_prompt"] = NASTY
    document["runs"][0]["label"] = document["runs"][-1]["error"] = NASTY
    document["warnings"] = [NASTY]
    text = write_html_report(tmp_path, document).read_text(encoding="utf-8")
    assert "<b>&#34;x" not in text and '<b>"x"' not in text
    assert "&lt;b&gt;&#34;x&#34; &amp; &lt;/script&gt;" in text
    assert text.count("</script>") == 1  # only the page's own script ends


def test_header_shows_the_sampling_settings_and_environment(tmp_path: Path) -> None:
    text, _ = report(tmp_path)
    for shown in ("a red circle on a blue background", "blurry", "<dd>8</dd>", "<dd>7.5</dd>", "builtin:shapes",
                  "<dd>16x16</dd>", "cpu / float32", "schedcmp 0.1.0", "torch 2.13.0+cpu", "500.0 ms",
                  "dpm 10 steps failed", "5 ok of 6"):
        assert shown in text


def test_accuracy_columns_appear_only_when_runs_carry_accuracy(tmp_path: Path) -> None:
    plain, _ = report(tmp_path / "plain")
    scored, _ = report(tmp_path / "scored", accuracy=True)
    accuracy_headers = ["latent RMSE", "PSNR dB", "SSIM", "stochastic", "nearest data-set RMSE", "nearest caption"]
    assert not set(accuracy_headers) & set(Page(plain).tables["runs"]["head"][0])
    assert Page(scored).tables["runs"]["head"][0][-6:] == accuracy_headers
    assert Page(scored).column("runs", "stochastic") == ["no", "no", "yes", "no", "no", ""]
    assert "RMSE 0.1 · PSNR 20.0 dB" in scored


def test_null_psnr_is_shown_as_identical_images(tmp_path: Path) -> None:
    text, _ = report(tmp_path, accuracy=True)
    assert Page(text).column("runs", "PSNR dB")[4] == "∞"
    assert "PSNR ∞ (identical)" in text


def test_new_fields_may_be_absent_or_null(tmp_path: Path) -> None:
    document = make_run(tmp_path)
    for variant in (document, {**document, "plot": None, "reference": None, "cost_to_reach": None}):
        variant = copy.deepcopy(variant)
        for run in variant["runs"]:
            run["accuracy"] = None
        text = write_html_report(tmp_path, variant).read_text(encoding="utf-8")
        assert 'id="plot"' not in text and "cost-to-reach" not in text and "PSNR" not in text


def test_plot_and_cost_to_reach_table_are_shown_when_present(tmp_path: Path) -> None:
    text, _ = report(tmp_path, accuracy=True)
    page = Page(text)
    (plot,) = [a for a in page.all("img") if a.get("id") == "plot"]
    assert base64.b64decode(plot["src"].split(",", 1)[1]) == (tmp_path / "error_vs_calls.png").read_bytes()
    assert "Model calls to reach latent RMSE &le; 0.05" in text
    assert page.tables["cost-to-reach"]["head"][0] == ["scheduler", "model calls", "steps", "best RMSE", "at calls"]
    assert page.tables["cost-to-reach"]["body"][0] == ["ddim", "20", "20", "0.01", "50"]


def test_cost_to_reach_marks_unreached_targets(tmp_path: Path) -> None:
    text, _ = report(tmp_path, accuracy=True)
    assert Page(text).tables["cost-to-reach"]["body"][1] == [
        "euler (stochastic)", "not reached", "not reached", "0.2", "10"]


def test_the_reference_image_is_shown_and_zoomable(tmp_path: Path) -> None:
    text, _ = report(tmp_path, accuracy=True)
    (reference,) = Page(text).all("img", "zoomable")
    assert base64.b64decode(reference["src"].split(",", 1)[1]) == (tmp_path / "reference.png").read_bytes()
    assert reference["alt"] == "reference: exact float64 ODE solution"


def test_scheduler_configs_plan_and_reference_are_in_details_blocks(tmp_path: Path) -> None:
    text, _ = report(tmp_path, accuracy=True)
    blocks = re.findall(r"<details><summary>([^<]*)</summary><pre>(.*?)</pre></details>", text, re.S)
    summaries = [summary for summary, _ in blocks]
    assert summaries[:2] == ["#1 ddim · 5 steps · DDIMScheduler", "#2 ddim · 10 steps · DDIMScheduler"]
    assert {"plan", "environment", "accuracy reference"} <= set(summaries)
    assert all(f"&#34;steps_marker&#34;: &#34;cfg-{i}&#34;" in blocks[i - 1][1] for i in range(1, 7))


# --- a real browser -------------------------------------------------------------------------------------------------


def page_with(tmp_path: Path, script: str = "", **kwargs: Any) -> str:
    """Write a report, append ``script`` after the page's own, and return its file:// URL."""
    path = write_html_report(tmp_path, make_run(tmp_path, **kwargs))
    if script:
        path.write_text(path.read_text(encoding="utf-8").replace("</body>", f"<script>{script}</script></body>"))
    return path.as_uri()


def test_browser_runs_the_script_and_renders_every_run(tmp_path: Path, chromium) -> None:
    page = Page(chromium("--dump-dom", page_with(tmp_path, accuracy=True)))
    assert page.all("body")[0].get("data-ready") == "1"
    assert page.column("runs", "#") == ["1", "2", "3", "4", "5", "6"]
    assert len(page.all("img", "cell")) == 5


def test_browser_sorts_numerically_with_empty_cells_last(tmp_path: Path, chromium) -> None:
    clicks = """
    const th = [...document.querySelectorAll('#runs th')].find(h => h.textContent === 'ms/call');
    const order = () => [...document.querySelectorAll('#runs tbody tr')].map(r => r.cells[0].textContent).join();
    th.click(); document.body.dataset.asc = order();
    th.click(); document.body.dataset.desc = order();
    """
    body = Page(chromium("--dump-dom", page_with(tmp_path, clicks))).all("body")[0]
    assert body["data-asc"] == "5,4,2,1,3,6"
    assert body["data-desc"] == "3,1,2,4,5,6"


def test_browser_zoom_opens_on_click_and_closes_on_escape(tmp_path: Path, chromium) -> None:
    clicks = """
    const zoom = document.getElementById('zoom'), cell = document.querySelector('img.cell');
    cell.click();
    document.body.dataset.opened = zoom.classList.contains('open') && zoom.querySelector('img').src === cell.src;
    document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}));
    document.body.dataset.closed = !zoom.classList.contains('open');
    """
    body = Page(chromium("--dump-dom", page_with(tmp_path, clicks))).all("body")[0]
    assert (body["data-opened"], body["data-closed"]) == ("true", "true")


def test_browser_screenshot_is_not_blank(tmp_path: Path, chromium) -> None:
    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,2000", page_with(tmp_path, accuracy=True))
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 10
