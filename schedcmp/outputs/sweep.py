"""A sweep's own outputs beside its pages: sweep.json (statistics, Pareto front, recommendation), statistics.csv,
a grid per page at the top (grid-seed8.png, ...), and the statistics table for the terminal."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SchedcmpError
from ..plan import Plan
from ..statistics import CellStatistics, Recommendation, Sample
from .folder import write_atomically
from .summary import Summary

SWEEP_NAME = "sweep.json"
STATISTICS_NAME = "statistics.csv"
REPORT_NAME = "report.html"
OVERVIEW_NAME = "overview.png"
PAGES = "pages"
_AXES = (("seed", "seed"), ("guidance", "guidance"), ("prompt", "prompt"), ("negative_prompt", "negative prompt"))


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


# What a page's results depend on: its plan without the sweep's axes and how the runs were scheduled.
_NOT_IDENTITY = ("source", "mode", "max_batch", "seeds", "guidances", "prompt_variants")


def page_identity(page: Plan) -> dict[str, Any]:
    """A page's plan as far as its images depend on it (a resumed sweep keeps a page only if this is unchanged)."""
    return {k: v for k, v in page.to_json().items() if k not in _NOT_IDENTITY}


@dataclass(frozen=True)
class KeptPage:
    """A finished page of an earlier, interrupted run of the same sweep, as it recorded it, and the folder holding
    its page folder (the output folder, or the staging folder a killed run left)."""

    entry: dict[str, Any]
    source: Path

    @property
    def samples(self) -> list[Sample]:
        return [Sample(**sample) for sample in self.entry["samples"]]


def samples_of(page: Summary | KeptPage) -> list[Sample]:
    """The finished cells of one page, as the statistics read them."""
    if isinstance(page, KeptPage):
        return page.samples
    plan, reference = page.plan, page.report.reference
    reference_index = reference.nearest.index if reference is not None and reference.nearest else None
    samples = []
    for r in page.results:
        if r.status != "ok":
            continue
        accuracy = r.accuracy
        samples.append(Sample(
            page.row_name(r), r.spec.steps, plan.seed, plan.guidance, r.model_calls, r.seconds,
            accuracy.latent_rmse if accuracy is not None else None, r.stochastic, plan.prompt,
            accuracy.nearest_index if accuracy is not None else None, reference_index,
            accuracy.adheres_to_prompt if accuracy is not None else None))
    return samples


def failed_labels(page: Summary | KeptPage) -> list[str]:
    """The labels of the page's failed runs."""
    if isinstance(page, KeptPage):
        return list(page.entry["failed"])
    return [f"run {r.index + 1}: {r.spec.label}" for r in page.failed()]


def run_count(page: Summary | KeptPage) -> int:
    return page.entry["runs"] if isinstance(page, KeptPage) else len(page.results)


def _entry(name: str, page: Summary | KeptPage) -> dict[str, Any]:
    """The page's record in sweep.json: where it is, what it was, whether it finished, and its samples."""
    if isinstance(page, KeptPage):
        return page.entry
    plan = page.plan
    return {"name": name, "seed": plan.seed, "guidance": plan.guidance, "prompt": plan.prompt,
            "negative_prompt": plan.negative_prompt, "folder": f"{PAGES}/{name}", "runs": len(page.results),
            "failed": failed_labels(page), "complete": all(r.status in ("ok", "failed") for r in page.results),
            "identity": page_identity(plan), "samples": [dataclasses.asdict(s) for s in samples_of(page)]}


def _first_difference(where: str, before: Any, after: Any) -> tuple[str, Any, Any]:
    """The innermost place two JSON values first differ: ('runs[0].steps', 300, 200)."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                return _first_difference(f"{where}.{key}", before.get(key), after.get(key))
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for index, (old, new) in enumerate(zip(before, after, strict=True)):
            if old != new:
                return _first_difference(f"{where}[{index}]", old, new)
    return where, before, after


@dataclass(frozen=True)
class PartialPage:
    """A page an interrupted sweep left unfinished: the records of its runs that ended (ok or failed), and the
    folder holding its page folder."""

    name: str
    records: list[dict[str, Any]]
    source: Path


PAGE_NAME = "page.json"  # a finished page's entry, written into its folder as it finishes
IDENTITY_NAME = "identity.json"  # a page's plan, written into its folder as it starts


def write_page_identity(page_folder: Path, page: Plan) -> None:
    """identity.json: what the page's images depend on, so a killed sweep's runs can be checked on resume."""
    text = json.dumps(page_identity(page), ensure_ascii=False)
    write_atomically(page_folder / IDENTITY_NAME, lambda p: p.write_text(text, encoding="utf-8"))


def write_page_entry(page_folder: Path, name: str, summary: Summary) -> None:
    """page.json: the finished page's entry of sweep.json, so a killed sweep keeps it on resume."""
    text = json.dumps(_entry(name, summary), allow_nan=False, ensure_ascii=False)
    write_atomically(page_folder / PAGE_NAME, lambda p: p.write_text(text, encoding="utf-8"))


def _leftover_entries(target: Path) -> list[tuple[dict[str, Any], Path]]:
    """Page entries a killed run of this sweep left in its staging folders beside ``target`` (newest first):
    finished pages' page.json, and for unfinished ones their identity with their ended runs' lines."""
    from .folder import STAGING_PREFIX
    from .writer import RUN_LINES

    found = []
    leftovers = sorted(target.parent.glob(f"{STAGING_PREFIX}{target.name}-*"), key=lambda p: p.stat().st_mtime,
                       reverse=True)
    for staging in leftovers:
        for folder in sorted((staging / PAGES).glob("*")):
            if (folder / PAGE_NAME).exists():
                found.append((json.loads((folder / PAGE_NAME).read_text(encoding="utf-8")), staging))
            elif (folder / IDENTITY_NAME).exists() and (folder / RUN_LINES).exists():
                lines = (folder / RUN_LINES).read_text(encoding="utf-8").splitlines()
                records = [json.loads(line) for line in lines if line.strip().endswith("}")]
                found.append(({"name": folder.name, "complete": False, "runs_ended": records,
                               "identity": json.loads((folder / IDENTITY_NAME).read_text(encoding="utf-8"))},
                              staging))
    return found


def leftover_stagings(target: Path) -> list[Path]:
    """The staging folders killed runs of ``target`` left (a resumed sweep removes them once it is written)."""
    from .folder import STAGING_PREFIX

    return [p for p in target.parent.glob(f"{STAGING_PREFIX}{target.name}-*") if p.is_dir()]


def finished_pages(target: Path, plan: Plan) -> tuple[dict[str, KeptPage], dict[str, PartialPage]]:
    """What a resumed sweep keeps from the interrupted one in ``target``: its finished pages, and the runs that
    ended on its unfinished ones, where the page's plan equals the new run's page of that name. A page whose plan
    changed is refused in one line, naming what changed."""
    entries = [(entry, target) for entry in _previous_pages(target)] + _leftover_entries(target)
    if not entries:
        raise SchedcmpError(f"--resume: {target} holds no {SWEEP_NAME}, so there is no sweep to finish; run "
                            "without --resume")
    wanted = {page_name(page, plan): page for page in plan.pages()}
    kept, partial = {}, {}
    for entry, source in entries:
        page = wanted.get(entry.get("name"))
        if page is None or entry["name"] in kept:
            continue
        now = page_identity(page)
        changed = [key for key in sorted(set(now) | set(entry["identity"]))
                   if now.get(key) != entry["identity"].get(key)]
        if changed:
            where, before, after = _first_difference(changed[0], entry["identity"].get(changed[0]),
                                                     now.get(changed[0]))
            raise SchedcmpError(f"--resume: the plan changed since {target} was written ({where}: {before!r} -> "
                                f"{after!r}), so its finished pages would not match; run with --overwrite to start "
                                "over")
        folder = source / PAGES / entry["name"]
        if not folder.is_dir():
            continue
        if entry.get("complete"):
            kept[entry["name"]] = KeptPage(entry, source)
            partial.pop(entry["name"], None)
            continue
        if "runs_ended" in entry:
            ended = [run for run in entry["runs_ended"] if run["status"] in ("ok", "failed")]
        elif (folder / "results.json").exists():
            runs = json.loads((folder / "results.json").read_text(encoding="utf-8"))["runs"]
            ended = [run for run in runs if run["status"] in ("ok", "failed")]
        else:
            ended = []
        if ended and len(ended) > len(partial.get(entry["name"], PartialPage("", [], source)).records):
            partial[entry["name"]] = PartialPage(entry["name"], ended, source)
    return kept, partial


def _previous_pages(target: Path) -> list[dict[str, Any]]:
    """The page entries of the sweep.json in ``target`` (none when there is none)."""
    try:
        return json.loads((target / SWEEP_NAME).read_text(encoding="utf-8")).get("pages", [])
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        raise SchedcmpError(f"--resume: cannot read {target / SWEEP_NAME}: {err}") from None


def write_sweep(folder: Path, plan: Plan, pages: Sequence[tuple[str, Summary | KeptPage]],
                cells: Sequence[CellStatistics],
                front: Sequence[CellStatistics], recommendation: Recommendation,
                ranks: dict[str, Any] | None = None) -> list[str]:
    """sweep.json, statistics.csv and the page grids at the top of the folder; the names written (``ranks``: the
    load of each rank that ran it)."""
    document: dict[str, Any] = {
        "plan": plan.to_json(),
        "ranks": ranks,
        "complete": len(pages) == len(plan.pages()) and all(_entry(n, p)["complete"] for n, p in pages),
        "pages": [_entry(name, page) for name, page in pages],
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
    if write_overview(folder, plan, [name for name, _page in pages]):
        names.append(OVERVIEW_NAME)
    report = render_sweep_report(folder, document)
    write_atomically(folder / REPORT_NAME, lambda p: p.write_text(report, encoding="utf-8"))
    names.append(REPORT_NAME)
    for name, _summary in pages:
        grid = folder / PAGES / name / "grid.png"
        if grid.exists():
            write_atomically(folder / f"grid-{name}.png", lambda p, grid=grid: shutil.copyfile(grid, p))
            names.append(f"grid-{name}.png")
    return names


def write_overview(folder: Path, plan: Plan, names: Sequence[str]) -> bool:
    """overview.png: every cell of every page, a row per (sampler, schedule, steps) and a column per page, so what a
    seed, a scale or a prompt changes reads across a row; skipped (False) when it would pass the grid size cap."""
    from PIL import Image

    from .grid import MAX_GRID_MEGAPIXELS, GridCell, grid_megapixels, save_grid

    records = {}
    for name in names:
        results = folder / PAGES / name / "results.json"
        if results.exists():
            records[name] = json.loads(results.read_text(encoding="utf-8"))["runs"]
    if not records:
        return False
    rows = {f"{run['label']} · {run['steps']} steps" for runs in records.values() for run in runs}
    size = plan.size or (64, 64)
    first = next(iter(records.values()))[0].get("image")
    if first:
        with Image.open(folder / PAGES / next(iter(records)) / first) as image:
            size = image.size
    if grid_megapixels(len(rows), len(records), size) > MAX_GRID_MEGAPIXELS:
        return False
    cells = []
    for name, runs in records.items():
        for run in runs:
            image = None
            if run.get("image") and run["status"] == "ok":
                with Image.open(folder / PAGES / name / run["image"]) as opened:
                    image = opened.convert("RGB")
            accuracy = run.get("accuracy") or {}
            lines = [name, f"RMSE {accuracy['latent_rmse']:.3g}" if accuracy.get("latent_rmse") is not None
                     else run["status"]]
            cells.append(GridCell(f"{run['label']} · {run['steps']} steps", name, image, lines, run["status"] != "ok"))
    header = [plan.prompt if not plan.prompt_variants else f"{len(plan.prompt_variants)} prompts",
              f"{len(records)} pages · rows: sampler, schedule and steps · columns: pages"]
    write_atomically(folder / OVERVIEW_NAME, lambda p: save_grid(cells, header, "matrix", p))
    return True


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _explore_cells(folder: Path, pages: list[dict[str, Any]], axes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every cell of the sweep for the report's explorer: its row, steps, page axes, image (a path in the sweep
    folder) and RMSE, read from the pages' results.json."""
    cells = []
    for page in pages:
        results = folder / page["folder"] / "results.json"
        if not results.exists():
            continue
        for run in json.loads(results.read_text(encoding="utf-8"))["runs"]:
            rmse = (run.get("accuracy") or {}).get("latent_rmse")
            cells.append({"row": run["label"], "axes": {"steps": str(run["steps"]),
                                                        **{a["key"]: _shown(page[a["key"]]) for a in axes}},
                          "image": f"{page['folder']}/{run['image']}" if run.get("image") else None,
                          "caption": run["status"] if rmse is None else f"RMSE {float(rmse):.3g}"})
    return cells


def render_sweep_report(folder: Path, document: dict[str, Any]) -> str:
    """report.html of a sweep: the recommendation, the statistics with the Pareto front marked, a selector per
    swept axis showing that page's grid, and an explorer laying every cell out with the axis of one's choice as
    the columns and the others as filters (the sweep folder's own files: nothing from the network)."""
    import jinja2

    from .html import TEMPLATES, elide, ranks_table

    pages = document["pages"]
    axes = []
    for key, title in _AXES:
        values = list(dict.fromkeys(_shown(page[key]) for page in pages))
        if len(values) > 1:
            axes.append({"key": key, "name": title, "choices": values})
    cells = _explore_cells(folder, pages, axes)
    explore_axes = [{"key": "steps", "name": "steps",
                     "choices": list(dict.fromkeys(c["axes"]["steps"] for c in cells))}, *axes]
    page_data = [{"name": page["name"], "grid": f"grid-{page['name']}.png", "report": f"{page['folder']}/report.html",
                  "axes": {axis["key"]: _shown(page[axis["key"]]) for axis in axes}} for page in pages]
    front = {(c["scheduler"], c["steps"], c["guidance"]) for c in document["pareto_front"]}
    headers = ["scheduler", "steps", "guidance", "seeds", "calls", "median RMSE", "IQR", "within target", "median s"]
    rows = []
    for c in document["statistics"]:
        iqr = None if c["q1_error"] is None else c["q3_error"] - c["q1_error"]
        share = c["share_reaching_target"]
        values = [(c["scheduler"] + (" (stochastic)" if c["stochastic"] else ""), None),
                  (c["steps"], c["steps"]), (_shown(c["guidance"]), c["guidance"]), (c["seeds"], c["seeds"]),
                  (c["model_calls"], c["model_calls"]),
                  ("-" if c["median_error"] is None else f"{c['median_error']:.3g}", c["median_error"]),
                  ("-" if iqr is None else f"{iqr:.2g}", iqr), ("-" if share is None else f"{share:.0%}", share),
                  (f"{c['median_seconds']:.3f}", c["median_seconds"])]
        rows.append({"front": (c["scheduler"], c["steps"], c["guidance"]) in front,
                     "cells": [{"text": text, "sort": sort} for text, sort in values]})
    plan = document["plan"]
    fields = [("model", plan["model"]), ("pages", str(len(pages))), ("target error", _shown(plan["target_error"])),
              ("complete", "yes" if document["complete"] else "no: finish it with --resume")]
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                     undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return environment.get_template("sweep.html.j2").render(
        title=f"schedcmp sweep · {elide(plan['prompt'], 80)}", prompt=plan["prompt"], fields=fields,
        recommendation=document["recommendation"]["text"], axes=axes, pages=page_data,
        pages_json=_script_json(page_data), headers=headers, ranks=ranks_table(document.get("ranks")), rows=rows,
        explore_axes=explore_axes,
        row_choices=list(dict.fromkeys(c["row"] for c in cells)),
        cells_json=_script_json(cells))


def _script_json(value: Any) -> str:
    """JSON for an inline <script> block: no '<', so no text in it can close the block."""
    return json.dumps(value).replace("<", "\\u003c")


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"


def _modes(cell: CellStatistics) -> str:
    """'3 of 4': distinct data-set images the samples reached, of those their references reached."""
    if cell.modes is None:
        return "-"
    return f"{cell.modes}" if cell.reference_modes is None else f"{cell.modes} of {cell.reference_modes}"


def statistics_table(cells: Sequence[CellStatistics], target_error: float) -> Any:
    """The Rich table of the statistics: median error, IQR, share within the target, calls and time per cell."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Over seeds: latent RMSE to each seed's reference (target {target_error:g})",
                  title_justify="left")
    data_set = any(c.modes is not None for c in cells)
    extra = ("on ref. image", "fits prompt", "modes") if data_set else ()
    for name in ("scheduler", "steps", "guidance", "seeds", "calls", "median RMSE", "IQR", "within target", *extra,
                 "median s"):
        table.add_column(name, justify="left" if name == "scheduler" else "right")
    for c in cells:
        label = escape(c.row) + (" (stochastic)" if c.stochastic else "")
        median = "-" if c.median_error is None else f"{c.median_error:.3g}"
        iqr = "-" if c.iqr is None else f"{c.iqr:.2g}"
        share = "-" if c.share_reaching is None else f"{c.share_reaching:.0%}"
        figures = [_percent(c.share_on_reference), _percent(c.prompt_adherence), _modes(c)] if data_set else []
        table.add_row(label, str(c.steps), f"{c.guidance:g}", str(c.seeds), str(c.model_calls), median, iqr, share,
                      *figures, f"{c.median_seconds:.3f}")
    return table
