"""Fitting text into pixels: any text (line breaks, emoji, right-to-left, CJK, huge, empty) comes out as lines that
fit, on one line each, with "…" exactly when something was left out, in a number of measurements that does not grow
with the text's length."""

from __future__ import annotations

import math

import pytest
from PIL import Image, ImageDraw, ImageFont

from schedcmp.outputs.text import ELLIPSIS, NEWLINE, elide, load_font, single_line, wrap

FONT = load_font(18)
DRAW = ImageDraw.Draw(Image.new("RGB", (1, 1)))

TEXTS = {
    "short": "a red circle",
    "newlines": "line one\nline two 🎨 مرحبا\r\n\n\tline three",
    "emoji only": "🎨🖼️👨‍👩‍👧✨",
    "arabic": "دائرة حمراء على خلفية زرقاء",
    "hebrew": "עיגול אדום על רקע כחול",
    "cjk": "蓝色背景上的红色圆圈，高质量，细节丰富",
    "mixed": "a red circle, 赤い円, دائرة, עיגול 🎨",
    "controls": "tab\there\x00nul\x1bescape\u202eoverride\u200bzero width\ufeffbom",
    "20k words": "a red circle on a blue background, " * 572,
    "5000-char word": "x" * 5000,
    "long word among short": "short words then " + "W" * 300 + " and more",
    "empty": "",
    "whitespace only": " \t\n\r\n \u3000\u00a0 ",
    "lone surrogate": "bad \udcff bytes",
}
WIDTHS = [0, 5, 40, 150, 600]


def fits(line: str, width: float) -> bool:
    return DRAW.textlength(line, font=FONT) <= width


def squash(text: str) -> str:
    """The visible characters only, so wrapped lines can be compared with the text they came from."""
    return "".join(text.split()).replace("/", "")


class CountingDraw:
    """Forwards ``textlength`` to a real ImageDraw, counting the calls and the longest text measured."""

    def __init__(self) -> None:
        self.calls, self.longest = 0, 0

    def textlength(self, text: str, font=None, **kwargs) -> float:
        self.calls += 1
        self.longest = max(self.longest, len(text))
        return DRAW.textlength(text, font=font, **kwargs)


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_single_line_has_no_breaks_controls_or_runs_of_spaces(text: str) -> None:
    line = single_line(text)
    assert "\n" not in line and "\r" not in line and "\t" not in line
    assert all(c.isprintable() or c == " " for c in line), repr(line)
    assert "  " not in line and line == line.strip()
    assert single_line(line) == line


def test_single_line_marks_line_breaks_and_drops_invisible_characters() -> None:
    assert single_line("line one\n\n  line two\r\nthree") == f"line one{NEWLINE}line two{NEWLINE}three"
    assert single_line("a\tb\x00c  \u3000d") == "a b c d"
    assert single_line("x\u200dy\u202ez\ufe0f") == "xyz"
    assert single_line(" \n\t ") == ""


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_elide_fits_on_one_line_and_marks_what_it_cut(text: str, width: int) -> None:
    line = elide(DRAW, text, FONT, width)
    whole = single_line(text)
    assert fits(line, width)
    assert "\n" not in line
    if line != whole:
        assert line.endswith(ELLIPSIS) or (line == "" and not fits(ELLIPSIS, width))
        assert whole.startswith(line.removesuffix(ELLIPSIS))
    else:
        assert not line.endswith(ELLIPSIS)
    if fits(whole, width):
        assert line == whole


def test_elide_keeps_the_longest_prefix_that_fits() -> None:
    text = "abcdefghijklmnopqrstuvwxyz" * 4
    line = elide(DRAW, text, FONT, 150)
    kept = len(line) - 1
    assert fits(text[:kept] + ELLIPSIS, 150) and not fits(text[: kept + 1] + ELLIPSIS, 150)


@pytest.mark.parametrize("max_lines", [1, 3])
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_wrap_fills_at_most_max_lines_that_fit(text: str, width: int, max_lines: int) -> None:
    lines = wrap(DRAW, text, FONT, width, max_lines)
    assert len(lines) <= max_lines
    assert all(fits(line, width) and "\n" not in line and line for line in lines)
    assert all(not line.endswith(ELLIPSIS) for line in lines[:-1])
    shown = squash("".join(lines).removesuffix(ELLIPSIS))
    if lines and lines[-1].endswith(ELLIPSIS):
        assert squash(single_line(text)).startswith(shown) and shown != squash(single_line(text))
    elif fits(ELLIPSIS, width):  # narrower than "…": the one case where text can be left out unmarked
        assert shown == squash(single_line(text)), "text left out without an ellipsis"


def test_wrap_breaks_at_spaces_and_starts_a_line_at_each_line_break() -> None:
    assert wrap(DRAW, "a red circle on a blue background", FONT, 200, 3) == ["a red circle on a blue", "background"]
    assert wrap(DRAW, "one\ntwo\nthree\nfour", FONT, 200, 3) == ["one", "two", f"three{NEWLINE}four"]
    assert wrap(DRAW, "", FONT, 200, 3) == [] and wrap(DRAW, "text", FONT, 200, 0) == []


def test_wrap_breaks_a_word_wider_than_the_line() -> None:
    lines = wrap(DRAW, "see " + "x" * 5000 + " end", FONT, 200, 3)
    assert lines[0] == "see" and len(lines) == 3 and lines[-1].endswith(ELLIPSIS)
    assert set(lines[1]) == {"x"} and fits(lines[1], 200) and not fits(lines[1] + "x", 200)


@pytest.mark.parametrize("function", ["elide", "wrap"])
@pytest.mark.parametrize("text", ["a red circle on a blue background, ", "x", "🎨 مرحبا "], ids=["words", "one word", "tofu"])
def test_measurements_do_not_grow_with_the_length_of_the_text(function: str, text: str) -> None:
    counts = {}
    for length in (20_000, 200_000):
        draw = CountingDraw()
        long = (text * (length // len(text) + 1))[:length]
        if function == "elide":
            elide(draw, long, FONT, 400)
        else:
            wrap(draw, long, FONT, 400, 3)
        counts[length] = draw.calls
        assert draw.longest <= 400 + 2, "measured more than could ever fit on a line"  # 400 px / 1 px glyphs + "…"
    lines = 1 if function == "elide" else 3
    assert counts[200_000] <= counts[20_000] + 2 * lines * math.ceil(math.log2(10))
    assert counts[20_000] <= lines * 4 * math.log2(20_000)


def test_a_bitmap_font_gets_substitutes_instead_of_raising() -> None:
    bitmap = ImageFont.load_default_imagefont()  # Pillow without FreeType: Latin-1 only, raises on the rest
    line = elide(DRAW, "a red circle 🎨 مرحبا " * 20, bitmap, 200)
    assert line.endswith("...") and "?" in line and DRAW.textlength(line, font=bitmap) <= 200
    assert all(DRAW.textlength(part, font=bitmap) <= 100 for part in wrap(DRAW, "🎨 line\nتوقف", bitmap, 100, 3))
