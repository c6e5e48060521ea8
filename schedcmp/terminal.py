"""Where the tool's words go: results (tables, JSON) to stdout; progress, warnings and errors to stderr, each
message on one line. Consoles are created on first use."""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

WIDE = 160  # columns for tables written to a file or a pipe


@functools.cache
def out() -> Any:
    """The console for results on stdout."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else WIDE)


@functools.cache
def err() -> Any:
    """The console for progress, warnings and errors on stderr."""
    from rich.console import Console

    return Console(stderr=True, width=None if sys.stderr.isatty() else WIDE)


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(str(text).split())


def error(message: str) -> None:
    """'error: ...' on stderr, one line."""
    _say("bold red", "error", message)


def warning(message: str) -> None:
    """'warning: ...' on stderr, one line."""
    _say("yellow", "warning", message)


def note(label: str, message: str) -> None:
    """'<label>: ...' on stderr, one line (interrupted:, determinism:, expect:)."""
    _say("yellow", label, message)


def _say(style: str, label: str, message: str) -> None:
    from rich.markup import escape

    err().print(f"[{style}]{label}:[/{style}] {escape(one_line(message))}", highlight=False, soft_wrap=True)


def show(renderable: Any) -> None:
    """A table or a line of results on stdout."""
    out().print(renderable, highlight=False)


@contextmanager
def shown_warnings(into: list[str]) -> Iterator[None]:
    """Collect the warnings the block raises, print each once as one line, and append them to ``into``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for message in dict.fromkeys(str(w.message) for w in caught):
                warning(message)
                into.append(message)
