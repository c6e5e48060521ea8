"""Everything a run leaves behind: images, grid.png, timings.csv, results.json, the accuracy plot, report.html,
and the Rich tables."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import PngImagePlugin
from rich.table import Table

from .. import __version__
from ..accuracy import CostToReach, Measured, cost_to_reach, error_series
from ..core.configuration import to_jsonable
from ..engine import EngineReport, ReferenceResult, RunResult
from ..errors import OutputExistsError
from ..plan import Plan
from .grid import GridCell, save_grid
from .html import write_html_report
from .plot import save_error_plot
from .wording import duration

PLOT_NAME = "error_vs_calls.png"
REFERENCE_NAME = "reference.png"
RESULT_NAMES = ("grid.png", "timings.csv", "results.json", "images", REFERENCE_NAME, PLOT_NAME, "report.html")
CSV_COLUMNS = ("index", "label", "scheduler", "class", "steps", "model_calls", "seconds", "seconds_per_call",
               "scheduler_seconds", "mode", "status", "error", "latent_rmse", "psnr_db", "ssim", "stochastic",
               "nearest_dataset_rmse", "nearest_caption")


@dataclass(frozen=True)
class OutputFiles:
    """Paths of what was written."""

    folder: Path
    grid: Path
    timings: Path
    results: Path
    images: list[Path]
    html: Path
    plot: Path | None = None
    document: dict[str, Any] = field(default_factory=dict)  # what results.json holds


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
        "accuracy": result.accuracy.to_json() if result.accuracy else None,
        "scheduler_config": {
            k: to_jsonable(v) for k, v in result.scheduler.config.items() if k != "_use_default_values"
        },
    }


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float spelled as a string ('inf', '-inf', 'nan'), so it is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def row_name(plan: Plan, result: RunResult) -> str:
    """The grid row (and plot line) a run belongs to: its scheduler in a matrix plan, its label in a list."""
    return result.spec.scheduler if plan.layout == "matrix" else result.spec.label


def measured_points(plan: Plan, report: EngineReport) -> list[Measured]:
    """Every run with an accuracy, as (row, steps, model calls, latent RMSE)."""
    return [
        Measured(row_name(plan, r), r.spec.steps, r.model_calls, r.accuracy.latent_rmse, r.accuracy.stochastic)
        for r in report.results
        if r.accuracy is not None
    ]


def _reference_record(reference: ReferenceResult, image_path: Path | None, folder: Path) -> dict[str, Any]:
    nearest_rmse, caption = reference.nearest or (None, None)
    return {
        **reference.spec.to_json(),
        "status": reference.status,
        "error": reference.error,
        "model_calls": reference.model_calls,
        "seconds": round(reference.seconds, 6),
        "image": image_path.relative_to(folder).as_posix() if image_path else None,
        "nearest_dataset_rmse": nearest_rmse,
        "nearest_caption": caption,
    }


def accuracy_caption(result: RunResult) -> str | None:
    """'RMSE 0.0123 · 38.1 dB' (or 'identical to the reference'), marked when the sampler is stochastic."""
    accuracy = result.accuracy
    if accuracy is None:
        return None
    text = ("identical to the reference" if math.isinf(accuracy.psnr)
            else f"RMSE {accuracy.latent_rmse:.3g} · {accuracy.psnr:.1f} dB")
    return text + (" · stochastic" if accuracy.stochastic else "")


def cell_caption(result: RunResult) -> list[str]:
    """Caption lines under a grid cell: name, then steps / calls / seconds or what went wrong."""
    spec = result.spec
    if result.status == "ok":
        lines = [spec.label, f"{spec.steps} steps · {result.model_calls} calls · {duration(result.seconds)}"]
        accuracy = accuracy_caption(result)
        return [*lines, accuracy] if accuracy else lines
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
        record = finite_json(_run_record(result, report.mode, path, folder))
        if path is not None:
            info = PngImagePlugin.PngInfo()
            info.add_text("parameters", image_parameters(plan, result, size))
            info.add_text("schedcmp", json.dumps(record, allow_nan=False))
            result.image.save(path, format="PNG", pnginfo=info)
            images.append(path)
        records.append(record)

    header = [
        f'"{plan.prompt}"' + (f'  (negative: "{plan.negative_prompt}")' if plan.negative_prompt else ""),
        f"seed {plan.seed} · guidance {plan.guidance:g} · {plan.model} · {size[0]}x{size[1]} · "
        f"{report.mode} on {environment['device']} {environment['dtype']}",
    ]
    cells = [
        GridCell(
            row=row_name(plan, r),
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
                *_accuracy_cells(record["accuracy"]),
            ])

    reference = None
    if report.reference is not None:
        path = None
        if report.reference.image is not None:
            path = folder / REFERENCE_NAME
            report.reference.image.save(path, format="PNG")
        reference = _reference_record(report.reference, path, folder)

    points = measured_points(plan, report)
    plot = None
    if points:
        plot = save_error_plot(
            error_series(points), folder / PLOT_NAME, target=plan.target_error,
            title=f'"{plan.prompt}" · seed {plan.seed} · guidance {plan.guidance:g} · against {plan.reference.label}',
        )
    costs = cost_to_reach(points, plan.target_error) if points else []

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
        "reference": reference,
        "target_error": plan.target_error,
        "cost_to_reach": {"target_error": plan.target_error, "rows": [c.to_json() for c in costs]} if costs else None,
        "plot": PLOT_NAME if plot else None,
        "runs": records,
    }
    document = finite_json(document)
    results.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    html = write_html_report(folder, document)
    return OutputFiles(folder, grid, timings, results, images, html, plot, document)


def _accuracy_cells(accuracy: dict[str, Any] | None) -> list[str]:
    """The CSV's accuracy columns for one run (empty when it has none; PSNR 'inf' for identical images)."""
    if accuracy is None:
        return [""] * 6
    psnr = "inf" if accuracy["psnr"] is None else f"{accuracy['psnr']:.4f}"
    nearest = accuracy["nearest_dataset_rmse"]
    return [f"{accuracy['latent_rmse']:.6g}", psnr, f"{accuracy['ssim']:.6f}", str(accuracy["stochastic"]).lower(),
            "" if nearest is None else f"{nearest:.6g}", accuracy["nearest_caption"] or ""]


def timing_table(report: EngineReport) -> Table:
    """The per-run table printed on stdout, with accuracy columns when the runs were measured."""
    attributed = report.mode == "batched"
    title = "Timings (batched: each run's attributed share of shared model calls)" if attributed else (
        "Timings (sequential: each run timed alone)")
    measured = any(r.accuracy for r in report.results)
    if measured:
        title += f"; accuracy against {report.reference.spec.label} from the same seed"
    table = Table(title=title, title_justify="left")
    columns = [("#", "right"), ("run", "left"), ("class", "left"), ("steps", "right"), ("model calls", "right"),
               ("seconds", "right"), ("ms / call", "right"), ("scheduler ms", "right")]
    if measured:
        columns += [("latent RMSE", "right"), ("PSNR dB", "right"), ("SSIM", "right")]
    for name, justify in [*columns, ("status", "left")]:
        table.add_column(name, justify=justify)
    for r in report.results:
        status = r.status if r.status != "failed" else f"[red]failed[/red]: {r.error}"
        cells = [str(r.index + 1), r.spec.label, r.spec.preset.cls.__name__, str(r.spec.steps), str(r.model_calls),
                 f"{r.seconds:.3f}", f"{r.seconds_per_call * 1e3:.2f}", f"{r.scheduler_seconds * 1e3:.2f}"]
        if measured:
            cells += _accuracy_columns(r)
        table.add_row(*cells, status)
    return table


def _accuracy_columns(result: RunResult) -> list[str]:
    accuracy = result.accuracy
    if accuracy is None:
        return ["", "", ""]
    mark = " (stochastic)" if accuracy.stochastic else ""
    psnr = "∞" if math.isinf(accuracy.psnr) else f"{accuracy.psnr:.1f}"
    return [f"{accuracy.latent_rmse:.3g}{mark}", psnr, f"{accuracy.ssim:.3f}"]


def cost_table(plan: Plan, report: EngineReport) -> Table | None:
    """Rows sorted by the model calls they needed to reach the plan's target error (None without accuracy)."""
    points = measured_points(plan, report)
    if not points:
        return None
    table = Table(title=f"Cost to reach latent RMSE <= {plan.target_error:g} against {plan.reference.label}",
                  title_justify="left")
    for name, justify in (("scheduler", "left"), ("model calls", "right"), ("steps", "right"),
                          ("best RMSE", "right"), ("at calls", "right")):
        table.add_column(name, justify=justify)
    for row in cost_to_reach(points, plan.target_error):
        table.add_row(*_cost_cells(row))
    return table


def _cost_cells(row: CostToReach) -> list[str]:
    name = row.row + (" (stochastic)" if row.stochastic else "")
    if row.model_calls is None:
        return [name, "not reached", "", f"{row.best_error:.3g}", str(row.best_calls)]
    return [name, str(row.model_calls), str(row.steps), f"{row.best_error:.3g}", str(row.best_calls)]
