"""One comparison as every output reads it: built once from the plan and the engine's report, so the tables,
the grid, the plot, the record and the HTML report all show the same numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..accuracy import CostToReach, Measured, by_row, cost_to_reach
from ..engine import EngineReport, RunResult
from ..plan import Plan
from .plot import Series


@dataclass(frozen=True)
class Summary:
    """The plan, what the engine reported, where it ran, and the accuracy sweep derived from them."""

    plan: Plan
    report: EngineReport
    environment: dict[str, Any]
    size: tuple[int, int]  # (width, height) of every image
    points: tuple[Measured, ...]  # every run with a finite accuracy
    costs: tuple[CostToReach, ...]  # cheapest first; empty without accuracy

    @classmethod
    def build(cls, plan: Plan, report: EngineReport, environment: dict[str, Any],
              size: tuple[int, int]) -> Summary:
        """Derive the accuracy points and the cost-to-reach table once."""
        points = tuple(
            Measured(row_name(plan, r), r.spec.steps, r.model_calls, r.accuracy.latent_rmse, r.accuracy.stochastic)
            for r in report.results
            if r.accuracy is not None and math.isfinite(r.accuracy.latent_rmse)
        )
        costs = tuple(cost_to_reach(points, plan.target_error)) if points else ()
        return cls(plan, report, environment, size, points, costs)

    @property
    def results(self) -> list[RunResult]:
        return self.report.results

    @property
    def measured(self) -> bool:
        """Whether any run was measured against a reference."""
        return bool(self.points)

    def row_name(self, result: RunResult) -> str:
        """The grid row (and plot line) of a run."""
        return row_name(self.plan, result)

    @property
    def reference_label(self) -> str:
        return self.plan.reference.label if self.plan.reference else ""

    @property
    def model_calls(self) -> int:
        return sum(r.model_calls for r in self.results)

    def failed(self) -> list[RunResult]:
        """The runs that ended in an error (or non-finite numbers)."""
        return [r for r in self.results if r.status == "failed"]


def error_series(points: tuple[Measured, ...] | list[Measured]) -> list[Series]:
    """One plot line per row: (model calls, latent RMSE) of each of its step counts, in first-seen row order."""
    return [
        Series(name, tuple((float(p.model_calls), p.error) for p in members), any(p.stochastic for p in members))
        for name, members in by_row(points).items()
    ]


def row_name(plan: Plan, result: RunResult) -> str:
    """The grid row (and plot line) a run belongs to: its scheduler and schedule in a matrix plan, its label in a
    list."""
    return result.spec.row_label
