"""The labeled comparison grid: one PNG with a header, row and column labels and a caption under every cell."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

MIN_CELL = 256
PAD = 12
LIST_COLUMNS = 4
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (110, 110, 110)
FAILED = (170, 30, 30)


@dataclass
class GridCell:
    """One run's place in the grid: where it goes, its image (None if it has none) and its caption lines."""

    row: str
    column: str
    image: Image.Image | None
    lines: list[str] = field(default_factory=list)
    failed: bool = False


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    return int(draw.textlength(text, font=font))


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """Shorten ``text`` with an ellipsis until it fits in ``width`` pixels."""
    if _text_width(draw, text, font) <= width:
        return text
    while text and _text_width(draw, text + "…", font) > width:
        text = text[:-1]
    return text + "…"


def wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Break ``text`` into lines of at most ``width`` pixels, at spaces where possible."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if current and _text_width(draw, candidate, font) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    lines.append(current)
    return [_fit(draw, line, font, width) for line in lines]


def upscale(image: Image.Image, minimum: int = MIN_CELL) -> Image.Image:
    """Enlarge by a whole factor with nearest-neighbour sampling until the short side reaches ``minimum``."""
    factor = max(1, -(-minimum // min(image.size)))
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def draw_grid(cells: list[GridCell], header: list[str], layout: str) -> Image.Image:
    """Compose the grid: rows x step columns for a matrix plan, or cells in reading order for a list plan."""
    images = [upscale(c.image) for c in cells if c.image is not None]
    cell_w = max([im.width for im in images] or [MIN_CELL])
    cell_h = max([im.height for im in images] or [MIN_CELL])
    title_font, label_font, caption_font = _font(22), _font(18), _font(15)
    caption_lines = max([len(c.lines) for c in cells] or [1])
    caption_h = caption_lines * 19 + 6
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    if layout == "matrix":
        rows = list(dict.fromkeys(c.row for c in cells))
        columns = list(dict.fromkeys(c.column for c in cells))
        place = {id(c): (rows.index(c.row), columns.index(c.column)) for c in cells}
        label_w = max(_text_width(probe, r, label_font) for r in rows) + 2 * PAD
        label_w = min(label_w, 320)
        column_head_h = 30
    else:
        columns = [""] * min(len(cells), LIST_COLUMNS)
        rows = [""] * -(-len(cells) // LIST_COLUMNS)
        place = {id(c): divmod(i, LIST_COLUMNS) for i, c in enumerate(cells)}
        label_w, column_head_h = PAD, 0

    width = label_w + len(columns) * (cell_w + PAD) + PAD
    header = [part for line in header for part in wrap(probe, line, title_font, width - 2 * PAD)]
    header_h = PAD + 28 * len(header) + PAD
    height = header_h + column_head_h + len(rows) * (cell_h + caption_h + PAD) + PAD
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    for i, line in enumerate(header):
        draw.text((PAD, PAD + 28 * i), line, fill=INK, font=title_font)
    top = header_h + column_head_h
    if layout == "matrix":
        for j, column in enumerate(columns):
            x = label_w + j * (cell_w + PAD)
            draw.text((x + cell_w // 2, header_h + 4), column, fill=INK, font=label_font, anchor="mt")
        for i, row in enumerate(rows):
            y = top + i * (cell_h + caption_h + PAD) + cell_h // 2
            draw.text((PAD, y), _fit(draw, row, label_font, label_w - 2 * PAD), fill=INK, font=label_font, anchor="lm")

    for cell in cells:
        i, j = place[id(cell)]
        x = label_w + j * (cell_w + PAD)
        y = top + i * (cell_h + caption_h + PAD)
        if cell.image is not None:
            image = upscale(cell.image)
            canvas.paste(image, (x + (cell_w - image.width) // 2, y + (cell_h - image.height) // 2))
        else:
            draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), fill=(235, 235, 235), outline=(200, 200, 200))
        for k, line in enumerate(cell.lines):
            color = FAILED if cell.failed and k == len(cell.lines) - 1 else (INK if k == 0 else MUTED)
            text = _fit(draw, line, caption_font, cell_w)
            draw.text((x, y + cell_h + 4 + 19 * k), text, fill=color, font=caption_font)
    return canvas


def save_grid(cells: list[GridCell], header: list[str], layout: str, path: Path) -> Path:
    """Draw the grid and write it as PNG to ``path``."""
    draw_grid(cells, header, layout).save(path, format="PNG")
    return path
