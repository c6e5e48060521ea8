"""Error against model calls on log-log axes, drawn with Pillow: one coloured line per scheduler, saved as PNG."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from .text import elide, load_font

# Okabe-Ito (black moved back, yellow dropped: too faint on white), then Paul Tol / Tableau extras.
SERIES_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 114, 178),  # blue
    (230, 159, 0),  # orange
    (0, 158, 115),  # bluish green
    (213, 94, 0),  # vermillion
    (204, 121, 167),  # reddish purple
    (86, 180, 233),  # sky blue
    (0, 0, 0),  # black
    (153, 153, 51),  # olive
    (136, 34, 85),  # wine
    (51, 34, 136),  # indigo
    (156, 117, 95),  # brown
    (68, 170, 153),  # teal
)
MARKERS = ("circle", "square", "diamond", "triangle")  # one per pass through the palette
NESTING_LEVELS = 4  # earlier series are drawn up to 3 levels wider, so exact overlaps stay visible

WIDTH, HEIGHT = 1000, 650  # px, with the legend on the right
PLOT_LEFT, PLOT_TOP = 92, 58  # px: room for the y tick labels and the rotated y label; for the title
BELOW_PLOT = 86  # px under the plot area: x tick labels, x label, footnote
LEGEND_WIDTH, LEGEND_ROW, LEGEND_GAP = 210, 22, 20  # px: one legend column, one entry, space before it
EDGE = 16  # px: outer margin
PAD = 0.05  # fraction of the data's log span added on each side of an axis
MIN_SPAN = 1.0  # decades: the narrowest axis range, so a lone point still gets ticks
LINE_WIDTH, MARKER_RADIUS = 4, 5  # px
DASH, GAP = 10, 6  # px: the dash pattern of stochastic series and of the target line
MINOR_GRID_MIN = 70  # px per decade below which the 2..9 gridlines are left out

BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
MUTED = (100, 100, 100)
GRID_MAJOR = (205, 205, 205)
GRID_MINOR = (240, 240, 240)
TARGET = (110, 110, 110)

NOTHING_TO_PLOT = "nothing to plot: no series has a point with finite model calls > 0 and a finite error"
FOOTNOTE = "= identical to the reference (error 0, below the log scale)"

Colour = tuple[int, int, int]
Box = tuple[int, int, int, int]  # (left, top, right, bottom) in px, inclusive


@dataclass(frozen=True)
class Series:
    """One scheduler's line: (model calls, error) points, and whether it is stochastic (drawn dashed)."""

    name: str
    points: tuple[tuple[float, float], ...]  # (model_calls, error), any order; sorted by x when drawn
    stochastic: bool = False


@dataclass(frozen=True)
class Layout:
    """Where everything goes for a given number of series: image size, plot area, legend and footnote."""

    size: tuple[int, int]  # (width, height) px
    plot: Box  # the axes' inner rectangle; data, gridlines and the target line stay inside it
    legend: tuple[int, int]  # (x, y) px of the first legend entry
    legend_columns: int  # 1: a column right of the plot; more: rows below it
    footnote_y: int  # px: top of the footnote line


def layout(n_series: int) -> Layout:
    """The geometry for ``n_series`` lines: legend on the right while it fits, else in columns below (taller image)."""
    bottom = HEIGHT - BELOW_PLOT
    if n_series * LEGEND_ROW <= bottom - PLOT_TOP:
        right = WIDTH - EDGE - LEGEND_WIDTH - LEGEND_GAP
        return Layout(
            (WIDTH, HEIGHT), (PLOT_LEFT, PLOT_TOP, right, bottom), (right + LEGEND_GAP, PLOT_TOP), 1, bottom + 62
        )
    columns = (WIDTH - 2 * EDGE) // LEGEND_WIDTH
    legend_h = math.ceil(n_series / columns) * LEGEND_ROW
    legend_y = bottom + 60
    return Layout(
        (WIDTH, HEIGHT + legend_h + 8),
        (PLOT_LEFT, PLOT_TOP, WIDTH - EDGE - 8, bottom),
        (PLOT_LEFT, legend_y),
        columns,
        legend_y + legend_h + 6,
    )


def format_tick(value: float) -> str:
    """A tick label for m x 10^k (m = 1..9): plain for 10^-3 .. 10^4 (``0.002``, ``50``), else ``2e-5`` / ``1e6``."""
    exponent = math.floor(math.log10(value) + 1e-9)
    mantissa = round(value / 10.0**exponent)
    if mantissa == 10:
        mantissa, exponent = 1, exponent + 1
    if -3 <= exponent <= 4:
        return f"{mantissa * 10.0**exponent:.{max(0, -exponent)}f}"
    return f"{mantissa}e{exponent}"


def log_ticks(lo: float, hi: float, pixels: float, min_spacing: float) -> list[float]:
    """Labelled tick values in [lo, hi]: 1-2-5 per decade if they end up ``min_spacing`` px apart, else decades.

    ``pixels`` is the axis length for the range; when even whole decades are too close, every k-th decade is kept.
    """
    per_decade = pixels / (math.log10(hi) - math.log10(lo))  # px
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if per_decade * math.log10(2) >= min_spacing:
        multipliers, every = (1, 2, 5), 1
    else:
        multipliers, every = (1,), max(1, math.ceil(min_spacing / per_decade))
    values = [float(f"{m}e{e}") for e in range(first, last + 1) if e % every == 0 for m in multipliers]
    return [v for v in values if lo <= v <= hi]


def _minor_ticks(lo: float, hi: float) -> list[float]:
    """Every m x 10^k (m = 1..9) in [lo, hi]: the light gridlines."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    values = [float(f"{m}e{e}") for e in range(first, last + 1) for m in range(1, 10)]
    return [v for v in values if lo <= v <= hi]


def _clean(series: Series) -> tuple[list[tuple[float, float]], list[float]]:
    """The drawable points of a series sorted by calls: (calls, error > 0) on the line, and calls of error <= 0."""
    finite = sorted((x, y) for x, y in series.points if math.isfinite(x) and math.isfinite(y) and x > 0)
    return [(x, y) for x, y in finite if y > 0], [x for x, y in finite if y <= 0]


def _axis_range(values: Sequence[float]) -> tuple[float, float]:
    """A padded log range around positive ``values``: at least MIN_SPAN decades, PAD of the span on each side."""
    lo, hi = math.log10(min(values)), math.log10(max(values))
    if hi - lo < MIN_SPAN:
        middle = (lo + hi) / 2
        lo, hi = middle - MIN_SPAN / 2, middle + MIN_SPAN / 2
    pad = PAD * (hi - lo)
    return 10 ** (lo - pad), 10 ** (hi + pad)


class _Axes:
    """Maps (calls, error) to pixels of the plot box, both axes logarithmic."""

    def __init__(self, box: Box, x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
        self.box, self.x_range, self.y_range = box, x_range, y_range

    def px(self, x: float) -> float:
        left, _, right, _ = self.box
        lo, hi = (math.log10(v) for v in self.x_range)
        return left + (math.log10(x) - lo) / (hi - lo) * (right - left)

    def py(self, y: float) -> float:
        _, top, _, bottom = self.box
        lo, hi = (math.log10(v) for v in self.y_range)
        return bottom - (math.log10(y) - lo) / (hi - lo) * (bottom - top)


def _dashed(draw: ImageDraw.ImageDraw, points: Sequence[tuple[float, float]], fill: Colour, width: int) -> None:
    """A dashed polyline whose dash pattern runs on across the corners."""
    phase = 0.0  # px into the current dash + gap period
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        length = math.hypot(x1 - x0, y1 - y0)
        done = 0.0
        while done < length:
            in_dash = phase < DASH
            step = min((DASH - phase) if in_dash else (DASH + GAP - phase), length - done)
            if in_dash:
                a, b = done / length, (done + step) / length
                draw.line(
                    [(x0 + a * (x1 - x0), y0 + a * (y1 - y0)), (x0 + b * (x1 - x0), y0 + b * (y1 - y0))],
                    fill=fill,
                    width=width,
                )
            done += step
            phase = (phase + step) % (DASH + GAP)


def _marker(draw: ImageDraw.ImageDraw, x: float, y: float, shape: str, fill: Colour, r: int = MARKER_RADIUS) -> None:
    """One filled marker centred on (x, y); ``down`` is the zero-error triangle."""
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape == "square":
        draw.rectangle([x - r + 1, y - r + 1, x + r - 1, y + r - 1], fill=fill)
    elif shape == "diamond":
        draw.polygon([(x, y - r - 1), (x + r + 1, y), (x, y + r + 1), (x - r - 1, y)], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x - r - 1, y + r), (x + r + 1, y + r), (x, y - r - 1)], fill=fill)
    else:  # "down": tip at the bottom
        draw.polygon([(x - r - 1, y - r), (x + r + 1, y - r), (x, y + r + 1)], fill=fill)


def _draw_grid(draw: ImageDraw.ImageDraw, axes: _Axes, fonts) -> None:
    """Minor and labelled gridlines with their tick labels, on both axes."""
    left, top, right, bottom = axes.box
    x_ticks = log_ticks(*axes.x_range, right - left, 56)
    y_ticks = log_ticks(*axes.y_range, bottom - top, 30)
    if axes.px(10) - axes.px(1) >= MINOR_GRID_MIN:
        for x in _minor_ticks(*axes.x_range):
            draw.line([(axes.px(x), top), (axes.px(x), bottom)], fill=GRID_MINOR, width=1)
    if axes.py(1) - axes.py(10) >= MINOR_GRID_MIN:
        for y in _minor_ticks(*axes.y_range):
            draw.line([(left, axes.py(y)), (right, axes.py(y))], fill=GRID_MINOR, width=1)
    for x in x_ticks:
        draw.line([(axes.px(x), top), (axes.px(x), bottom)], fill=GRID_MAJOR, width=1)
        draw.line([(axes.px(x), bottom), (axes.px(x), bottom + 5)], fill=INK, width=1)
        draw.text((axes.px(x), bottom + 8), format_tick(x), fill=INK, font=fonts["tick"], anchor="mt")
    for y in y_ticks:
        draw.line([(left, axes.py(y)), (right, axes.py(y))], fill=GRID_MAJOR, width=1)
        draw.line([(left - 5, axes.py(y)), (left, axes.py(y))], fill=INK, width=1)
        draw.text((left - 8, axes.py(y)), format_tick(y), fill=INK, font=fonts["tick"], anchor="rm")


def _draw_series(draw: ImageDraw.ImageDraw, axes: _Axes, series: Series, colour: Colour, marker: str,
                 nesting: int = 0) -> None:
    """One series: its line (dashed if stochastic), a marker per point, and a ▼ on the bottom edge per zero error.

    ``nesting`` widens the line and markers (2 px a level), so a series drawn later on exactly the same points
    leaves a rim of the earlier one visible.
    """
    positive, zeros = _clean(series)
    pixels = [(axes.px(x), axes.py(y)) for x, y in positive]
    width, radius = LINE_WIDTH + 2 * nesting, MARKER_RADIUS + 2 * nesting
    if len(pixels) > 1 and series.stochastic:
        _dashed(draw, pixels, colour, width)
    elif len(pixels) > 1:
        draw.line(pixels, fill=colour, width=width, joint="curve")
    for x, y in pixels:
        _marker(draw, x, y, marker, colour, radius)
    for x in zeros:
        _marker(draw, axes.px(x), axes.box[3] - MARKER_RADIUS - 2, "down", colour, MARKER_RADIUS + 1)


def _draw_legend(draw: ImageDraw.ImageDraw, where: Layout, series: Sequence[Series], font) -> None:
    """One entry per series: a short line (dashed if stochastic) with its marker, then the name."""
    x0, y0 = where.legend
    for i, s in enumerate(series):
        column, row = (0, i) if where.legend_columns == 1 else (i % where.legend_columns, i // where.legend_columns)
        x, y = x0 + column * LEGEND_WIDTH, y0 + row * LEGEND_ROW + LEGEND_ROW // 2
        colour, marker = SERIES_COLOURS[i % len(SERIES_COLOURS)], MARKERS[i // len(SERIES_COLOURS) % len(MARKERS)]
        if s.stochastic:
            _dashed(draw, [(x, y), (x + 30, y)], colour, LINE_WIDTH)
        else:
            draw.line([(x, y), (x + 30, y)], fill=colour, width=LINE_WIDTH)
        _marker(draw, x + 15, y, marker, colour)
        draw.text((x + 38, y), elide(draw, s.name, font, LEGEND_WIDTH - 46), fill=INK, font=font, anchor="lm")


def _draw_y_label(image: Image.Image, text: str, font, box: Box) -> None:
    """The y axis label, rotated a quarter turn, centred on the plot's height at the left edge."""
    probe = ImageDraw.Draw(image)
    text = elide(probe, text, font, box[3] - box[1])
    width = int(probe.textlength(text, font=font)) + 4
    mask = Image.new("L", (width, 24), 0)
    ImageDraw.Draw(mask).text((2, 12), text, fill=255, font=font, anchor="lm")
    mask = mask.rotate(90, expand=True)
    middle = (box[1] + box[3]) // 2
    image.paste(INK, (EDGE - 4, middle - mask.height // 2), mask)


def save_error_plot(
    series: Sequence[Series],
    path: Path,
    *,
    title: str,
    y_label: str = "latent RMSE vs reference",
    x_label: str = "model calls",
    target: float | None = None,
) -> Path:
    """Draw error against model calls on log-log axes, one coloured line per series, and save it as PNG."""
    cleaned = [_clean(s) for s in series]
    xs = [x for positive, zeros in cleaned for x in [p[0] for p in positive] + zeros]
    if not xs:
        raise ValueError(NOTHING_TO_PLOT)
    if target is not None and not (math.isfinite(target) and target > 0):
        raise ValueError(f"target must be a finite error > 0, got {target!r}")
    ys = [y for positive, _ in cleaned for _, y in positive] + ([target] if target is not None else [])
    where = layout(len(series))
    axes = _Axes(where.plot, _axis_range(xs), _axis_range(ys or [0.1]))
    fonts = {"title": load_font(20), "label": load_font(16), "tick": load_font(14)}

    image = Image.new("RGB", where.size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    left, _, right, bottom = where.plot
    title = elide(draw, title, fonts["title"], where.size[0] - left - EDGE)
    draw.text((left, 18), title, fill=INK, font=fonts["title"])
    _draw_grid(draw, axes, fonts)
    if target is not None:
        _dashed(draw, [(left, axes.py(target)), (right, axes.py(target))], TARGET, 2)
        draw.text((right - 6, axes.py(target) - 4), "target", fill=TARGET, font=fonts["tick"], anchor="rb")
    levels = min(NESTING_LEVELS, len(series))
    for i, s in enumerate(series):
        colour, marker = SERIES_COLOURS[i % len(SERIES_COLOURS)], MARKERS[i // len(SERIES_COLOURS) % len(MARKERS)]
        _draw_series(draw, axes, s, colour, marker, nesting=levels - 1 - i % levels)
    draw.rectangle(where.plot, outline=INK, width=1)
    x_label = elide(draw, x_label, fonts["label"], right - left)
    draw.text(((left + right) / 2, bottom + 32), x_label, fill=INK, font=fonts["label"], anchor="mt")
    _draw_y_label(image, y_label, fonts["label"], where.plot)
    _draw_legend(draw, where, series, fonts["tick"])
    if any(zeros for _, zeros in cleaned):
        _marker(draw, left + 6, where.footnote_y + 8, "down", MUTED, MARKER_RADIUS + 1)
        draw.text((left + 18, where.footnote_y + 8), FOOTNOTE, fill=MUTED, font=fonts["tick"], anchor="lm")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
