"""report.html: one self-contained page for a run -- images inlined as data URIs, CSS and JS inline, no network."""

from __future__ import annotations

import base64
import json
import math
from html import escape
from pathlib import Path
from typing import Any

from PIL import Image

from .wording import duration

CELL_MIN = 192  # small images are enlarged by a whole factor to at least this many CSS pixels, pixelated
CELL_MAX = 256  # large images are shown at most this wide in the grid; click to see them bigger

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; padding: 16px 24px;
       max-width: 1600px; color: #1d1f23; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.prompt { font-size: 18px; font-weight: 600; margin: 4px 0; } .muted { color: #666; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 10px 0; }
dl.meta dt { color: #666; } dl.meta dd { margin: 0; }
.warnings { background: #fff4d6; border: 1px solid #e8c766; padding: 6px 12px; border-radius: 4px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; background: #fff; }
table.data th, table.data td { border: 1px solid #ddd; padding: 3px 8px; white-space: nowrap; }
table.data th { white-space: normal; }
table.data td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.data td.wrap { white-space: normal; min-width: 14em; max-width: 28em; }
table.sortable th { cursor: pointer; user-select: none; background: #eef0f3; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; }
table.grid th { padding: 4px 10px; font-weight: 600; }
table.grid td { vertical-align: top; padding: 6px; border: 1px solid #e4e4e4; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.gallery figure { background: #fff; border: 1px solid #e4e4e4; padding: 6px; }
figure { margin: 0; } figcaption { font-size: 12px; margin-top: 4px; }
img.cell, img.zoomable { cursor: zoom-in; display: block; }
.pixel { image-rendering: pixelated; }
.failed { color: #a61e1e; background: #fdeeee; padding: 8px; width: 180px; white-space: normal;
          word-break: break-word; font-size: 12px; }
tr.failed-run td { color: #a61e1e; }
#zoom { display: none; position: fixed; inset: 0; background: rgba(0, 0, 0, .85); z-index: 10; cursor: zoom-out;
        flex-direction: column; align-items: center; justify-content: center; color: #eee; }
#zoom.open { display: flex; }
#zoom img { width: min(90vw, 82vh); height: auto; max-width: 90vw; max-height: 82vh; object-fit: contain; }
#zoom p { margin: 10px 0 0; white-space: pre-line; text-align: center; }
pre { background: #fff; border: 1px solid #ddd; padding: 8px; overflow-x: auto; font-size: 12px; }
details { margin: 4px 0; } summary { cursor: pointer; }
"""

# Sorting: numeric-aware, asc/desc toggle, empty cells last either way. The zoom overlay reuses each cell's src.
JS = """
(function () {
  function value(cell) {
    var text = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
    if (text === "") return null;
    var number = Number(text);
    return isNaN(number) ? text : number;
  }
  function compare(a, b) {
    if (typeof a === "number" && typeof b === "number") return a - b;
    return String(a).localeCompare(String(b), undefined, {numeric: true});
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var headers = table.querySelectorAll("thead th");
    headers.forEach(function (th, column) {
      th.addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        headers.forEach(function (other) { other.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r1, r2) {
          var a = value(r1.cells[column]), b = value(r2.cells[column]);
          if (a === null || b === null) return (a === null) - (b === null);
          return ascending ? compare(a, b) : compare(b, a);
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
  var zoom = document.getElementById("zoom"), big = zoom.querySelector("img"), text = zoom.querySelector("p");
  document.querySelectorAll("img.cell, img.zoomable").forEach(function (img) {
    img.addEventListener("click", function () {
      big.src = img.src;
      big.className = img.classList.contains("pixel") ? "pixel" : "";
      var caption = img.closest("figure").querySelector("figcaption");
      text.textContent = caption ? caption.innerText : img.alt;
      zoom.classList.add("open");
    });
  });
  function close() { zoom.classList.remove("open"); big.removeAttribute("src"); }
  zoom.addEventListener("click", close);
  document.addEventListener("keydown", function (event) { if (event.key === "Escape") close(); });
  document.body.dataset.ready = "1";
})();
"""


def _png_data_uri(path: Path) -> str | None:
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:{spec}}"


def _duration(seconds: float | None) -> str:
    return "?" if seconds is None else duration(seconds)


def _td(value: Any, spec: str = "", *, scale: float = 1.0, text: str | None = None) -> str:
    """A numeric cell: shown formatted, sorted on the raw value (empty when missing)."""
    number = value if value is None or scale == 1 else value * scale
    shown = _fmt(number, spec) if text is None else text
    key = "" if number is None else repr(number).replace("inf", "Infinity")
    return f'<td class="num" data-sort="{escape(key)}">{escape(shown)}</td>'


def _sortable(table_id: str, headers: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return (f'<div class="scroll"><table id="{table_id}" class="data sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _details(summary: str, value: Any) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return f"<details><summary>{escape(summary)}</summary><pre>{escape(text)}</pre></details>"


def _accuracy_caption(accuracy: dict[str, Any] | None) -> str:
    if not accuracy:
        return ""
    psnr = accuracy.get("psnr")
    psnr_text = "PSNR ∞ (identical)" if psnr is None else f"PSNR {psnr:.1f} dB"
    return f"RMSE {_fmt(accuracy.get('latent_rmse'), '.3g')} · {psnr_text}"


def _cell(run: dict[str, Any], folder: Path) -> str:
    """One grid cell: the zoomable image (or the error) and its caption."""
    name = f"{run.get('label')} · {run.get('steps')} steps"
    uri = _png_data_uri(folder / run["image"]) if run.get("image") else None
    if run.get("status") == "ok" and uri:
        with Image.open(folder / run["image"]) as image:
            width, height = image.size
        short = min(width, height)
        factor = -(-CELL_MIN // short) if short < CELL_MIN else min(1.0, CELL_MAX / width)
        pixel = ' pixel' if short < CELL_MIN else ''
        body = (f'<img class="cell{pixel}" src="{uri}" alt="{escape(name)}" width="{round(width * factor)}" '
                f'height="{round(height * factor)}" title="click to enlarge">')
        lines = [f"{run.get('model_calls')} calls · {_duration(run.get('seconds'))}",
                 _accuracy_caption(run.get("accuracy"))]
    else:
        problem = run.get("error") or ("image missing: " + str(run.get("image")) if run.get("image") else "no image")
        body = f'<div class="failed"><b>{escape(str(run.get("status")))}</b><br>{escape(problem)}</div>'
        lines = []
    caption = "<br>".join(escape(line) for line in [name, *lines] if line)
    return f"<figure>{body}<figcaption>{caption}</figcaption></figure>"


def _grid(document: dict[str, Any], folder: Path) -> str:
    """Rows = schedulers and columns = step counts for a matrix plan; the runs in reading order otherwise."""
    runs = document.get("runs", [])
    where = {(run.get("scheduler"), run.get("steps")): run for run in runs}
    if (document.get("plan") or {}).get("layout") != "matrix" or len(where) < len(runs):
        return '<div class="gallery">' + "".join(_cell(run, folder) for run in runs) + "</div>"
    rows = list(dict.fromkeys(run.get("scheduler") for run in runs))
    columns = list(dict.fromkeys(run.get("steps") for run in runs))
    head = "<th></th>" + "".join(f"<th>{escape(str(steps))} steps</th>" for steps in columns)
    body = []
    for row in rows:
        title = next(run.get("label") for run in runs if run.get("scheduler") == row)
        cells = "".join(f"<td>{_cell(where[row, c], folder)}</td>" if (row, c) in where else "<td></td>"
                        for c in columns)
        body.append(f"<tr><th>{escape(str(title))}</th>{cells}</tr>")
    return (f'<div class="scroll"><table class="grid"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _runs_table(runs: list[dict[str, Any]]) -> str:
    """Every run, one row each; accuracy columns only when some run carries accuracy."""
    with_accuracy = any(run.get("accuracy") for run in runs)
    headers = ["#", "label", "class", "steps", "model calls", "seconds", "ms/call", "scheduler ms", "status"]
    if with_accuracy:
        headers += ["latent RMSE", "PSNR dB", "SSIM", "stochastic", "nearest data-set RMSE", "nearest caption"]
    rows = []
    for run in runs:
        ok = run.get("status") == "ok"
        status = run.get("status", "") + (f": {run['error']}" if run.get("error") else "")
        label = str(run.get("label", ""))
        if run.get("scheduler") not in (None, label):
            label += f" ({run['scheduler']})"
        cells = [_td(run.get("index")), f"<td>{escape(label)}</td>", f"<td>{escape(str(run.get('class', '')))}</td>",
                 _td(run.get("steps")), _td(run.get("model_calls")), _td(run.get("seconds"), ".3f"),
                 _td(run.get("seconds_per_call") if ok else None, ".2f", scale=1000),
                 _td(run.get("scheduler_seconds") if ok else None, ".2f", scale=1000),
                 f'<td class="wrap">{escape(status)}</td>']
        if with_accuracy:
            acc = run.get("accuracy") or {}
            psnr = acc.get("psnr")
            if acc and psnr is None:  # null PSNR means the images are identical
                psnr_cell = '<td class="num" data-sort="Infinity" title="identical images">∞</td>'
            else:
                psnr_cell = _td(psnr, ".2f")
            stochastic = "" if "stochastic" not in acc else ("yes" if acc["stochastic"] else "no")
            cells += [_td(acc.get("latent_rmse"), ".3g"), psnr_cell, _td(acc.get("ssim"), ".4f"),
                      f"<td>{stochastic}</td>", _td(acc.get("nearest_dataset_rmse"), ".3g"),
                      f'<td class="wrap">{escape(acc.get("nearest_caption") or "")}</td>']
        row_class = "" if ok else ' class="failed-run"'
        rows.append(f'<tr{row_class}>{"".join(cells)}</tr>')
    return _sortable("runs", headers, rows)


def _header(document: dict[str, Any], folder: Path) -> str:
    """Prompt, sampling settings and environment in one block, warnings last."""
    plan, env = document.get("plan") or {}, document.get("environment") or {}
    versions = env.get("versions") or {}
    size = plan.get("size")
    if not size:
        first = next((folder / r["image"] for r in document.get("runs", []) if r.get("image")), None)
        if first is not None and first.is_file():
            with Image.open(first) as image:
                size = list(image.size)
    runs = document.get("runs", [])
    ok = sum(run.get("status") == "ok" for run in runs)
    fields = [
        ("negative prompt", plan.get("negative_prompt") or "(none)"),
        ("seed", plan.get("seed")),
        ("guidance", plan.get("guidance")),
        ("model", plan.get("model", env.get("model"))),
        ("size", f"{size[0]}x{size[1]}" if size else "?"),
        ("mode", document.get("mode", plan.get("mode"))),
        ("device / dtype", f"{env.get('device', '?')} / {env.get('dtype', '?')}"),
        ("versions", f"schedcmp {document.get('schedcmp_version', '?')} · torch {versions.get('torch', '?')}"
                     + (f" · python {versions['python']}" if versions.get("python") else "")),
        ("wall time", _duration(document.get("wall_seconds"))
                      + (" (interrupted)" if document.get("interrupted") else "")),
        ("runs", f"{ok} ok of {len(runs)}"),
    ]
    reference = document.get("reference")
    if reference:
        fields.append(("accuracy reference", reference.get("label") or reference.get("kind")))
    meta = "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in fields)
    warnings = document.get("warnings") or []
    warned = ('<div class="warnings"><b>warnings</b><ul>' + "".join(f"<li>{escape(str(w))}</li>" for w in warnings)
              + "</ul></div>") if warnings else ""
    return (f'<h1>schedcmp report</h1><p class="prompt">{escape(str(plan.get("prompt", "")))}</p>'
            f'<dl class="meta">{meta}</dl>{warned}')


def _cost_to_reach(cost: dict[str, Any]) -> str:
    target = cost.get("target_error")
    rows = [f"<tr><td>{escape(str(row.get('scheduler', '')))}"
            + (" (stochastic)" if row.get("stochastic") else "") + "</td>"
            + _td(row.get("model_calls"), text=None if row.get("model_calls") is not None else "not reached")
            + _td(row.get("steps"), text=None if row.get("steps") is not None else "not reached")
            + _td(row.get("best_error"), ".3g") + _td(row.get("best_model_calls")) + "</tr>"
            for row in cost.get("rows") or []]
    return (f"<h2>Model calls to reach latent RMSE &le; {escape(_fmt(target))}</h2>"
            + _sortable("cost-to-reach", ["scheduler", "model calls", "steps", "best RMSE", "at calls"], rows))


def _reference_figure(reference: dict[str, Any], folder: Path) -> str:
    """The reference image every run is measured against, zoomable like the grid's cells."""
    uri = _png_data_uri(folder / reference["image"]) if reference.get("image") else None
    if uri is None:
        return ""
    with Image.open(folder / reference["image"]) as image:
        width, height = image.size
    short = min(width, height)
    factor = -(-CELL_MIN // short) if short < CELL_MIN else min(1.0, CELL_MAX / width)
    pixel = " pixel" if short < CELL_MIN else ""
    caption = escape(f"reference: {reference.get('label') or reference.get('kind')}")
    return (f'<figure id="reference"><img class="zoomable{pixel}" src="{uri}" alt="{caption}" '
            f'width="{round(width * factor)}" height="{round(height * factor)}" title="click to enlarge">'
            f"<figcaption>{caption}</figcaption></figure>")


def write_html_report(folder: Path, document: dict[str, Any]) -> Path:
    """Write folder/report.html for the run described by ``document`` (the results.json dict); returns its path."""
    folder = Path(folder)
    runs = document.get("runs", [])
    parts = [_header(document, folder)]
    if document.get("reference"):
        parts.append(_reference_figure(document["reference"], folder))
    parts += ["<h2>Grid</h2>", _grid(document, folder)]
    grid_uri = _png_data_uri(folder / "grid.png")
    if grid_uri:
        parts.append(f'<details><summary>grid.png</summary><img id="grid-png" src="{grid_uri}" alt="grid.png">'
                     "</details>")
    note = "Click a column header to sort."
    if any(run.get("accuracy") for run in runs):
        reference = (document.get("reference") or {}).get("label") or "the reference"
        note += f" Accuracy is measured against {reference}; PSNR ∞ means identical images."
    parts += ["<h2>Runs</h2>", f'<p class="muted">{escape(note)}</p>', _runs_table(runs)]
    plot_uri = _png_data_uri(folder / document["plot"]) if document.get("plot") else None
    if plot_uri:
        parts.append(f'<h2>Error vs model calls</h2><img id="plot" src="{plot_uri}" alt="error vs model calls">')
    if document.get("cost_to_reach"):
        parts.append(_cost_to_reach(document["cost_to_reach"]))
    parts.append("<h2>Configuration</h2>")
    parts += [_details(f"#{run.get('index')} {run.get('label')} · {run.get('steps')} steps · {run.get('class')}",
                       run.get("scheduler_config")) for run in runs]
    parts += [_details("plan", document.get("plan")), _details("environment", document.get("environment"))]
    if document.get("reference"):
        parts.append(_details("accuracy reference", document["reference"]))
    title = escape(f"schedcmp · {(document.get('plan') or {}).get('prompt', '')}")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f'<body>{"".join(parts)}<div id="zoom"><img alt=""><p></p></div><script>{JS}</script></body></html>\n')
    path = folder / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
