"""The grid PNG: geometry, cell placement, nearest-neighbour upscaling, and failed cells."""

from __future__ import annotations

import numpy as np
from PIL import Image

from schedcmp.outputs.grid import LIST_COLUMNS, MIN_CELL, PAD, GridCell, draw_grid, upscale

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
