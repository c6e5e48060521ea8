"""Fitting text of any length and shape into pixels: one line, elided, or word-wrapped into a few lines.

Every function here does a bounded number of measurements (O(log n) per line), each of a bounded piece of text:
nothing longer than ``width / narrowest glyph`` characters can fit, so the text is cut to that before measuring.
The only full pass over the text is :func:`single_line`, which is linear and measures nothing.

Pillow's embedded font (``ImageFont.load_default(size=...)``, Aileron) covers ASCII and a few symbols only: emoji,
accented letters, Arabic, Hebrew and CJK are drawn as .notdef boxes ("tofu"), without raising. It is always laid out
with ``Layout.BASIC``, so right-to-left text would come out in logical order, left to right (reversed), and unshaped.
Pillow's bitmap fallback font (no FreeType) raises on anything outside Latin-1, so for it such characters become "?".
"""

from __future__ import annotations

import unicodedata
import weakref
from string import ascii_letters, digits, punctuation

from PIL import ImageDraw, ImageFont

ELLIPSIS = "…"
NEWLINE = " / "  # what a line break inside a label becomes: the usual mark of a break in quoted running text
_ASCII_ELLIPSIS = "..."  # for fonts that cannot draw "…"
_SAMPLE = ascii_letters + digits + punctuation + " \ufffd" + ELLIPSIS  # for the narrowest glyph

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont | ImageFont.TransposedFont


def load_font(size: int) -> Font:
    """Pillow's embedded font at ``size`` px (one fixed-size bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


class _Clean(dict):
    """A ``str.translate`` table built on demand: controls to spaces, invisible format characters dropped."""

    def __missing__(self, code: int) -> str | None:
        char = chr(code)
        category = unicodedata.category(char)
        if category == "Cc" or char.isspace():
            value: str | None = " "
        elif category == "Cf" or 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF:
            value = None  # zero-width joiners, bidi overrides, soft hyphens, variation selectors: nothing to see
        elif category == "Cs":
            value = "\ufffd"  # a lone surrogate (undecodable bytes from argv): cannot be encoded anywhere
        else:
            value = char
        self[code] = value
        return value


_CLEAN = _Clean()


def _paragraphs(text: str) -> list[str]:
    """The non-empty lines of ``text``, each with controls and whitespace runs made one space, trimmed."""
    parts = (" ".join(line.translate(_CLEAN).split()) for line in str(text).splitlines())
    return [part for part in parts if part]


def single_line(text: str) -> str:
    """``text`` on one line: line breaks become " / ", other controls and whitespace runs one space, trimmed."""
    return NEWLINE.join(_paragraphs(text))


def _drawable(text: str, font: Font) -> str:
    """``text`` with what ``font`` would raise on replaced by "?" (only bitmap fonts raise: Latin-1 only)."""
    if isinstance(font, ImageFont.FreeTypeFont) or text.isascii():
        return text
    return text.encode("latin-1", "replace").decode("latin-1")


def _ellipsis(font: Font) -> str:
    return ELLIPSIS if isinstance(font, ImageFont.FreeTypeFont) else _ASCII_ELLIPSIS


_NARROWEST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _narrowest(font: Font) -> float:
    """The smallest advance (px, at least 1) among common glyphs and the box drawn for missing ones."""
    try:
        return _NARROWEST[font]
    except (KeyError, TypeError):
        pass
    widths = [font.getlength(char) for char in dict.fromkeys(_drawable(_SAMPLE, font))]
    narrowest = max(1.0, min(w for w in widths if w > 0) if any(w > 0 for w in widths) else 1.0)
    try:
        _NARROWEST[font] = narrowest
    except TypeError:  # not weak-referenceable: just not cached
        pass
    return narrowest


def _longest(draw: ImageDraw.ImageDraw, text: str, start: int, font: Font, width: float, suffix: str = "") -> int:
    """The largest k such that ``text[start:start + k]`` (right-trimmed if ``suffix``) + ``suffix`` fits; -1 if none.

    Starts from the most characters that could fit, doubling only while that much still fits (glyphs narrower than
    the estimate), then bisects: O(log k) measurements of at most about 2 k characters each.
    """
    remaining = len(text) - start

    def fits(k: int) -> bool:
        piece = text[start : start + k]
        return draw.textlength((piece.rstrip() if suffix else piece) + suffix, font=font) <= width

    if width < 0 or (suffix and not fits(0)):
        return -1
    lo, hi = 0, min(remaining, int(width // _narrowest(font)) + 1)
    while fits(hi):
        if hi >= remaining:
            return remaining
        lo, hi = hi, min(remaining, 2 * hi)
    while hi - lo > 1:  # text[:lo] fits, text[:hi] does not
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _elide_from(draw: ImageDraw.ImageDraw, text: str, start: int, font: Font, width: float) -> str:
    """``text[start:]`` if it fits, else its longest prefix that fits with the ellipsis, else ""."""
    whole = _longest(draw, text, start, font, width)
    if whole == len(text) - start:
        return text[start:]
    head = text[start : start + max(whole, 0)]  # bounded: at most what fits
    ellipsis = _ellipsis(font)
    keep = _longest(draw, head, 0, font, width, ellipsis)
    return head[:keep].rstrip() + ellipsis if keep >= 0 else ""


def elide(draw: ImageDraw.ImageDraw, text: str, font: Font, width: float) -> str:
    """``text`` on one line within ``width`` px: whole if it fits, else cut with "…" ("" if not even that fits)."""
    return _elide_from(draw, _drawable(single_line(text), font), 0, font, width)


def wrap(draw: ImageDraw.ImageDraw, text: str, font: Font, width: float, max_lines: int) -> list[str]:
    """``text`` word-wrapped into at most ``max_lines`` lines of ``width`` px, the last cut with "…" if text remains.

    Line breaks in ``text`` start a new line while lines are left (the last line joins what remains with " / ");
    words wider than a line are broken. An empty text, or a width too narrow for even "…", gives no lines. Each
    line costs O(log width) measurements of at most about a line's worth of characters, and wrapping stops when
    the lines are full, however long the text.
    """
    paragraphs = [_drawable(part, font) for part in _paragraphs(text)]
    lines: list[str] = []
    for p, paragraph in enumerate(paragraphs):
        start = 0
        while start < len(paragraph):
            fit = _longest(draw, paragraph, start, font, width) if len(lines) < max_lines - 1 else 0
            if fit <= 0:  # the last line, or not even one character fits: the rest, elided
                rest = NEWLINE.join([paragraph[start:], *paragraphs[p + 1 :]]) if len(lines) < max_lines else ""
                last = _elide_from(draw, rest, 0, font, width) if rest else ""
                return [*lines, last] if last else lines
            end = start + fit
            if end < len(paragraph):
                space = paragraph.rfind(" ", start, end + 1)  # break after the last whole word that fits
                if space > start:
                    end = space
            lines.append(paragraph[start:end].rstrip())
            start = end + 1 if end < len(paragraph) and paragraph[end] == " " else end
    return lines
