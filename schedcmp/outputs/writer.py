"""Writes a comparison's files into a (staging) folder: each run's image as soon as the run ends, then the grid,
the plot, timings.csv, results.json and report.html from the one Summary."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine import RunResult
from ..plan import Plan
from . import record as rec
from .folder import write_atomically
from .grid import GridCell, save_grid
from .html import write_html_report
from .plot import save_error_plot
from .summary import Summary, error_series
from .wording import accuracy_caption, duration


@dataclass(frozen=True)
class Written:
    """What was written (names relative to the folder) and the record results.json holds."""

    document: dict[str, Any]
    names: list[str]
    images: int


RUN_LINES = "runs.jsonl"  # one record per finished run, appended as it finishes


class ResultWriter:
    """Keeps each finished run's record and image; writes the rest once the engine is done."""

    def __init__(self, folder: Path, plan: Plan, size: tuple[int, int], provenance: dict[str, Any] | None = None):
        self.folder, self.plan, self.size = folder, plan, size
        self.model_fields = rec.model_fields(provenance)
        self.records: dict[int, dict[str, Any]] = {}

    def run_finished(self, result: RunResult) -> None:
        """Record the run and write its image now, and its record as a line of runs.jsonl, so a killed comparison
        still leaves both on disk (a resumed sweep reads them back)."""
        record = rec.run_record(result, self.plan.mode)
        if result.image is not None:
            rec.save_run_image(self.folder, self.plan, result, self.size, record, self.model_fields)
        self.keep(result.index, record)

    def keep(self, index: int, record: dict[str, Any]) -> None:
        """Hold a finished run's record for results.json and append it to runs.jsonl."""
        self.records[index] = record
        with (self.folder / RUN_LINES).open("a", encoding="utf-8") as lines:
            lines.write(json.dumps(record, allow_nan=False, ensure_ascii=False) + "\n")

    def finish(self, summary: Summary) -> Written:
        """The grid, the reference image, the plot, the CSV, results.json and report.html."""
        mode = summary.report.mode
        records = [self.records.get(r.index) or rec.run_record(r, mode) for r in summary.results]
        names = ["grid.png"]
        save_grid(grid_cells(summary), grid_header(summary), self.plan.layout, self.folder / "grid.png")
        reference = summary.report.reference
        reference_image = None
        if reference is not None and reference.image is not None:
            reference_image = rec.REFERENCE_NAME
            write_atomically(self.folder / reference_image, lambda p: reference.image.save(p, format="PNG"))
            names.append(reference_image)
        plot = None
        if summary.points:
            plot = rec.PLOT_NAME
            # settings first: a long prompt is elided, never the settings
            title = (f"seed {self.plan.seed} · guidance {self.plan.guidance:g} · against {summary.reference_label}"
                     f" · {self.plan.prompt}")
            save_error_plot(error_series(summary.points), self.folder / plot, target=self.plan.target_error,
                            title=title)
            names.append(plot)
        document = rec.document(summary, records, reference_image, plot)
        rec.write_timings(self.folder, records, mode)
        rec.write_results(self.folder, document)
        write_html_report(self.folder, document)
        names += [rec.TIMINGS_NAME, rec.RESULTS_NAME, "report.html"]
        return Written(document, names, sum(1 for r in records if r["image"]))


def grid_header(summary: Summary) -> list[str]:
    """The grid's header lines: the prompt (and negative prompt), then the shared settings."""
    plan, environment, (width, height) = summary.plan, summary.environment, summary.size
    lines = [plan.prompt]
    if plan.negative_prompt:
        lines.append(f"negative: {plan.negative_prompt}")
    lines.append(f"seed {plan.seed} · guidance {plan.guidance:g} · {plan.model} · {width}x{height} · "
                 f"{summary.report.mode} on {environment['device']} {environment['dtype']}")
    return lines


def cell_caption(result: RunResult) -> list[str]:
    """Caption lines under a grid cell: name, then steps / calls / seconds or what went wrong."""
    spec = result.spec
    if result.status != "ok":
        return [spec.label, f"{spec.steps} steps · {result.status}", result.error or result.status]
    lines = [spec.label, f"{spec.steps} steps · {result.model_calls} calls · {duration(result.seconds)}"]
    accuracy = result.accuracy
    if accuracy is not None:
        lines.append(accuracy_caption(accuracy.latent_rmse, accuracy.psnr, accuracy.stochastic))
    return lines


def grid_cells(summary: Summary) -> list[GridCell]:
    """One grid cell per run, in the plan's order."""
    return [
        GridCell(row=summary.row_name(r), column=f"{r.spec.steps} steps", image=r.image, lines=cell_caption(r),
                 failed=r.status != "ok")
        for r in summary.results
    ]
