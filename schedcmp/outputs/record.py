"""The machine-readable record of a comparison: each run's record (also stored in its PNG's text chunks with the
A1111-style parameters), results.json and timings.csv. Everything is strict JSON: non-finite numbers are strings."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.configuration import to_jsonable
from ..engine import ReferenceResult, RunResult
from ..plan import Plan
from .folder import write_atomically
from .summary import Summary

IMAGES = "images"
RESULTS_NAME = "results.json"
TIMINGS_NAME = "timings.csv"
REFERENCE_NAME = "reference.png"
PLOT_NAME = "error_vs_calls.png"
CSV_COLUMNS = ("index", "label", "scheduler", "class", "steps", "model_calls", "seconds", "seconds_per_call",
               "scheduler_seconds", "mode", "rank", "device", "status", "error", "latent_rmse", "psnr_db", "ssim",
               "stochastic", "nearest_dataset_rmse", "nearest_caption")


def slug(text: str) -> str:
    """A file-name-safe form of a scheduler name: 'DPM++ 2M Karras' -> 'dpmpp-2m-karras' (at most 60 chars)."""
    text = text.lower().replace("++", "pp").replace("+", "p")
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:60].strip("-") or "run"


def image_name(result: RunResult) -> str:
    """The run's image path inside the output folder: images/NNN-<scheduler>-<steps>.png."""
    return f"{IMAGES}/{result.index + 1:03d}-{slug(result.spec.row_label)}-{result.spec.steps}.png"


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float spelled as a string ('inf', '-inf', 'nan'), so it is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def run_record(result: RunResult, mode: str) -> dict[str, Any]:
    """Everything about one run: its spec, status, cost, timing, accuracy and effective scheduler config."""
    return finite_json({
        **result.spec.to_json(),
        "index": result.index + 1,
        "status": result.status,
        "error": result.error,
        "model_calls": result.model_calls,
        "seconds": round(result.seconds, 6),
        "seconds_per_call": round(result.seconds_per_call, 6),
        "scheduler_seconds": round(result.scheduler_seconds, 6),
        "timing": "attributed share of batched calls" if mode == "batched" else "wall time of the run alone",
        "rank": result.rank,
        "device": result.device,
        "image": image_name(result) if result.image is not None else None,
        "accuracy": result.accuracy.to_json() if result.accuracy else None,
        "scheduler_config": {
            k: to_jsonable(v) for k, v in result.scheduler.config.items() if k != "_use_default_values"
        },
    })


def model_fields(provenance: dict[str, Any] | None) -> list[str]:
    """A1111's fields naming the weights: ``Model hash`` (a checkpoint file's short sha256), ``VAE hash`` and
    ``VAE`` (a swapped VAE's file)."""
    provenance = provenance or {}
    fields = [f"Model hash: {provenance['hash']}"] if "hash" in provenance else []
    vae = provenance.get("vae") or {}
    if "hash" in vae:
        fields.append(f"VAE hash: {vae['hash']}")
    if vae:
        fields.append(f"VAE: {Path(vae.get('file') or vae.get('folder')).name}")
    return fields


def image_parameters(plan: Plan, result: RunResult, size: tuple[int, int], weights: Sequence[str] = ()) -> str:
    """The A1111-style parameters text stored in each PNG (``weights``: :func:`model_fields`)."""
    spec = result.spec
    options = {**spec.preset.options, **spec.config_options, **spec.step_options}
    fields = [
        f"Steps: {spec.steps}",
        f"Sampler: {spec.scheduler}",
        *([f"Schedule type: {spec.schedule}"] if spec.schedule else []),
        f"Scheduler class: {spec.preset.cls.__name__}",
        f"CFG scale: {plan.guidance:g}",
        f"Seed: {plan.seed}",
        f"Size: {size[0]}x{size[1]}",
        *weights,
        f"Model: {plan.model}",
        f"Model calls: {result.model_calls}",
    ]
    fields += [f"{key}: {value}" for key, value in options.items()]
    lines = [plan.prompt]
    if plan.negative_prompt:
        lines.append(f"Negative prompt: {plan.negative_prompt}")
    lines.append(", ".join(fields) + f", schedcmp: {__version__}")
    return "\n".join(lines)


def save_run_image(folder: Path, plan: Plan, result: RunResult, size: tuple[int, int],
                   record: dict[str, Any], weights: Sequence[str] = ()) -> Path:
    """Write the run's PNG with its parameters and its record in text chunks."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", image_parameters(plan, result, size, weights))
    info.add_text("schedcmp", json.dumps(record, allow_nan=False), zip=True)
    return write_atomically(folder / record["image"], lambda p: result.image.save(p, format="PNG", pnginfo=info))


def reference_record(reference: ReferenceResult, image: str | None) -> dict[str, Any]:
    """What every run was measured against, how it went and what it cost."""
    nearest_rmse, caption, index = reference.nearest or (None, None, None)
    return finite_json({
        **reference.spec.to_json(),
        "status": reference.status,
        "error": reference.error,
        "model_calls": reference.model_calls,
        "seconds": round(reference.seconds, 6),
        "image": image,
        "nearest_dataset_rmse": nearest_rmse,
        "nearest_caption": caption,
        "nearest_index": index,
    })


def document(summary: Summary, records: list[dict[str, Any]], reference_image: str | None,
             plot: str | None) -> dict[str, Any]:
    """The whole record of the comparison (what results.json holds); each field stored once."""
    report = summary.report
    reference = report.reference
    return finite_json({
        "schedcmp_version": __version__,
        "plan": summary.plan.to_json(),
        "environment": summary.environment,
        "size": list(summary.size),
        "mode": report.mode,
        "max_batch": report.max_batch,
        "max_batch_reason": report.max_batch_reason,
        "wall_seconds": round(report.wall_seconds, 6),
        "interrupted": report.interrupted,
        **({"ranks": report.ranks} if report.ranks else {}),
        "warnings": report.warnings,
        "reference": reference_record(reference, reference_image) if reference is not None else None,
        "cost_to_reach": [c.to_json() for c in summary.costs] or None,
        "plot": plot,
        "runs": records,
    })


def results_text(record: dict[str, Any]) -> str:
    """What results.json holds: the record as indented strict JSON."""
    return json.dumps(record, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def write_results(folder: Path, record: dict[str, Any]) -> Path:
    """results.json, written whole or not at all."""
    text = results_text(record)
    return write_atomically(folder / RESULTS_NAME, lambda p: p.write_text(text, encoding="utf-8"))


def write_timings(folder: Path, records: list[dict[str, Any]], mode: str) -> Path:
    """timings.csv: one row per run, accuracy columns empty where a run has none."""
    def write(path: Path) -> None:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            for record in records:
                writer.writerow([
                    record["index"], record["label"], record["scheduler"], record["class"], record["steps"],
                    record["model_calls"], _csv_number(record["seconds"], ".6f"),
                    _csv_number(record["seconds_per_call"], ".6f"), _csv_number(record["scheduler_seconds"], ".6f"),
                    mode, record.get("rank", 0), record.get("device", ""), record["status"], record["error"] or "",
                    *_accuracy_cells(record["accuracy"]),
                ])

    return write_atomically(folder / TIMINGS_NAME, write)


def _csv_number(value: Any, spec: str) -> str:
    """A number in the CSV: formatted, or as recorded when it is a non-finite string ('inf'), or empty."""
    if value is None:
        return ""
    return value if isinstance(value, str) else f"{value:{spec}}"


def _accuracy_cells(accuracy: dict[str, Any] | None) -> list[str]:
    """The CSV's accuracy columns for one run (empty when it has none; PSNR 'inf' for identical images)."""
    if accuracy is None:
        return [""] * 6
    psnr = "inf" if accuracy["psnr"] is None else _csv_number(accuracy["psnr"], ".4f")
    return [_csv_number(accuracy["latent_rmse"], ".6g"), psnr, _csv_number(accuracy["ssim"], ".6f"),
            str(accuracy["stochastic"]).lower(), _csv_number(accuracy["nearest_dataset_rmse"], ".6g"),
            accuracy["nearest_caption"] or ""]
