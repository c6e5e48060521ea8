"""The labeled comparison grid: one PNG with a header, row and column labels and a caption under every cell."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from .text import elide, load_font, wrap

MIN_CELL = 256
PAD = 12
LIST_COLUMNS = 4
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (110, 110, 110)
FAILED = (170, 30, 30)
MAX_LABEL_W = 320  # px: the row label column never gets wider; longer labels wrap, then are cut with "…"
HEADER_LINES = 3  # lines each header entry (prompt, negative prompt, settings) may wrap onto
LABEL_LINES = 3  # lines a row label may wrap onto
ERROR_LINES = 3  # lines a failed cell's last caption line (its error message) may wrap onto
TITLE_LINE, LABEL_LINE, CAPTION_LINE = 28, 22, 19  # px between the baselines of header, label and caption lines


@dataclass
class GridCell:
    """One run's place in the grid: where it goes, its image (None if it has none) and its caption lines."""

    row: str
    column: str
    image: Image.Image | None
    lines: list[str] = field(default_factory=list)
    failed: bool = False


MAX_GRID_MEGAPIXELS = 200  # a page's grid at most (A1111's img_max_size_mp default)


def grid_shape(row_labels: list[str], columns: list[str], layout: str) -> tuple[int, int]:
    """(rows, columns) of the grid of these cells' row and column labels."""
    if layout == "matrix":
        return len(dict.fromkeys(row_labels)), len(dict.fromkeys(columns))
    return -(-len(row_labels) // LIST_COLUMNS), min(len(row_labels), LIST_COLUMNS)


def grid_megapixels(rows: int, columns: int, size: tuple[int, int]) -> float:
    """The pixels of a grid's cells, in millions: each cell the image at its size (at least MIN_CELL a side)."""
    width, height = size
    factor = max(1, -(-MIN_CELL // min(width, height)))
    return rows * columns * width * height * factor * factor / 1e6


def upscale(image: Image.Image, minimum: int = MIN_CELL) -> Image.Image:
    """Enlarge by a whole factor with nearest-neighbour sampling until the short side reaches ``minimum``."""
    factor = max(1, -(-minimum // min(image.size)))
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def _caption(draw: ImageDraw.ImageDraw, cell: GridCell, font, width: int) -> list[tuple[str, tuple[int, int, int]]]:
    """A cell's caption as drawn: (text, colour) per line, each cut to ``width``; a failure's message wraps."""
    lines = []
    for k, line in enumerate(cell.lines):
        if cell.failed and k == len(cell.lines) - 1:
            lines += [(part, FAILED) for part in wrap(draw, line, font, width, ERROR_LINES) or [""]]
        else:
            lines.append((elide(draw, line, font, width), INK if k == 0 else MUTED))
    return lines


def draw_grid(cells: list[GridCell], header: list[str], layout: str) -> Image.Image:
    """Compose the grid: rows x step columns for a matrix plan, or cells in reading order for a list plan.

    Every text (header, labels, captions) may be of any length and hold line breaks or characters the font lacks:
    it is wrapped onto a few lines or cut with "…" to fit, so it never widens the grid.
    """
    images = [upscale(c.image) for c in cells if c.image is not None]
    cell_w = max([im.width for im in images] or [MIN_CELL])
    cell_h = max([im.height for im in images] or [MIN_CELL])
    title_font, label_font, caption_font = load_font(22), load_font(18), load_font(15)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    captions = {id(c): _caption(probe, c, caption_font, cell_w) for c in cells}
    caption_lines = max([len(lines) for lines in captions.values()] or [1])
    caption_h = caption_lines * CAPTION_LINE + 6

    if layout == "matrix":
        rows = list(dict.fromkeys(c.row for c in cells))
        columns = list(dict.fromkeys(c.column for c in cells))
        place = {id(c): (rows.index(c.row), columns.index(c.column)) for c in cells}
        row_lines = [wrap(probe, r, label_font, MAX_LABEL_W - 2 * PAD, LABEL_LINES) for r in rows]
        widest = max((probe.textlength(line, font=label_font) for lines in row_lines for line in lines), default=0)
        label_w = min(int(widest) + 2 * PAD, MAX_LABEL_W)
        column_head_h = 30
    else:
        columns = [""] * min(len(cells), LIST_COLUMNS)
        rows = [""] * -(-len(cells) // LIST_COLUMNS)
        place = {id(c): divmod(i, LIST_COLUMNS) for i, c in enumerate(cells)}
        row_lines = []
        label_w, column_head_h = PAD, 0

    width = label_w + len(columns) * (cell_w + PAD) + PAD
    header = [part for line in header for part in wrap(probe, line, title_font, width - 2 * PAD, HEADER_LINES)]
    header_h = PAD + TITLE_LINE * len(header) + PAD
    height = header_h + column_head_h + len(rows) * (cell_h + caption_h + PAD) + PAD
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    for i, line in enumerate(header):
        draw.text((PAD, PAD + TITLE_LINE * i), line, fill=INK, font=title_font)
    top = header_h + column_head_h
    for j, column in enumerate(columns if layout == "matrix" else []):
        x = label_w + j * (cell_w + PAD)
        text = elide(draw, column, label_font, cell_w)
        draw.text((x + cell_w // 2, header_h + 4), text, fill=INK, font=label_font, anchor="mt")
    for i, lines in enumerate(row_lines):
        middle = top + i * (cell_h + caption_h + PAD) + cell_h // 2
        for k, line in enumerate(lines):
            y = middle + (2 * k - len(lines) + 1) * LABEL_LINE // 2
            draw.text((PAD, y), line, fill=INK, font=label_font, anchor="lm")

    for cell in cells:
        i, j = place[id(cell)]
        x = label_w + j * (cell_w + PAD)
        y = top + i * (cell_h + caption_h + PAD)
        if cell.image is not None:
            image = upscale(cell.image)
            canvas.paste(image, (x + (cell_w - image.width) // 2, y + (cell_h - image.height) // 2))
        else:
            draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), fill=(235, 235, 235), outline=(200, 200, 200))
        for k, (text, color) in enumerate(captions[id(cell)]):
            draw.text((x, y + cell_h + 4 + CAPTION_LINE * k), text, fill=color, font=caption_font)
    return canvas


def save_grid(cells: list[GridCell], header: list[str], layout: str, path: Path) -> Path:
    """Draw the grid and write it as PNG to ``path``."""
    draw_grid(cells, header, layout).save(path, format="PNG")
    return path
