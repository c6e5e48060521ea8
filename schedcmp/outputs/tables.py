"""The Rich tables printed on stdout: per-run timings (with accuracy), the cost to reach the target error, and
the images against an expected run."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from ..accuracy import CostToReach
from ..engine import RunResult
from ..smoke import ImageCheck
from .summary import Summary
from .wording import milliseconds, number, psnr_db


def _table(title: str, columns: list[tuple[str, str]]) -> Table:
    table = Table(title=escape(title), title_justify="left")
    for name, justify in columns:
        table.add_column(name, justify=justify)
    return table


def timing_table(summary: Summary) -> Table:
    """One row per run, with accuracy columns when the runs were measured."""
    attributed = summary.report.mode == "batched"
    title = "Timings (batched: each run's attributed share of shared model calls)" if attributed else (
        "Timings (sequential: each run timed alone)")
    if summary.measured:
        title += f"; accuracy against {summary.reference_label} from the same seed"
    columns = [("#", "right"), ("run", "left"), ("class", "left"), ("steps", "right"), ("model calls", "right"),
               ("seconds", "right"), ("ms / call", "right"), ("scheduler ms", "right")]
    if summary.measured:
        columns += [("latent RMSE", "right"), ("PSNR dB", "right"), ("SSIM", "right")]
    table = _table(title, [*columns, ("status", "left")])
    for r in summary.results:
        status = escape(r.status) if r.status != "failed" else f"[red]failed[/red]: {escape(r.error or '')}"
        cells = [str(r.index + 1), escape(r.spec.label), r.spec.preset.cls.__name__, str(r.spec.steps),
                 str(r.model_calls), number(r.seconds, ".3f"), milliseconds(r.seconds_per_call),
                 milliseconds(r.scheduler_seconds)]
        if summary.measured:
            cells += _accuracy_columns(r)
        table.add_row(*cells, status)
    return table


def _accuracy_columns(result: RunResult) -> list[str]:
    accuracy = result.accuracy
    if accuracy is None:
        return ["", "", ""]
    mark = " (stochastic)" if accuracy.stochastic else ""
    return [number(accuracy.latent_rmse) + mark, psnr_db(accuracy.psnr), number(accuracy.ssim, ".3f")]


def cost_table(summary: Summary) -> Table | None:
    """Rows sorted by the model calls they needed to reach the plan's target error (None without accuracy)."""
    if not summary.costs:
        return None
    table = _table(f"Cost to reach latent RMSE <= {summary.plan.target_error:g} against {summary.reference_label}",
                   [("scheduler", "left"), ("model calls", "right"), ("steps", "right"), ("best RMSE", "right"),
                    ("at calls", "right")])
    for row in summary.costs:
        table.add_row(*_cost_cells(row))
    return table


def _cost_cells(row: CostToReach) -> list[str]:
    name = escape(row.row) + (" (stochastic)" if row.stochastic else "")
    reached = [str(row.model_calls), str(row.steps)] if row.model_calls is not None else ["not reached", ""]
    return [name, *reached, number(row.best_error), str(row.best_calls)]


def expectation_table(checks: list[ImageCheck], expected: str, tolerance: float) -> Table:
    """Every image's PSNR against the expected run's."""
    table = _table(f"Images against {expected} (pass: PSNR >= {tolerance:g} dB)",
                   [("run", "left"), ("steps", "right"), ("PSNR dB", "right"), ("status", "left")])
    for check in checks:
        status = check.status if check.passed else f"[red]{check.status}[/red]"
        table.add_row(escape(check.label), str(check.steps), psnr_db(check.psnr), status)
    return table
