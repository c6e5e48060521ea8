"""Sweep axes written as A1111's X/Y/Z plot writes them: lists and ranges of numbers.

A value is a comma-separated list whose items are numbers or ranges (A1111 ``modules/scripts/xyz_grid.py``):
``1-5`` (every whole number from 1 to 5), ``1-10 (+2)`` (from 1 to 10 in steps of 2; ``(-2)`` counts down), and
``1-10 [5]`` (5 values evenly spaced from 1 to 10, ends included; whole-number axes truncate them as A1111 does).
A range whose end is below its start counts down (A1111's would be empty). YAML lists of numbers work too.
Whole-number axes (seeds) refuse fractions; every axis refuses an empty list and more than ``MAX_VALUES`` values.
"""

from __future__ import annotations

import math
import re
from typing import Any

MAX_VALUES = 10_000  # values one axis may expand to (a 16,000-image sweep has fewer per axis)
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_RANGE = re.compile(rf"^\s*({_NUMBER})\s*-\s*({_NUMBER})\s*(?:\(\s*([+-]\s*{_NUMBER})\s*\)|\[\s*(\d+)\s*\])?\s*$")
_SINGLE = re.compile(rf"^\s*{_NUMBER}\s*$")


def _items(value: Any) -> list[Any]:
    if isinstance(value, str):
        return value.split(",")
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _expand(text: str, what: str, whole: bool) -> list[float]:
    """One item: a number or a range, as A1111 expands it."""
    if _SINGLE.match(text):
        return [float(text)]
    match = _RANGE.match(text)
    if match is None:
        raise ValueError(f"{what}: cannot read {text.strip()!r}; write numbers and ranges such as 8, 1-5, "
                         "1-10 (+2) or 1-10 [5]")
    start, end = float(match[1]), float(match[2])
    if match[4] is not None:  # [count]: evenly spaced, both ends included
        count = int(match[4])
        if count < 1:
            raise ValueError(f"{what}: {text.strip()!r} asks for {count} values; give at least 1")
        if count > MAX_VALUES:
            raise ValueError(f"{what}: {text.strip()!r} asks for {count} values; at most {MAX_VALUES}")
        if count == 1:
            return [start]
        values = [start + (end - start) * k / (count - 1) for k in range(count)]
        return [float(int(v)) for v in values] if whole else values  # A1111 truncates: int(linspace)
    step = float(match[3].replace(" ", "")) if match[3] is not None else (1.0 if end >= start else -1.0)
    if step == 0 or (end - start) * step < 0:
        raise ValueError(f"{what}: {text.strip()!r} never reaches its end with a step of {step:g}")
    count = math.floor((end - start) / step + 1e-9) + 1
    if count > MAX_VALUES:
        raise ValueError(f"{what}: {text.strip()!r} expands to {count} values; at most {MAX_VALUES}")
    return [start + k * step for k in range(count)]


def parse_axis(value: Any, what: str, whole: bool = False) -> list[float] | list[int]:
    """The values of one sweep axis (see the module docstring); ValueError with a one-line reason otherwise."""
    values: list[float] = []
    for item in _items(value):
        if isinstance(item, bool) or not isinstance(item, (int, float, str)):
            raise ValueError(f"{what}: cannot read {item!r}; write numbers and ranges such as 8, 1-5, 1-10 (+2)")
        if isinstance(item, str):
            if not item.strip():
                continue
            values.extend(_expand(item, what, whole))
        else:
            values.append(float(item))
        if len(values) > MAX_VALUES:
            raise ValueError(f"{what}: more than {MAX_VALUES} values")
    if not values:
        raise ValueError(f"{what}: give at least one value")
    if any(not math.isfinite(v) for v in values):
        raise ValueError(f"{what}: values must be finite numbers")
    if whole:
        fractions = [v for v in values if v != int(v)]
        if fractions:
            raise ValueError(f"{what} must be whole numbers, got {fractions[0]:g}")
        return [int(v) for v in values]
    return values
