"""Sweeps over seeds and guidance: pages that equal their cells run alone, statistics over seeds on hand-computed
cases, the Pareto front, and a recommendation with a known answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from schedcmp.cli import app
from schedcmp.errors import PlanError
from schedcmp.plan import build_plan
from schedcmp.statistics import Sample, cell_statistics, pareto_front, quartiles, recommend


def _sample(row: str, steps: int, seed: int, error: float | None, calls: int | None = None,
            stochastic: bool = False) -> Sample:
    return Sample(row, steps, seed, 7.5, calls or steps, 0.01 * steps, error, stochastic)


# ------------------------------------------------------------------------------------------------ the plan


def test_seeds_and_guidance_make_pages_guidance_outermost() -> None:
    plan = build_plan(None, {"schedulers": "ddim", "steps": "4", "seeds": "1-3", "guidance": "5,7.5"})
    assert plan.is_sweep
    assert [(page.seed, page.guidance) for page in plan.pages()] == [
        (1, 5.0), (2, 5.0), (3, 5.0), (1, 7.5), (2, 7.5), (3, 7.5)]
    assert all(not page.is_sweep for page in plan.pages())


def test_one_seed_and_one_scale_are_no_sweep() -> None:
    plan = build_plan(None, {"schedulers": "ddim", "steps": "4", "seeds": "8", "guidance": 5.0})
    assert not plan.is_sweep
    assert (plan.seed, plan.guidance, plan.pages()[0].seed) == (8, 5.0, 8)


def test_the_models_default_guidance_fills_a_sweep_of_seeds() -> None:
    plan = build_plan(None, {"schedulers": "ddim", "steps": "4", "seeds": "1,2"})

    class Model:
        default_guidance = 5.0

    assert [page.guidance for page in plan.with_model_defaults(Model()).pages()] == [5.0, 5.0]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"seeds": "1-3", "seed": 4}, "give seed (one) or seeds (a sweep), not both"),
    ({"seeds": "2,2"}, "seeds: each seed once (a repeated seed repeats its images)"),
    ({"seeds": "-1-3"}, "seeds must lie from 0 to 9223372036854775807, got -1"),
    ({"guidance": "5,500"}, "guidance must be a number from 0 to 100, got 500"),
    ({"guidance": "5-7 (+0)"}, "guidance: '5-7 (+0)' never reaches its end with a step of 0"),
])
def test_bad_sweep_axes_are_refused_in_one_line(overrides, message) -> None:
    with pytest.raises(PlanError) as error:
        build_plan(None, {"schedulers": "ddim", "steps": "4", **overrides})
    assert str(error.value) == message


def test_a_plan_file_sweep_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("schedulers: [ddim]\nsteps: 4\nseeds: 1-x\n")
    with pytest.raises(PlanError) as error:
        build_plan(path)
    assert str(error.value) == (f"{path}:3: seeds: cannot read '1-x'; write numbers and ranges such as 8, 1-5, "
                                "1-10 (+2) or 1-10 [5]")


# ------------------------------------------------------------------------------------------ the statistics


@pytest.mark.parametrize(("values", "expected"), [
    ([4.0], (4.0, 4.0, 4.0)),
    ([1.0, 2.0, 3.0, 4.0, 5.0], (2.0, 3.0, 4.0)),
    ([1.0, 2.0, 3.0, 4.0], (1.75, 2.5, 3.25)),  # numpy.percentile's linear rule
    ([10.0, 0.0, 5.0], (2.5, 5.0, 7.5)),
])
def test_quartiles_follow_numpys_linear_rule(values, expected) -> None:
    assert quartiles(values) == pytest.approx(expected)
    assert tuple(np.percentile(values, [25, 50, 75])) == pytest.approx(expected)


def test_cell_statistics_over_seeds() -> None:
    samples = [_sample("euler", 10, seed, error) for seed, error in enumerate([0.01, 0.02, 0.04, 0.08])]
    (cell,) = cell_statistics(samples, target_error=0.05)
    assert (cell.seeds, cell.model_calls, cell.share_reaching) == (4, 10, 0.75)
    assert (cell.q1_error, cell.median_error, cell.q3_error) == pytest.approx((0.0175, 0.03, 0.05))
    assert cell.iqr == pytest.approx(0.0325)


def test_unmeasured_seeds_do_not_count() -> None:
    (cell,) = cell_statistics([_sample("euler", 10, 0, 0.01), _sample("euler", 10, 1, None)], target_error=0.05)
    assert (cell.seeds, cell.median_error, cell.share_reaching) == (1, 0.01, 1.0)


def test_the_pareto_front_keeps_what_nothing_beats_on_both_error_and_calls() -> None:
    cells = cell_statistics([
        _sample("a", 5, 0, 0.30), _sample("a", 10, 0, 0.05), _sample("a", 20, 0, 0.01),
        _sample("b", 5, 0, 0.10), _sample("b", 10, 0, 0.06), _sample("b", 20, 0, 0.001),
    ], target_error=0.05)
    assert [(c.row, c.steps) for c in pareto_front(cells)] == [("b", 5), ("a", 10), ("b", 20)]


def test_the_recommendation_is_the_cheapest_cell_reaching_the_target_on_enough_seeds() -> None:
    samples = []
    for seed in range(10):  # "a" 10 steps reaches 0.05 on 8 seeds of 10, "b" 20 steps on all, "c" 5 steps on 5
        samples.append(_sample("a", 10, seed, 0.04 if seed < 8 else 0.2))
        samples.append(_sample("b", 20, seed, 0.01))
        samples.append(_sample("c", 5, seed, 0.03 if seed % 2 else 0.3))
    cells = cell_statistics(samples, target_error=0.05)
    assert (recommend(cells, 0.05, 0.9).cell.row, recommend(cells, 0.05, 0.9).candidates) == ("b", 1)
    assert recommend(cells, 0.05, 0.8).cell.row == "a"
    assert recommend(cells, 0.05, 0.5).cell.row == "c"
    assert recommend(cells, 0.001, 0.5).cell is None


def test_a_tie_on_calls_goes_to_the_deterministic_cell() -> None:
    cells = cell_statistics([_sample("sde", 10, 0, 0.001, stochastic=True), _sample("ode", 10, 0, 0.01)], 0.05)
    assert recommend(cells, 0.05).cell.row == "ode"


def test_the_recommendation_says_what_to_use_and_the_evidence() -> None:
    cells = cell_statistics([_sample("euler", 10, s, 0.01 * (s + 1)) for s in range(4)], target_error=0.05)
    assert recommend(cells, 0.05, 0.9).describe() == (
        "euler at 10 steps (guidance 7.5): 10 model calls, median RMSE 0.025 (IQR 0.015) over 4 seeds, 100% "
        "within 0.05; the cheapest of 1 that reach it on 90% of seeds")
    assert recommend(cells, 0.001, 0.9).describe() == (
        "no sampler reached latent RMSE <= 0.001 on 90% of the seeds; try more steps or a looser --target-error")


# ----------------------------------------------------------------------------------------- the sweep, run


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "out"
    result = CliRunner().invoke(app, ["run", "--schedulers", "ddim,Euler a", "--steps", "3,6", "--seeds", "3,4",
                                      "--guidance", "2,4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_a_sweep_writes_its_pages_statistics_and_recommendation(sweep: Path) -> None:
    document = json.loads((sweep / "sweep.json").read_text())
    assert [page["name"] for page in document["pages"]] == [
        "seed3-guidance2", "seed4-guidance2", "seed3-guidance4", "seed4-guidance4"]
    assert len(document["statistics"]) == 2 * 2 * 2  # sampler x steps x guidance
    assert {c["seeds"] for c in document["statistics"]} == {2}
    assert document["recommendation"]["text"]
    for page in document["pages"]:
        assert (sweep / f"grid-{page['name']}.png").exists()
        assert json.loads((sweep / page["folder"] / "results.json").read_text())["plan"]["seed"] == page["seed"]
    assert (sweep / "statistics.csv").read_text().splitlines()[0].startswith("scheduler,steps,guidance,seeds")


def test_a_cell_of_a_sweep_equals_the_cell_run_alone(sweep: Path, tmp_path: Path) -> None:
    alone = tmp_path / "alone"
    result = CliRunner().invoke(app, ["run", "--schedulers", "Euler a", "--steps", "6", "--seed", "4",
                                      "--guidance", "4", "--out", str(alone)])
    assert result.exit_code == 0, result.output
    (single,) = sorted((alone / "images").iterdir())
    from_sweep = sorted((sweep / "pages" / "seed4-guidance4" / "images").glob("*euler-a-6.png"))
    assert len(from_sweep) == 1
    assert np.array_equal(np.asarray(Image.open(single)), np.asarray(Image.open(from_sweep[0])))


def test_a_sweep_refuses_the_single_page_checks(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--schedulers", "ddim", "--steps", "3", "--seeds", "1,2",
                                      "--check-determinism", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --expect and --check-determinism check one page; run them without --seeds or a guidance sweep")


# ---------------------------------------------------------------------------------------------- prompt axes


def test_prompt_sr_replaces_the_first_value_by_each_in_prompt_and_negative(tmp_path: Path) -> None:
    plan = build_plan(None, {"schedulers": "ddim", "steps": "4", "prompt": "a red star", "negative_prompt": "red",
                             "prompt_sr": "red,blue,green"})
    assert [(page.prompt, page.negative_prompt) for page in plan.pages()] == [
        ("a red star", "red"), ("a blue star", "blue"), ("a green star", "green")]


def test_prompts_cross_negative_prompts(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("schedulers: [ddim]\nsteps: 4\nprompts: [a star, a circle]\nnegative_prompts: ['', blurry]\n")
    assert [(page.prompt, page.negative_prompt) for page in build_plan(path).pages()] == [
        ("a star", ""), ("a star", "blurry"), ("a circle", ""), ("a circle", "blurry")]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"prompt_sr": "purple,blue"}, "prompt_sr: 'purple' is not in the prompt or the negative prompt"),
    ({"prompt_sr": "red"}, "prompt_sr needs the text to search for and at least one replacement, got 'red'"),
    ({"prompt_sr": "red,blue", "prompts": ["a", "b"]}, "give prompts or prompt_sr, not both"),
    ({"prompts": ["a", 3]}, "prompts must be a list of texts, got ['a', 3]"),
])
def test_bad_prompt_axes_are_refused(overrides, message) -> None:
    with pytest.raises(PlanError) as error:
        build_plan(None, {"schedulers": "ddim", "steps": "4", "prompt": "a red star", **overrides})
    assert str(error.value) == message


def test_statistics_pool_seeds_and_prompts() -> None:
    samples = [Sample("euler", 10, seed, 7.5, 10, 0.1, 0.01 * (seed + 1), False, prompt)
               for prompt in ("a star", "a circle") for seed in range(3)]
    (cell,) = cell_statistics(samples, target_error=0.025)
    assert (cell.seeds, cell.prompts, cell.share_reaching) == (6, 2, pytest.approx(4 / 6))
    assert "over 6 samples of 2 prompts" in recommend([cell], 0.05).describe()


# ---------------------------------------------------------------------------------------------- option axes


def test_an_option_axis_multiplies_the_rows() -> None:
    plan = build_plan(None, {"schedulers": "Euler a,ddim", "steps": "4,8", "option_axes": ["eta=0,1"]})
    assert [(r.label, r.steps, dict(r.config_options) or dict(r.step_options)) for r in plan.runs] == [
        ("Euler a eta=0", 4, {"eta": 0.0}), ("Euler a eta=0", 8, {"eta": 0.0}),
        ("Euler a eta=1", 4, {"eta": 1.0}), ("Euler a eta=1", 8, {"eta": 1.0}),
        ("ddim eta=0", 4, {"eta": 0.0}), ("ddim eta=0", 8, {"eta": 0.0}),
        ("ddim eta=1", 4, {"eta": 1.0}), ("ddim eta=1", 8, {"eta": 1.0}),
    ]


def test_option_axes_in_a_plan_cross_each_other_and_take_words(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("steps: 5\noption_axes: {eta: '0-1 [3]', solver_type: 'midpoint,heun'}\n"
                    "runs: [{scheduler: DPM++ 2M SDE, options: {s_noise: 0.5}}]\n")
    runs = build_plan(path).runs
    assert [r.label for r in runs] == [
        "DPM++ 2M SDE eta=0 solver_type=midpoint", "DPM++ 2M SDE eta=0 solver_type=heun",
        "DPM++ 2M SDE eta=0.5 solver_type=midpoint", "DPM++ 2M SDE eta=0.5 solver_type=heun",
        "DPM++ 2M SDE eta=1 solver_type=midpoint", "DPM++ 2M SDE eta=1 solver_type=heun"]
    assert dict(runs[3].config_options) == {"s_noise": 0.5, "eta": 0.5, "solver_type": "heun"}


def test_an_option_axis_a_sampler_does_not_take_is_refused() -> None:
    with pytest.raises(PlanError) as error:
        build_plan(None, {"schedulers": "ddim", "steps": "4", "option_axes": ["s_churn=0,1"]})
    assert str(error.value).startswith("DDIMScheduler has no option 's_churn'; ")


def test_a_malformed_axis_flag_says_how_to_write_it() -> None:
    with pytest.raises(PlanError) as error:
        build_plan(None, {"schedulers": "ddim", "steps": "4", "option_axes": ["eta"]})
    assert str(error.value) == "--axis takes NAME=VALUES (e.g. eta=0,0.5,1), got 'eta'"


# --------------------------------------------------------------------------------------------- the size cap


def test_a_page_over_200_megapixels_is_refused_before_anything_runs(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--schedulers", "Euler a", "--axis", "eta=0-1 [60]", "--steps",
                                      ",".join(str(n) for n in range(1, 61)), "--size", "512x512",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: a grid page would be 944 MP (60 rows x 60 columns of 512x512), more than the 200 MP a page may be; "
        "split the plan (fewer samplers, schedules or step counts per page; seeds and prompts make pages)")
    assert not (tmp_path / "out").exists()


def test_the_sweep_report_picks_pages_by_their_axes_without_the_network(sweep: Path) -> None:
    import re

    html = (sweep / "report.html").read_text()
    assert '<select data-axis="seed"><option value="3">3</option><option value="4">4</option></select>' in html
    assert '<select data-axis="guidance"><option value="2">2</option><option value="4">4</option></select>' in html
    pages = json.loads(re.search(r'<script id="pages-data" type="application/json">(.*?)</script>', html)[1])
    assert [page["axes"] for page in pages] == [{"seed": "3", "guidance": "2"}, {"seed": "4", "guidance": "2"},
                                                {"seed": "3", "guidance": "4"}, {"seed": "4", "guidance": "4"}]
    assert all((sweep / page["grid"]).exists() and (sweep / page["report"]).exists() for page in pages)
    assert "http://" not in html and "https://" not in html


def _report_after(sweep: Path, tmp_path: Path, script: str):
    """The sweep's report as headless Chromium shows it once ``script`` has run (the page's controls set)."""
    from browser import Page, headless_chromium

    page = sweep / f"report-{tmp_path.name}.html"
    page.write_text((sweep / "report.html").read_text().replace("</body>", f"<script>{script}</script></body>"))
    try:
        return Page(headless_chromium(tmp_path)("--dump-dom", str(page)))
    finally:
        page.unlink()


def _cell_images(shown) -> list[str]:
    return [attrs["src"] for tag, attrs in shown.tags if tag == "img" and "cell" in (attrs.get("class") or "")]


def test_choosing_a_seed_and_a_scale_in_the_report_shows_that_pages_grid(sweep: Path, tmp_path: Path) -> None:
    shown = _report_after(sweep, tmp_path, "for (const [axis, value] of [['seed', '4'], ['guidance', '2']]) {"
                          "const s = document.querySelector(`select[data-axis=${axis}]`); s.value = value;"
                          "s.dispatchEvent(new Event('change')); }")
    (grid,) = [attrs for tag, attrs in shown.tags if tag == "img" and attrs.get("id") == "page-grid"]
    (link,) = [attrs for tag, attrs in shown.tags if tag == "a" and attrs.get("id") == "page-report"]
    assert (grid["src"], link["href"]) == ("grid-seed4-guidance2.png", "pages/seed4-guidance2/report.html")


# ------------------------------------------------------------------------- figures only an exact model gives


def test_data_set_figures_count_images_on_the_reference_fitting_the_prompt_and_distinct() -> None:
    samples = [Sample("euler", 10, seed, 7.5, 10, 0.1, 0.01, False, "a star", nearest, reference, fits)
               for seed, (nearest, reference, fits) in enumerate([(3, 3, True), (4, 5, True), (4, 6, False),
                                                                   (7, 7, True)])]
    (cell,) = cell_statistics(samples, target_error=0.05)
    assert (cell.share_on_reference, cell.prompt_adherence, cell.modes, cell.reference_modes) == (0.5, 0.75, 3, 4)


def test_without_a_known_data_set_there_are_no_data_set_figures() -> None:
    (cell,) = cell_statistics([_sample("euler", 10, 0, 0.01)], target_error=0.05)
    assert (cell.share_on_reference, cell.prompt_adherence, cell.modes, cell.reference_modes) == (None,) * 4


def test_the_builtin_model_says_which_images_fit_a_prompt() -> None:
    from schedcmp.core.builtin import ShapesPipeline

    pipeline = ShapesPipeline()
    items = pipeline.dataset.items
    star = next(i for i, item in enumerate(items) if "star" in item.caption)
    circle = next(i for i, item in enumerate(items) if "circle" in item.caption)
    assert (pipeline.matches_prompt("a star", star), pipeline.matches_prompt("a star", circle)) == (True, False)
    assert pipeline.matches_prompt("something else entirely", star) is None


def test_a_sweep_on_the_builtin_model_reports_its_data_set_figures(sweep: Path) -> None:
    cells = json.loads((sweep / "sweep.json").read_text())["statistics"]
    assert all(c["modes"] is not None and c["reference_modes"] is not None for c in cells)
    assert all(0 <= c["share_on_reference_image"] <= 1 for c in cells)


def test_the_overview_puts_every_page_in_a_column(sweep: Path) -> None:
    overview = Image.open(sweep / "overview.png")
    page = Image.open(sweep / "grid-seed3-guidance2.png")
    assert overview.width > 3 * page.width // 2  # four page columns against a page's two step columns
    assert overview.height > page.height  # a row per sampler and steps against a row per sampler


def test_the_explorer_lays_the_cells_out_by_the_axis_one_picks(sweep: Path, tmp_path: Path) -> None:
    images = _cell_images(_report_after(sweep, tmp_path, "const c = document.getElementById('column-axis');"
                                        "c.value = 'seed'; document.querySelector('select[data-filter=steps]').value "
                                        "= '6'; c.dispatchEvent(new Event('change'));"))
    assert images == ["pages/seed3-guidance2/images/002-ddim-6.png", "pages/seed4-guidance2/images/002-ddim-6.png",
                      "pages/seed3-guidance2/images/004-euler-a-6.png", "pages/seed4-guidance2/images/004-euler-a-6.png"]


def test_a_batched_sweep_packs_all_pages_into_one_batch_with_the_same_images(sweep: Path, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from schedcmp.core.builtin import ShapesPipeline

    calls = []
    denoise = ShapesPipeline.denoise
    monkeypatch.setattr(ShapesPipeline, "denoise", lambda self, *a, **k: calls.append(a[0].shape[0]) or denoise(
        self, *a, **k))
    out = tmp_path / "batched"
    result = CliRunner().invoke(app, ["run", "--schedulers", "ddim,Euler a", "--steps", "3,6", "--seeds", "3,4",
                                      "--guidance", "2,4", "--batched", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert max(calls) == 2 * 16  # one call held every lane of all four pages (CFG doubles each)
    for image in sorted((sweep / "pages").glob("*/images/*.png")):
        alone = np.asarray(Image.open(image), dtype=np.int16)
        packed = np.asarray(Image.open(out / image.relative_to(sweep)), dtype=np.int16)
        assert np.abs(alone - packed).max() <= 1, image.name
    pages = json.loads((out / "sweep.json").read_text())["pages"]
    assert all(page["complete"] for page in pages)


def test_the_explorer_takes_both_axes(sweep: Path, tmp_path: Path) -> None:
    images = _cell_images(_report_after(sweep, tmp_path, "document.getElementById('row-axis').value = 'guidance';"
                                        "document.querySelector('select[data-filter=steps]').value = '3';"
                                        "const c = document.getElementById('column-axis'); c.value = 'seed';"
                                        "document.querySelector('select[data-filter=guidance]').value = '2';"
                                        "c.dispatchEvent(new Event('change'));"))
    # sampler x schedule filters now (its first choice, ddim); rows are the two scales, columns the seeds
    assert images == ["pages/seed3-guidance2/images/001-ddim-3.png", "pages/seed4-guidance2/images/001-ddim-3.png",
                      "pages/seed3-guidance4/images/001-ddim-3.png", "pages/seed4-guidance4/images/001-ddim-3.png"]


def test_a_sweep_encodes_each_prompt_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from schedcmp.core.builtin import ShapesPipeline

    prompts = []
    encode = ShapesPipeline.encode_prompt
    monkeypatch.setattr(ShapesPipeline, "encode_prompt", lambda self, *a, **k: prompts.append(a[0]) or encode(
        self, *a, **k))
    result = CliRunner().invoke(app, ["run", "--prompt", "a red star", "--prompt-sr", "red,blue", "--schedulers",
                                      "dpm", "--steps", "3", "--seeds", "1-3", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert prompts == ["a red star", "a blue star"]  # 6 pages, 2 prompts
