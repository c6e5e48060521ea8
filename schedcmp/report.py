"""Everything a run leaves behind: images, grid.png, timings.csv, results.json, and the Rich timing table."""

from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import PngImagePlugin
from rich.table import Table

from . import __version__
from .core.configuration import to_jsonable
from .engine import EngineReport, RunResult
from .errors import OutputExistsError
from .grid import GridCell, save_grid
from .plan import Plan

RESULT_NAMES = ("grid.png", "timings.csv", "results.json", "images")
CSV_COLUMNS = ("index", "label", "scheduler", "class", "steps", "model_calls", "seconds", "seconds_per_call",
               "scheduler_seconds", "mode", "status", "error")


@dataclass(frozen=True)
class OutputFiles:
    """Paths of what was written."""

    folder: Path
    grid: Path
    timings: Path
    results: Path
    images: list[Path]


def prepare_output_folder(folder: Path, overwrite: bool) -> None:
    """Refuse a folder that already holds results unless ``overwrite``; then clear only our own files."""
    existing = [name for name in RESULT_NAMES if (folder / name).exists()]
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"--out {folder} is a file; choose a folder")
    if existing and not overwrite:
        raise OutputExistsError(
            f"{folder} already holds results ({', '.join(existing)}); pass --overwrite to replace them or choose "
            "another --out"
        )
    for name in existing:
        path = folder / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (folder / "images").mkdir(parents=True, exist_ok=True)


def slug(text: str) -> str:
    """A file-name-safe form of a scheduler name: 'DPM++ 2M Karras' -> 'dpmpp-2m-karras'."""
    text = text.lower().replace("++", "pp").replace("+", "p")
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "run"


def image_parameters(plan: Plan, result: RunResult, size: tuple[int, int]) -> str:
    """The A1111-style parameters text stored in each PNG."""
    spec = result.spec
    options = {**spec.preset.options, **spec.config_options, **spec.step_options}
    fields = [
        f"Steps: {spec.steps}",
        f"Sampler: {spec.scheduler}",
        f"Scheduler class: {spec.preset.cls.__name__}",
        f"CFG scale: {plan.guidance:g}",
        f"Seed: {plan.seed}",
        f"Size: {size[0]}x{size[1]}",
        f"Model: {plan.model}",
        f"Model calls: {result.model_calls}",
    ]
    fields += [f"{key}: {value}" for key, value in options.items()]
    lines = [plan.prompt]
    if plan.negative_prompt:
        lines.append(f"Negative prompt: {plan.negative_prompt}")
    lines.append(", ".join(fields) + f", schedcmp: {__version__}")
    return "\n".join(lines)


def _run_record(result: RunResult, mode: str, image_path: Path | None, folder: Path) -> dict[str, Any]:
    return {
        **result.spec.to_json(),
        "index": result.index + 1,
        "status": result.status,
        "error": result.error,
        "model_calls": result.model_calls,
        "seconds": round(result.seconds, 6),
        "seconds_per_call": round(result.seconds_per_call, 6),
        "scheduler_seconds": round(result.scheduler_seconds, 6),
        "timing": "attributed share of batched calls" if mode == "batched" else "wall time of the run alone",
        "image": image_path.relative_to(folder).as_posix() if image_path else None,
        "scheduler_config": {
            k: to_jsonable(v) for k, v in result.scheduler.config.items() if k != "_use_default_values"
        },
    }


def cell_caption(result: RunResult) -> list[str]:
    """Caption lines under a grid cell: name, then steps / calls / seconds or what went wrong."""
    spec = result.spec
    if result.status == "ok":
        return [spec.label, f"{spec.steps} steps · {result.model_calls} calls · {result.seconds:.2f} s"]
    reason = result.error or result.status
    return [spec.label, f"{spec.steps} steps · {result.status}", reason]


def write_outputs(
    folder: Path, plan: Plan, report: EngineReport, environment: dict[str, Any], size: tuple[int, int]
) -> OutputFiles:
    """Write every image, the grid, timings.csv and results.json for whatever finished."""
    images: list[Path] = []
    records = []
    for result in report.results:
        path = None
        if result.image is not None:
            path = folder / "images" / f"{result.index + 1:03d}-{slug(result.spec.scheduler)}-{result.spec.steps}.png"
            info = PngImagePlugin.PngInfo()
            info.add_text("parameters", image_parameters(plan, result, size))
            info.add_text("schedcmp", json.dumps(_run_record(result, report.mode, path, folder)))
            result.image.save(path, format="PNG", pnginfo=info)
            images.append(path)
        records.append(_run_record(result, report.mode, path, folder))

    header = [
        f'"{plan.prompt}"' + (f'  (negative: "{plan.negative_prompt}")' if plan.negative_prompt else ""),
        f"seed {plan.seed} · guidance {plan.guidance:g} · {plan.model} · {size[0]}x{size[1]} · "
        f"{report.mode} on {environment['device']} {environment['dtype']}",
    ]
    cells = [
        GridCell(
            row=r.spec.scheduler if plan.layout == "matrix" else r.spec.label,
            column=f"{r.spec.steps} steps",
            image=r.image,
            lines=cell_caption(r),
            failed=r.status != "ok",
        )
        for r in report.results
    ]
    grid = save_grid(cells, header, plan.layout, folder / "grid.png")

    timings = folder / "timings.csv"
    with timings.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for record in records:
            writer.writerow([
                record["index"], record["label"], record["scheduler"], record["class"], record["steps"],
                record["model_calls"], f"{record['seconds']:.6f}", f"{record['seconds_per_call']:.6f}",
                f"{record['scheduler_seconds']:.6f}", report.mode, record["status"], record["error"] or "",
            ])

    results = folder / "results.json"
    document = {
        "schedcmp_version": __version__,
        "plan": plan.to_json(),
        "environment": environment,
        "mode": report.mode,
        "max_batch": report.max_batch,
        "max_batch_reason": report.max_batch_reason,
        "wall_seconds": round(report.wall_seconds, 6),
        "interrupted": report.interrupted,
        "warnings": report.warnings,
        "runs": records,
    }
    results.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return OutputFiles(folder, grid, timings, results, images)


def timing_table(report: EngineReport) -> Table:
    """The per-run table printed on stdout."""
    attributed = report.mode == "batched"
    title = "Timings (batched: each run's attributed share of shared model calls)" if attributed else (
        "Timings (sequential: each run timed alone)")
    table = Table(title=title, title_justify="left")
    for name, justify in (("#", "right"), ("run", "left"), ("class", "left"), ("steps", "right"),
                          ("model calls", "right"), ("seconds", "right"), ("ms / call", "right"),
                          ("scheduler ms", "right"), ("status", "left")):
        table.add_column(name, justify=justify)
    for r in report.results:
        status = r.status if r.status != "failed" else f"[red]failed[/red]: {r.error}"
        table.add_row(str(r.index + 1), r.spec.label, r.spec.preset.cls.__name__, str(r.spec.steps),
                      str(r.model_calls), f"{r.seconds:.3f}", f"{r.seconds_per_call * 1e3:.2f}",
                      f"{r.scheduler_seconds * 1e3:.2f}", status)
    return table
