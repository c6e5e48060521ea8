"""report.html: one self-contained page for a run, rendered with jinja2 from the results.json record (images
inlined as data URIs, CSS and JS inline, no network). This module prepares the values; templates/ lays them out."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

from .folder import write_atomically
from .wording import duration, number, psnr_db

TEMPLATES = Path(__file__).parent / "templates"
CELL_MIN = 192  # small images are enlarged by a whole factor to at least this many CSS pixels, pixelated
CELL_MAX = 256  # large images are shown at most this wide in the grid; click to see them bigger
PROMPT_SHOWN = 400  # characters of a long prompt shown before "…" (the whole prompt unfolds below)
LABEL_SHOWN = 120  # characters of a label in a caption or table cell


def elide(text: Any, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters with '…' when longer."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _png_data_uri(path: Path) -> str | None:
    if not path.is_file() or path.is_symlink():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _image_box(path: Path) -> tuple[int, int, bool]:
    """CSS width and height to show an image at, and whether it is enlarged pixel for pixel."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    short = min(width, height)
    factor = -(-CELL_MIN // short) if short < CELL_MIN else min(1.0, CELL_MAX / width)
    return round(width * factor), round(height * factor), short < CELL_MIN


def _as_number(value: Any) -> float | None:
    """A record's number, with the strings 'inf' / '-inf' / 'nan' that strict JSON uses read back as floats."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _num(value: Any, spec: str = "", *, scale: float = 1.0, text: str | None = None) -> dict[str, Any]:
    """A numeric table cell: shown formatted, sorted on the raw value (empty when missing)."""
    raw = _as_number(value)
    scaled = None if raw is None else raw * scale
    shown = text if text is not None else number(scaled, spec or "g")  # 'g': counts read as 20, not 20.0
    sort = "" if scaled is None or math.isnan(scaled) else repr(scaled).replace("inf", "Infinity")
    return {"cls": "num", "sort": sort, "text": shown, "title": None}


def _text(value: Any, cls: str | None = None, limit: int = LABEL_SHOWN) -> dict[str, Any]:
    return {"cls": cls, "sort": None, "text": elide(value, limit), "title": None}


def _figure(run: dict[str, Any], folder: Path) -> dict[str, Any]:
    """One grid cell: the zoomable image (or the error) and its caption lines."""
    name = f"{elide(run.get('label'), LABEL_SHOWN)} · {run.get('steps')} steps"
    uri = _png_data_uri(folder / run["image"]) if run.get("image") else None
    figure: dict[str, Any] = {"name": name, "uri": None, "lines": [name]}
    if run.get("status") == "ok" and uri:
        width, height, pixel = _image_box(folder / run["image"])
        figure.update(uri=uri, width=width, height=height, pixel=pixel)
        figure["lines"] += [f"{run.get('model_calls')} calls · {_duration(run.get('seconds'))}",
                            *([_accuracy_caption(run["accuracy"])] if run.get("accuracy") else [])]
    else:
        problem = run.get("error") or ("image missing: " + str(run.get("image")) if run.get("image") else "no image")
        figure.update(status=str(run.get("status")), problem=elide(problem, 400))
    return figure


def _duration(seconds: Any) -> str:
    value = _as_number(seconds)
    return "?" if value is None else duration(value)


def _accuracy_caption(accuracy: dict[str, Any]) -> str:
    psnr = accuracy.get("psnr")
    psnr_text = "PSNR ∞ (identical)" if psnr is None else f"PSNR {psnr_db(_as_number(psnr))} dB"
    return f"RMSE {number(_as_number(accuracy.get('latent_rmse')))} · {psnr_text}"


def _grid(document: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Rows = schedulers and columns = step counts for a matrix plan; the runs in reading order otherwise."""
    runs = document.get("runs", [])
    where = {(run.get("scheduler"), run.get("steps")): run for run in runs}
    if (document.get("plan") or {}).get("layout") != "matrix" or len(where) < len(runs):
        return {"matrix": False, "cells": [_figure(run, folder) for run in runs]}
    rows = list(dict.fromkeys(run.get("scheduler") for run in runs))
    columns = list(dict.fromkeys(run.get("steps") for run in runs))
    return {
        "matrix": True,
        "columns": [f"{steps} steps" for steps in columns],
        "rows": [{"title": elide(next(run.get("label") for run in runs if run.get("scheduler") == row), LABEL_SHOWN),
                  "cells": [_figure(where[row, c], folder) if (row, c) in where else None for c in columns]}
                 for row in rows],
    }


def ranks_table(ranks: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ranks' load when more than one rank ran the plan: a row per rank and the speed-up line."""
    if not ranks or ranks.get("world_size", 1) < 2:
        return None
    headers = ["rank", "host", "device", "cells", "model calls", "references", "busy s", "status"]
    rows = [{"lost": load["status"] in ("lost", "failed"),
             "cells": [load["rank"], load["host"], load["device"], load["cells"], load["model_calls"],
                       load["references"], f"{load['busy_seconds']:.2f}",
                       load["status"] + (f": {load['error']}" if load.get("error") else "")]}
            for load in ranks["ranks"]]
    gain = ranks.get("speedup_over_one_rank")
    summary = (f"{ranks['world_size']} ranks, {ranks['wall_seconds']:.2f} s of wall time"
               + ("" if gain is None else f"; {gain:.2f}x the speed of one rank (their busy seconds summed over "
                                          "the wall time)"))
    return {"headers": headers, "rows": rows, "summary": summary}


def _runs_table(runs: list[dict[str, Any]], by_rank: bool = False) -> dict[str, Any]:
    """Every run, one row each; accuracy columns only when some run carries accuracy, the rank that ran it when
    several did."""
    with_accuracy = any(run.get("accuracy") for run in runs)
    headers = ["#", "label", "class", "steps", "model calls", "seconds", "ms/call", "scheduler ms", "status"]
    if by_rank:
        headers.insert(5, "rank")
    if with_accuracy:
        headers += ["latent RMSE", "PSNR dB", "SSIM", "stochastic", "nearest data-set RMSE", "nearest caption"]
    rows = []
    for run in runs:
        ok = run.get("status") == "ok"
        status = str(run.get("status", "")) + (f": {run['error']}" if run.get("error") else "")
        label = str(run.get("label", ""))
        if run.get("scheduler") not in (None, label):
            label += f" ({run['scheduler']})"
        cells = [_num(run.get("index")), _text(label), _text(run.get("class", "")), _num(run.get("steps")),
                 _num(run.get("model_calls")), _num(run.get("seconds"), ".3f"),
                 _num(run.get("seconds_per_call") if ok else None, ".2f", scale=1000),
                 _num(run.get("scheduler_seconds") if ok else None, ".2f", scale=1000), _text(status, "wrap", 400)]
        if by_rank:
            cells.insert(5, _num(run.get("rank")))
        if with_accuracy:
            acc = run.get("accuracy") or {}
            if acc and acc.get("psnr") is None:  # null PSNR means the images are identical
                psnr = {"cls": "num", "sort": "Infinity", "text": "∞", "title": "identical images"}
            else:
                psnr = _num(acc.get("psnr"), ".2f")
            stochastic = "" if "stochastic" not in acc else ("yes" if acc["stochastic"] else "no")
            cells += [_num(acc.get("latent_rmse"), ".3g"), psnr, _num(acc.get("ssim"), ".4f"), _text(stochastic),
                      _num(acc.get("nearest_dataset_rmse"), ".3g"), _text(acc.get("nearest_caption") or "", "wrap")]
        rows.append({"failed": not ok, "cells": cells})
    return {"headers": headers, "rows": rows}


def _fields(document: dict[str, Any]) -> list[tuple[str, str]]:
    """Sampling settings and environment for the header."""
    plan, env = document.get("plan") or {}, document.get("environment") or {}
    versions = env.get("versions") or {}
    size = plan.get("size") or document.get("size")
    runs = document.get("runs", [])
    ok = sum(run.get("status") == "ok" for run in runs)
    fields = [
        ("negative prompt", elide(plan.get("negative_prompt") or "(none)", PROMPT_SHOWN)),
        ("seed", plan.get("seed")),
        ("guidance", plan.get("guidance")),
        ("model", plan.get("model", env.get("model"))),
        ("size", f"{size[0]}x{size[1]}" if size else "?"),
        ("mode", document.get("mode", plan.get("mode"))),
        ("device / dtype", f"{env.get('device', '?')} / {env.get('dtype', '?')}"),
        ("versions", f"schedcmp {document.get('schedcmp_version', '?')} · torch {versions.get('torch', '?')}"
                     + (f" · python {versions['python']}" if versions.get("python") else "")),
        ("wall time",
         _duration(document.get("wall_seconds")) + (" (interrupted)" if document.get("interrupted") else "")),
        ("runs", f"{ok} ok of {len(runs)}"),
    ]
    reference = document.get("reference")
    if reference:
        fields.append(("accuracy reference", reference.get("label") or reference.get("kind")))
    return [(name, str(value)) for name, value in fields]


def _reference(reference: dict[str, Any] | None, folder: Path) -> dict[str, Any] | None:
    """The reference image every run is measured against, zoomable like the grid's cells."""
    uri = _png_data_uri(folder / reference["image"]) if reference and reference.get("image") else None
    if uri is None:
        return None
    width, height, pixel = _image_box(folder / reference["image"])
    return {"uri": uri, "width": width, "height": height, "pixel": pixel,
            "caption": f"reference: {reference.get('label') or reference.get('kind')}"}


def _cost(document: dict[str, Any]) -> dict[str, Any] | None:
    rows = document.get("cost_to_reach")
    if not rows:
        return None
    return {
        "target": number(_as_number((document.get("plan") or {}).get("target_error")), "g"),
        "headers": ["scheduler", "model calls", "steps", "best RMSE", "at calls"],
        "rows": [{"failed": False, "cells": [
            _text(str(row.get("scheduler", "")) + (" (stochastic)" if row.get("stochastic") else "")),
            _num(row.get("model_calls"), text=None if row.get("model_calls") is not None else "not reached"),
            _num(row.get("steps"), text=None if row.get("steps") is not None else "not reached"),
            _num(row.get("best_error"), ".3g"), _num(row.get("best_model_calls"))]} for row in rows],
    }


def _details(document: dict[str, Any]) -> list[tuple[str, str]]:
    """Every run's effective scheduler config, then the plan, the environment and the reference, as JSON."""
    def shown(value: Any) -> str:
        return json.dumps(value, indent=2, ensure_ascii=False, default=str)

    blocks = [(f"#{run.get('index')} {elide(run.get('label'), LABEL_SHOWN)} · {run.get('steps')} steps · "
               f"{run.get('class')}", shown(run.get("scheduler_config"))) for run in document.get("runs", [])]
    blocks += [("plan", shown(document.get("plan"))), ("environment", shown(document.get("environment")))]
    if document.get("reference"):
        blocks.append(("accuracy reference", shown(document["reference"])))
    return blocks


def render_report(folder: Path, document: dict[str, Any]) -> str:
    """The page for the run described by ``document`` (the results.json dict), its files under ``folder``."""
    import jinja2

    folder = Path(folder)
    runs = document.get("runs", [])
    prompt = str((document.get("plan") or {}).get("prompt", ""))
    note = "Click a column header to sort."
    if any(run.get("accuracy") for run in runs):
        reference = (document.get("reference") or {}).get("label") or "the reference"
        note += f" Accuracy is measured against {reference}; PSNR ∞ means identical images."
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                     undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return environment.get_template("report.html.j2").render(
        title=f"schedcmp · {elide(prompt, 80)}",
        prompt={"full": prompt, "short": elide(prompt, PROMPT_SHOWN), "clipped": len(prompt) > PROMPT_SHOWN},
        fields=_fields(document),
        warnings=[elide(w, 1000) for w in document.get("warnings") or []],
        reference=_reference(document.get("reference"), folder),
        grid=_grid(document, folder),
        grid_png=_png_data_uri(folder / "grid.png"),
        note=note,
        runs=_runs_table(runs, ranks_table(document.get("ranks")) is not None),
        ranks=ranks_table(document.get("ranks")),
        plot=_png_data_uri(folder / document["plot"]) if document.get("plot") else None,
        cost=_cost(document),
        details=_details(document),
    )


def write_html_report(folder: Path, document: dict[str, Any]) -> Path:
    """Write folder/report.html for the run described by ``document``; returns its path."""
    page = render_report(folder, document)
    return write_atomically(Path(folder) / "report.html", lambda p: p.write_text(page, encoding="utf-8"))
