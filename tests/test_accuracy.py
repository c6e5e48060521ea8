"""Every run measured against a reference from the same seed: the exact solution on builtin:shapes, or a run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from schedcmp.accuracy import CostToReach, Measured, cost_to_reach
from schedcmp.core.builtin import ShapesPipeline
from schedcmp.core.pipeline import DiffusionPipeline
from schedcmp.core.schedulers import ALIASES, EDMEulerScheduler
from schedcmp.engine import Engine
from schedcmp.errors import PlanError
from schedcmp.outputs.summary import error_series
from schedcmp.plan import build_plan

PIPELINE = ShapesPipeline()
# EDM Euler feeds the model EDM-preconditioned inputs, which a DDPM-trained model (this one) does not solve.
DETERMINISTIC = [
    alias.name for alias in ALIASES
    if not alias.build(PIPELINE.scheduler.config).is_stochastic and alias.cls is not EDMEulerScheduler
]
STOCHASTIC = [alias.name for alias in ALIASES if alias.build(PIPELINE.scheduler.config).is_stochastic]
FLOAT32_EXACT = 1e-6  # RMSE below this is float32 rounding of the same image: nothing is closer than exact
SEEDS = range(4)


def run(**overrides):
    plan = build_plan(None, {"prompt": "a star", "schedulers": "ddim", "steps": "10", **overrides})
    return Engine(PIPELINE, plan).run()


def test_the_registry_splits_into_the_expected_families() -> None:
    assert DETERMINISTIC == ["ddim", "pndm", "lms", "euler", "heun", "dpm", "dpm_single", "kdpm2", "deis", "unipc"]
    assert STOCHASTIC == ["ddpm", "euler_a", "dpm_sde", "kdpm2_a"]


@pytest.fixture(scope="module")
def errors_by_steps() -> dict[str, dict[int, float]]:
    """Mean latent RMSE against the exact solution over four seeds, per scheduler and step count (no guidance)."""
    totals: dict[str, dict[int, list[float]]] = {}
    for seed in SEEDS:
        report = run(schedulers=",".join(DETERMINISTIC), steps="10,50", seed=seed, guidance=1.0)
        for result in report.results:
            totals.setdefault(result.spec.scheduler, {}).setdefault(result.spec.steps, []).append(
                result.accuracy.latent_rmse)
    return {name: {steps: float(np.mean(values)) for steps, values in by_steps.items()}
            for name, by_steps in totals.items()}


@pytest.mark.parametrize("scheduler", DETERMINISTIC)
def test_fifty_steps_land_closer_to_the_exact_solution_than_ten(scheduler: str, errors_by_steps) -> None:
    at_10, at_50 = errors_by_steps[scheduler][10], errors_by_steps[scheduler][50]
    assert at_50 < at_10 or at_50 < FLOAT32_EXACT, (at_10, at_50)


def test_every_run_gets_rmse_psnr_ssim_and_the_nearest_data_set_image() -> None:
    report = run(schedulers="ddim,euler", steps="5")
    for result in report.results:
        accuracy = result.accuracy
        assert accuracy.latent_rmse > 0
        assert 0 < accuracy.psnr < math.inf
        assert -1 <= accuracy.ssim <= 1
        assert accuracy.nearest_caption.endswith("star on a green background")
        assert accuracy.nearest_dataset_rmse < accuracy.latent_rmse


def test_the_exact_reference_is_a_data_set_image() -> None:
    reference = run().reference
    assert reference.status == "ok"
    nearest = reference.nearest
    assert nearest.rmse < 1e-6
    assert "star" in nearest.caption
    assert PIPELINE.dataset.items[nearest.index].caption == nearest.caption


@pytest.mark.parametrize("scheduler", STOCHASTIC)
def test_stochastic_samplers_are_flagged(scheduler: str) -> None:
    result = run(schedulers=scheduler).results[0]
    assert result.accuracy.stochastic is True


def test_euler_with_churn_is_flagged_as_stochastic(tmp_path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("prompt: a star\nruns:\n  - {scheduler: euler, steps: 10, options: {s_churn: 0.5}}\n")
    report = Engine(PIPELINE, build_plan(plan)).run()
    assert report.results[0].accuracy.stochastic is True


def test_ddim_with_eta_is_flagged_as_stochastic(tmp_path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("prompt: a star\nruns:\n  - {scheduler: ddim, steps: 10, options: {eta: 1.0}}\n")
    report = Engine(PIPELINE, build_plan(plan)).run()
    assert report.results[0].accuracy.stochastic is True


def test_deterministic_samplers_are_not_flagged() -> None:
    assert run(schedulers="dpm").results[0].accuracy.stochastic is False


def test_a_reference_run_counts_its_model_calls_and_matches_the_same_run_exactly() -> None:
    report = run(schedulers="dpm", steps="30", reference="dpm:30")
    assert report.reference.model_calls == 30
    accuracy = report.results[0].accuracy
    assert (accuracy.latent_rmse, accuracy.psnr, accuracy.ssim) == (0.0, math.inf, pytest.approx(1.0))


def test_no_reference_means_no_accuracy() -> None:
    report = run(reference="none")
    assert report.reference is None
    assert report.results[0].accuracy is None


def test_a_stochastic_reference_is_refused() -> None:
    with pytest.raises(PlanError) as err:
        run(reference="euler_a:100")
    assert str(err.value) == (
        "reference: euler_a 100 steps is stochastic (it draws fresh noise every step), so it is no converged "
        "answer; choose a deterministic scheduler, e.g. --reference dpm:200"
    )


def test_a_reference_with_an_impossible_step_count_is_named_as_the_reference() -> None:
    with pytest.raises(PlanError) as err:
        run(reference="dpm:1001")
    assert str(err.value).startswith("reference (dpm, 1001 steps): ")


def test_exact_reference_needs_a_model_with_a_closed_form_solution() -> None:
    class NoClosedForm(ShapesPipeline):
        exact_solution = DiffusionPipeline.exact_solution  # the base's: "has none"

    pipeline = NoClosedForm()
    pipeline.name = "my-model"
    plan = build_plan(None, {"prompt": "a star", "schedulers": "ddim", "reference": "exact"})
    with pytest.raises(PlanError) as err:
        Engine(pipeline, plan)
    assert str(err.value) == (
        "reference 'exact' needs a model with a closed-form solution (builtin:shapes); my-model has none: name a "
        "reference run instead, e.g. --reference dpm:200"
    )


def test_a_failed_reference_keeps_the_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("solver diverged")

    monkeypatch.setattr(ShapesPipeline, "exact_solution", broken)
    report = run()
    assert (report.reference.status, report.reference.error) == ("failed", "RuntimeError: solver diverged")
    assert report.results[0].status == "ok"
    assert report.results[0].accuracy is None


def test_the_reference_starts_from_each_runs_initial_noise() -> None:
    # A run of the reference scheduler itself at the reference's step count is the reference, bit for bit.
    report = run(schedulers="unipc", steps="25", reference="unipc:25", seed=3)
    assert torch.equal(report.results[0].latents, report.reference.latents)


def points(*rows: tuple[str, int, float, bool]) -> list[Measured]:
    return [Measured(name, calls, calls, error, stochastic) for name, calls, error, stochastic in rows]


def test_cost_to_reach_sorts_by_model_calls_with_unreached_and_stochastic_rows_last() -> None:
    table = cost_to_reach(points(
        ("ddim", 10, 0.2, False), ("ddim", 50, 0.04, False),
        ("dpm", 10, 0.03, False), ("dpm", 20, 0.001, False),
        ("euler_a", 10, 0.01, True),
        ("lms", 10, 0.3, False), ("lms", 50, 0.1, False),
        ("pndm", 10, 0.5, False),
    ), target=0.05)
    assert table == [
        CostToReach("dpm", False, 10, 10, 0.001, 20),
        CostToReach("ddim", False, 50, 50, 0.04, 50),
        CostToReach("lms", False, None, None, 0.1, 50),
        CostToReach("pndm", False, None, None, 0.5, 10),
        CostToReach("euler_a", True, 10, 10, 0.01, 10),
    ]


def test_error_series_has_one_line_per_row_in_first_seen_order() -> None:
    series = error_series(points(("ddim", 10, 0.2, False), ("euler_a", 10, 0.1, True), ("ddim", 20, 0.1, False)))
    assert [(s.name, s.points, s.stochastic) for s in series] == [
        ("ddim", ((10.0, 0.2), (20.0, 0.1)), False),
        ("euler_a", ((10.0, 0.1),), True),
    ]
