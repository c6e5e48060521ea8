"""The error-vs-model-calls plot: a valid PNG, one coloured line per series inside the plot area, log axes the
right way up, zero errors on the bottom edge, non-finite points skipped, and readable tick labels."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from schedcmp.outputs.plot import (
    SERIES_COLOURS,
    TARGET,
    Series,
    format_tick,
    layout,
    log_ticks,
    save_error_plot,
)

CALLS = (5, 10, 20, 50, 100)


def power_law(name: str, scale: float, order: float, stochastic: bool = False) -> Series:
    """Error falling like calls^-order: the shape a converging scheduler draws."""
    return Series(name, tuple((c, scale * c**-order) for c in CALLS), stochastic)


def draw(tmp_path: Path, series: list[Series], **kwargs) -> np.ndarray:
    """Save the plot and read it back as an (H, W, 3) uint8 array."""
    path = save_error_plot(series, tmp_path / "plot.png", title="test", **kwargs)
    return np.asarray(Image.open(path).convert("RGB"))


def pixels_of(image: np.ndarray, colour: tuple[int, int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """(y, x) of every pixel exactly ``colour`` strictly inside ``box`` (left, top, right, bottom)."""
    left, top, right, bottom = box
    ys, xs = np.nonzero((image[top + 1 : bottom, left + 1 : right] == colour).all(axis=-1))
    return np.stack([ys + top + 1, xs + left + 1], axis=1)


def test_saves_a_png_of_the_layout_size(tmp_path: Path) -> None:
    path = save_error_plot([power_law("ddim", 1.0, 1.0)], tmp_path / "out" / "errors.png", title="errors")
    assert path == tmp_path / "out" / "errors.png"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == layout(1).size == (1000, 650)


def test_the_palette_has_twelve_distinct_colours_none_of_them_white() -> None:
    assert len(SERIES_COLOURS) >= 12
    assert len(set(SERIES_COLOURS)) == len(SERIES_COLOURS)
    assert (255, 255, 255) not in SERIES_COLOURS


@pytest.mark.parametrize("n", [3, 5, 12])
def test_every_series_is_drawn_in_its_own_colour_inside_the_plot_area(tmp_path: Path, n: int) -> None:
    series = [power_law(f"scheduler {i}", 10.0 ** (-0.4 * i), 1.0 + 0.1 * i) for i in range(n)]
    image = draw(tmp_path, series)
    box = layout(n).plot
    for i in range(n):
        assert len(pixels_of(image, SERIES_COLOURS[i], box)) > 300, f"series {i} has no line in the plot area"


def test_more_series_than_fit_on_the_right_put_the_legend_below_in_a_taller_image(tmp_path: Path) -> None:
    few, many = layout(12), layout(40)
    assert many.size[0] == few.size[0] and many.size[1] > few.size[1]
    assert many.legend[1] > many.plot[3] and many.legend_columns > 1
    image = draw(tmp_path, [power_law(f"s{i}", 1.0 + i, 1.0) for i in range(40)])
    assert image.shape[:2] == (many.size[1], many.size[0])


def test_larger_errors_are_drawn_higher(tmp_path: Path) -> None:
    image = draw(tmp_path, [power_law("coarse", 5.0, 1.0), power_law("fine", 0.005, 1.0)])
    coarse, fine = (pixels_of(image, SERIES_COLOURS[i], layout(2).plot) for i in (0, 1))
    assert coarse[:, 0].mean() < fine[:, 0].mean()  # image rows grow downward


def test_more_model_calls_are_drawn_further_right(tmp_path: Path) -> None:
    cheap = Series("cheap", ((5, 0.1), (8, 0.05)))
    costly = Series("costly", ((50, 0.1), (80, 0.05)))
    image = draw(tmp_path, [cheap, costly])
    left, right = (pixels_of(image, SERIES_COLOURS[i], layout(2).plot) for i in (0, 1))
    assert left[:, 1].mean() < right[:, 1].mean()


def test_points_are_drawn_in_order_of_model_calls_whatever_order_they_come_in(tmp_path: Path) -> None:
    ordered = power_law("ddim", 1.0, 1.0)
    shuffled = Series("ddim", tuple(reversed(ordered.points[::2] + ordered.points[1::2])))
    first = draw(tmp_path, [ordered])
    assert np.array_equal(first, draw(tmp_path, [shuffled]))


def test_a_stochastic_series_is_drawn_dashed(tmp_path: Path) -> None:
    solid = draw(tmp_path, [power_law("euler", 1.0, 1.0)])
    dashed = draw(tmp_path, [power_law("euler", 1.0, 1.0, stochastic=True)])
    box = layout(1).plot
    assert len(pixels_of(dashed, SERIES_COLOURS[0], box)) < 0.85 * len(pixels_of(solid, SERIES_COLOURS[0], box))


def test_a_single_point_still_shows_a_marker(tmp_path: Path) -> None:
    image = draw(tmp_path, [Series("one run", ((20, 0.03),))])
    assert len(pixels_of(image, SERIES_COLOURS[0], layout(1).plot)) >= 60  # a filled disc of radius ~5 px


def test_zero_errors_sit_on_the_bottom_edge_and_bring_the_footnote(tmp_path: Path) -> None:
    where = layout(1)
    left, _, right, bottom = where.plot
    footnote = (0, where.footnote_y - 1, where.size[0] - 1, where.footnote_y + 18)

    plain = draw(tmp_path, [Series("heun", ((10, 0.01), (20, 0.001)))])
    exact = draw(tmp_path, [Series("heun", ((10, 0.01), (20, 0.0)))])

    near_bottom = pixels_of(exact, SERIES_COLOURS[0], (left, bottom - 16, right, bottom))
    assert len(near_bottom) > 30
    assert len(pixels_of(plain, SERIES_COLOURS[0], (left, bottom - 16, right, bottom))) == 0
    ink = (exact[footnote[1] : footnote[3], :] < 160).all(axis=-1).sum()
    assert ink > 50 and (plain[footnote[1] : footnote[3], :] < 160).all(axis=-1).sum() == 0


def test_non_finite_points_are_skipped(tmp_path: Path) -> None:
    clean = power_law("dpm", 1.0, 2.0)
    noisy = Series("dpm", (*clean.points, (30, math.nan), (40, math.inf), (math.inf, 0.1), (-math.inf, 0.2)))
    assert np.array_equal(draw(tmp_path, [clean]), draw(tmp_path, [noisy]))


@pytest.mark.parametrize(
    "series",
    [[], [Series("empty", ())], [Series("broken", ((math.nan, 0.1), (10, math.inf), (0, 0.1)))]],
    ids=["no series", "no points", "no finite points"],
)
def test_nothing_finite_to_plot_is_an_error(tmp_path: Path, series: list[Series]) -> None:
    with pytest.raises(ValueError) as error:
        save_error_plot(series, tmp_path / "plot.png", title="nothing")
    assert str(error.value) == "nothing to plot: no series has a point with finite model calls > 0 and a finite error"
    assert not (tmp_path / "plot.png").exists()


def test_a_target_draws_a_dashed_horizontal_line(tmp_path: Path) -> None:
    series = [power_law("unipc", 1.0, 3.0)]
    box = layout(1).plot
    line = pixels_of(draw(tmp_path, series, target=1e-3), TARGET, box)
    assert len(pixels_of(draw(tmp_path, series), TARGET, box)) == 0
    _, counts = np.unique(line[:, 0], return_counts=True)
    width = box[2] - box[0]
    assert 0.4 * width < counts.max() < 0.9 * width  # one dashed row across the plot (plus the label's ink)


@pytest.mark.parametrize("target", [0.0, -1.0, math.nan, math.inf])
def test_a_target_must_be_a_finite_positive_error(tmp_path: Path, target: float) -> None:
    with pytest.raises(ValueError, match="target must be a finite error > 0"):
        save_error_plot([power_law("ddim", 1.0, 1.0)], tmp_path / "plot.png", title="t", target=target)


@pytest.mark.parametrize(
    ("value", "label"),
    [
        (1, "1"),
        (10, "10"),
        (20, "20"),
        (50, "50"),
        (100, "100"),
        (5000, "5000"),
        (1e5, "1e5"),
        (2e6, "2e6"),
        (0.5, "0.5"),
        (0.1, "0.1"),
        (0.02, "0.02"),
        (0.001, "0.001"),
        (1e-4, "1e-4"),
        (5e-5, "5e-5"),
        (1e-12, "1e-12"),
    ],
)
def test_tick_labels_are_short_numbers(value: float, label: str) -> None:
    assert format_tick(value) == label


def test_ticks_are_one_two_five_per_decade_when_there_is_room() -> None:
    assert log_ticks(4.5, 110, 680, 56) == [5, 10, 20, 50, 100]


def test_ticks_fall_back_to_whole_decades_when_crowded() -> None:
    assert log_ticks(5e-7, 2, 500, 30) == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1]


def test_ticks_skip_decades_when_even_those_are_crowded() -> None:
    assert log_ticks(1e-12, 1, 240, 30) == [1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2, 1]


def test_series_on_exactly_the_same_points_all_stay_visible(tmp_path: Path) -> None:
    same = ((5, 0.3), (10, 0.2), (20, 0.1))
    image = draw(tmp_path, [Series(name, same) for name in ("euler", "unipc", "dpm", "lms")])
    for colour in SERIES_COLOURS[:4]:
        assert len(pixels_of(image, colour, layout(4).plot)) > 300


WILD_NAMES = ["", "line one\nline two 🎨 مرحبا", "🎨🖼️✨", "a very long scheduler name " * 800, "x" * 5000]


def _dark(region: np.ndarray) -> int:
    return int((region.max(axis=-1) < 100).sum())


@pytest.mark.parametrize("title", ["", "prompt\nover lines 🎨 שלום · seed 8", "a red circle " * 2000])
def test_any_title_and_legend_names_stay_inside_the_image(tmp_path: Path, title: str) -> None:
    series = [power_law(name, 10.0 ** -i, 1.0) for i, name in enumerate(WILD_NAMES)]
    path = save_error_plot(series, tmp_path / "plot.png", title=title, x_label="calls\n" * 500, y_label="🎨" * 900)
    image = np.asarray(Image.open(path).convert("RGB"))
    where = layout(len(series))
    assert image.shape[:2] == (where.size[1], where.size[0])
    assert _dark(image[:, -8:]) == 0, "text ran off the right edge"
    legend_x, legend_y = where.legend
    emoji_row = image[legend_y + 2 * 22 : legend_y + 3 * 22, legend_x + 38 :]
    assert _dark(emoji_row) > 10, "an emoji-only name left no mark"
    if title:
        assert _dark(image[10:40, where.plot[0] :]) > 50, "no title"
