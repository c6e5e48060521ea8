"""The grid PNG: geometry, cell placement, nearest-neighbour upscaling, failed cells, and text of any length and
shape (line breaks, emoji, right-to-left, huge) kept inside its place."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from schedcmp.outputs.grid import (
    ERROR_LINES,
    HEADER_LINES,
    LIST_COLUMNS,
    MAX_LABEL_W,
    MIN_CELL,
    PAD,
    TITLE_LINE,
    GridCell,
    draw_grid,
    upscale,
)

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


def solid(color: tuple[int, int, int], size: int = 64) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def matrix_cells() -> list[GridCell]:
    rows, columns = ["ddim", "euler", "DPM++ 2M Karras"], ["10 steps", "20 steps"]
    return [
        GridCell(row, column, solid(COLORS[2 * i + j]), [row, f"{column} · 10 calls · 0.10 s"])
        for i, row in enumerate(rows)
        for j, column in enumerate(columns)
    ]


def test_upscale_uses_whole_factors_and_no_new_colors() -> None:
    image = Image.new("RGB", (64, 48))
    image.putpixel((0, 0), (255, 0, 0))
    big = upscale(image)
    assert big.size == (64 * 6, 48 * 6)  # short side 48 -> at least 256 needs a factor of 6
    assert set(big.getdata()) == {(0, 0, 0), (255, 0, 0)}


def test_large_images_are_not_scaled() -> None:
    assert upscale(solid((1, 2, 3), 512)).size == (512, 512)


def test_matrix_places_each_cell_in_its_row_and_column() -> None:
    grid = np.asarray(draw_grid(matrix_cells(), ["prompt", "seed 8"], "matrix"))
    boxes = {}
    for k, color in enumerate(COLORS):
        ys, xs = np.nonzero((grid == color).all(axis=-1))
        boxes[divmod(k, 2)] = (ys.min(), xs.min(), ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    for (row, column), (top, left, height, width) in boxes.items():
        assert (height, width) == (MIN_CELL, MIN_CELL)
        assert top == boxes[(row, 0)][0] and left == boxes[(0, column)][1]
    assert boxes[(0, 0)][0] < boxes[(1, 0)][0] < boxes[(2, 0)][0]
    assert boxes[(0, 0)][1] < boxes[(0, 1)][1]


def test_matrix_geometry_fits_rows_columns_and_captions() -> None:
    grid = draw_grid(matrix_cells(), ["prompt", "seed 8"], "matrix")
    assert grid.width >= 2 * (MIN_CELL + PAD)
    assert grid.height >= 3 * (MIN_CELL + 2 * 19 + PAD)


def test_list_layout_wraps_after_a_fixed_number_of_columns() -> None:
    cells = [GridCell(f"run {k}", "20 steps", solid(COLORS[k % 6]), [f"run {k}"]) for k in range(LIST_COLUMNS + 2)]
    grid = draw_grid(cells, ["prompt"], "list")
    assert grid.width == PAD + LIST_COLUMNS * (MIN_CELL + PAD) + PAD
    two_rows = 2 * (MIN_CELL + 19 + 6 + PAD)
    assert grid.height >= two_rows


def test_failed_cell_is_a_grey_box() -> None:
    cells = [GridCell("ddim", "10 steps", None, ["ddim", "10 steps · failed", "RuntimeError: boom"], failed=True)]
    grid = draw_grid(cells, ["prompt"], "matrix")
    grey = sum(1 for p in grid.getdata() if p == (235, 235, 235))
    assert grey > (MIN_CELL - 2) ** 2 // 2


def test_long_header_wraps_instead_of_widening_the_grid() -> None:
    header = ["word " * 80]
    narrow = draw_grid(matrix_cells()[:1], header, "matrix")
    assert narrow.width < 700
    assert narrow.height > draw_grid(matrix_cells()[:1], ["short"], "matrix").height


def _ink(region: np.ndarray) -> int:
    """Dark text pixels in a region."""
    return int((region.max(axis=-1) < 100).sum())


def test_header_row_labels_column_labels_and_captions_are_drawn() -> None:
    grid = np.asarray(draw_grid(matrix_cells(), ["a red circle", "seed 8"], "matrix"))
    red = np.nonzero((grid == COLORS[0]).all(axis=-1))
    top, left = red[0].min(), red[1].min()
    assert _ink(grid[:top - 30, :]) > 50, "no header text"
    assert _ink(grid[top - 30:top, left:left + MIN_CELL]) > 20, "no column label"
    assert _ink(grid[top:top + MIN_CELL, :left]) > 20, "no row label"
    assert _ink(grid[top + MIN_CELL:top + MIN_CELL + 40, left:left + MIN_CELL]) > 20, "no caption"


def test_row_labels_are_empty_without_text() -> None:
    """The ink measure finds nothing where nothing was drawn (the check above can fail)."""
    grid = np.asarray(draw_grid(matrix_cells(), [""], "matrix"))
    assert _ink(grid[:PAD, :]) == 0


WILD = {
    "empty": "",
    "multi-line": "line one\nline two 🎨 مرحبا\n\n\tשלום 你好",
    "emoji only": "🎨🖼️✨",
    "20k": "a red circle on a blue background, " * 572,
    "5000-char word": "x" * 5000,
}


def wild_cells(label: str) -> list[GridCell]:
    """A 2 x 2 matrix with ``label`` in every row, column and caption, one cell failed with it as the error."""
    cells = [
        GridCell(f"{label} {r}", f"{label} {c}", solid(COLORS[2 * r + c]), [label, f"{c} steps · {label}"])
        for r in range(2)
        for c in range(2)
    ]
    cells[-1] = GridCell(cells[-1].row, cells[-1].column, None, [label, "failed", f"RuntimeError: {label}"], True)
    return cells


@pytest.mark.parametrize("label", WILD.values(), ids=WILD.keys())
def test_any_text_fits_inside_the_grid_without_widening_it(label: str) -> None:
    header = [label, f"negative: {label}", "seed 8 · guidance 7.5"]
    image = draw_grid(wild_cells(label), header, "matrix")
    assert image.width <= MAX_LABEL_W + 2 * (MIN_CELL + PAD) + PAD
    header_h = 2 * PAD + TITLE_LINE * 3 * HEADER_LINES
    assert image.height <= header_h + 30 + 2 * (MIN_CELL + (2 + ERROR_LINES) * 19 + 6 + PAD) + PAD
    grid = np.asarray(image)
    red = np.nonzero((grid == COLORS[0]).all(axis=-1))
    top, left = red[0].min(), red[1].min()
    gap = grid[top:, left + MIN_CELL : left + MIN_CELL + PAD]  # between the two columns, captions included
    assert _ink(gap) == 0, "a caption ran into the next column"
    assert _ink(grid[:, -PAD + 2 :]) == 0, "text ran off the right edge"
    if label:
        assert _ink(grid[top : top + MIN_CELL, :left]) > 20, "no row label"  # emoji-only is drawn as boxes


def test_a_long_multi_line_error_wraps_under_its_cell() -> None:
    message = "RuntimeError: CUDA out of memory.\nTried to allocate 2.00 GiB; " + "details " * 200
    failed = [GridCell("ddim", "10 steps", None, ["ddim", "10 steps · failed", message], failed=True)]
    plain = [GridCell("ddim", "10 steps", None, ["ddim", "10 steps · failed", "boom"], failed=True)]
    assert draw_grid(failed, ["p"], "matrix").height == draw_grid(plain, ["p"], "matrix").height + (ERROR_LINES - 1) * 19


def test_a_huge_prompt_is_drawn_in_a_few_header_lines() -> None:
    prompt = "word " * 40_000 + "\n" + "🎨" * 10_000
    huge = draw_grid(matrix_cells(), [prompt], "matrix")
    short = draw_grid(matrix_cells(), ["a red circle"], "matrix")
    assert huge.size == (short.width, short.height + (HEADER_LINES - 1) * TITLE_LINE)


def test_list_layout_and_no_cells_take_any_text() -> None:
    cells = [GridCell(label, "", solid(COLORS[0]), [label]) for label in WILD.values()]
    assert draw_grid(cells, list(WILD.values()), "list").width == PAD + LIST_COLUMNS * (MIN_CELL + PAD) + PAD
    assert draw_grid([], [""], "matrix").size[0] > 0
