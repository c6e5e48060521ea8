"""Sweep axes in A1111's X/Y/Z syntax: lists and ranges, and a one-line reason for everything else."""

from __future__ import annotations

import pytest

from schedcmp.axes import parse_axis


@pytest.mark.parametrize(("text", "whole", "values"), [
    ("8", True, [8]),
    ("8,9,10", True, [8, 9, 10]),
    ("1-5", True, [1, 2, 3, 4, 5]),
    ("1-10 (+2)", True, [1, 3, 5, 7, 9]),
    ("10-1 (-3)", True, [10, 7, 4, 1]),
    ("1-10 [5]", True, [1, 3, 5, 7, 10]),  # int(linspace(1, 10, 5)) = 1, 3, 5, 7, 10
    ("5-1", True, [5, 4, 3, 2, 1]),
    ("1-3, 7, 20-22", True, [1, 2, 3, 7, 20, 21, 22]),
    ([4, 6], True, [4, 6]),
    (12, True, [12]),
    ("5, 7.5", False, [5.0, 7.5]),
    ("3-9 (+1.5)", False, [3.0, 4.5, 6.0, 7.5, 9.0]),
    ("1-2 [3]", False, [1.0, 1.5, 2.0]),
    ([2.5, 8], False, [2.5, 8.0]),
])
def test_axis_values(text, whole, values) -> None:
    assert parse_axis(text, "seeds" if whole else "guidance", whole=whole) == values


@pytest.mark.parametrize(("text", "whole", "message"), [
    ("one", True, "seeds: cannot read 'one'; write numbers and ranges such as 8, 1-5, 1-10 (+2) or 1-10 [5]"),
    ("", True, "seeds: give at least one value"),
    ("1.5", True, "seeds must be whole numbers, got 1.5"),
    ("1-10 (-1)", True, "seeds: '1-10 (-1)' never reaches its end with a step of -1"),
    ("1-10 (+0)", True, "seeds: '1-10 (+0)' never reaches its end with a step of 0"),
    ("1-100000", True, "seeds: '1-100000' expands to 100000 values; at most 10000"),
    ("1-10 [0]", True, "seeds: '1-10 [0]' asks for 0 values; give at least 1"),
    ([True], True, "seeds: cannot read True; write numbers and ranges such as 8, 1-5, 1-10 (+2)"),
    ("nan", False, "guidance: cannot read 'nan'; write numbers and ranges such as 8, 1-5, 1-10 (+2) or 1-10 [5]"),
])
def test_bad_axis_values_say_what_is_wrong(text, whole, message) -> None:
    with pytest.raises(ValueError) as error:
        parse_axis(text, "seeds" if whole else "guidance", whole=whole)
    assert str(error.value) == message
