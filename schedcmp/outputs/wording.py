"""How durations read in every output: grid captions, the HTML report."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """'2.1 ms' under a second (fast models would read '0.00 s' otherwise), '12.34 s' from a second up."""
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
