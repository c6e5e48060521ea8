"""A sweep's own outputs beside its pages: sweep.json (statistics, Pareto front, recommendation), statistics.csv,
a grid per page at the top (grid-seed8.png, ...), and the statistics table for the terminal."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..plan import Plan
from ..statistics import CellStatistics, Recommendation, Sample
from .folder import write_atomically
from .summary import Summary

SWEEP_NAME = "sweep.json"
STATISTICS_NAME = "statistics.csv"
PAGES = "pages"


def page_name(page: Plan, sweep: Plan) -> str:
    """The folder and grid name of one page, naming only the swept axes: seed8, guidance7.5, prompt2 (the prompt's
    place in the sweep, from 1), or several of them joined by dashes."""
    parts = []
    if len(sweep.seeds) > 1:
        parts.append(f"seed{page.seed}")
    if len(sweep.guidances) > 1:
        parts.append(f"guidance{page.guidance:g}")
    if len(sweep.prompt_variants) > 1:
        parts.append(f"prompt{sweep.prompt_variants.index((page.prompt, page.negative_prompt)) + 1}")
    return "-".join(parts)


def samples_of(summary: Summary) -> list[Sample]:
    """The finished cells of one page, as the statistics read them."""
    plan = summary.plan
    return [Sample(summary.row_name(r), r.spec.steps, plan.seed, plan.guidance, r.model_calls, r.seconds,
                   r.accuracy.latent_rmse if r.accuracy is not None else None, r.stochastic, plan.prompt)
            for r in summary.results if r.status == "ok"]


def write_sweep(folder: Path, plan: Plan, pages: Sequence[tuple[str, Summary]], cells: Sequence[CellStatistics],
                front: Sequence[CellStatistics], recommendation: Recommendation) -> list[str]:
    """sweep.json, statistics.csv and the page grids at the top of the folder; the names written."""
    document: dict[str, Any] = {
        "plan": plan.to_json(),
        "pages": [{"name": name, "seed": s.plan.seed, "guidance": s.plan.guidance, "prompt": s.plan.prompt,
                   "negative_prompt": s.plan.negative_prompt, "folder": f"{PAGES}/{name}",
                   "runs": len(s.results), "failed": len(s.failed()), "interrupted": s.report.interrupted}
                  for name, s in pages],
        "statistics": [c.to_json() for c in cells],
        "pareto_front": [c.to_json() for c in front],
        "recommendation": recommendation.to_json() | {"text": recommendation.describe()},
    }
    text = json.dumps(document, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    write_atomically(folder / SWEEP_NAME, lambda p: p.write_text(text, encoding="utf-8"))
    buffer = io.StringIO()
    fields = list(cells[0].to_json()) if cells else ["scheduler"]
    table = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    table.writeheader()
    table.writerows(c.to_json() for c in cells)
    write_atomically(folder / STATISTICS_NAME, lambda p: p.write_text(buffer.getvalue(), encoding="utf-8"))
    names = [SWEEP_NAME, STATISTICS_NAME]
    for name, _summary in pages:
        grid = folder / PAGES / name / "grid.png"
        if grid.exists():
            write_atomically(folder / f"grid-{name}.png", lambda p, grid=grid: shutil.copyfile(grid, p))
            names.append(f"grid-{name}.png")
    return names


def statistics_table(cells: Sequence[CellStatistics], target_error: float) -> Any:
    """The Rich table of the statistics: median error, IQR, share within the target, calls and time per cell."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Over seeds: latent RMSE to each seed's reference (target {target_error:g})",
                  title_justify="left")
    for name in ("scheduler", "steps", "guidance", "seeds", "calls", "median RMSE", "IQR", "within target",
                 "median s"):
        table.add_column(name, justify="left" if name == "scheduler" else "right")
    for c in cells:
        label = escape(c.row) + (" (stochastic)" if c.stochastic else "")
        median = "-" if c.median_error is None else f"{c.median_error:.3g}"
        iqr = "-" if c.iqr is None else f"{c.iqr:.2g}"
        share = "-" if c.share_reaching is None else f"{c.share_reaching:.0%}"
        table.add_row(label, str(c.steps), f"{c.guidance:g}", str(c.seeds), str(c.model_calls), median, iqr, share,
                      f"{c.median_seconds:.3f}")
    return table
