"""How numbers read in every output (tables, grid captions, the plot, the HTML report): one function per kind of
number, each safe for None, NaN and infinities."""

from __future__ import annotations

import math

MISSING = ""  # what a number that was never measured reads as


def _special(value: float | None) -> str | None:
    """The wording of a value that is not an ordinary finite number, or None for one that is."""
    if value is None:
        return MISSING
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return None


def duration(seconds: float | None) -> str:
    """'2.1 ms' under a second (fast models would read '0.00 s' otherwise), '12.34 s' from a second up."""
    special = _special(seconds)
    if special is not None:
        return special
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def number(value: float | None, spec: str = ".3g") -> str:
    """A measured value in format ``spec`` ('.3g': 0.0123), with nan and ∞ spelled out and None left empty."""
    special = _special(value)
    return special if special is not None else f"{value:{spec}}"


def milliseconds(seconds: float | None) -> str:
    """Seconds shown as milliseconds with two decimals ('12.34')."""
    special = _special(seconds)
    return special if special is not None else f"{seconds * 1e3:.2f}"


def psnr_db(value: float | None) -> str:
    """A PSNR in dB with one decimal; ∞ for identical images."""
    return number(value, ".1f")


def accuracy_caption(latent_rmse: float | None, psnr: float | None, stochastic: bool) -> str:
    """'RMSE 0.0123 · 38.1 dB' (or 'identical to the reference'), marked when the sampler is stochastic."""
    if psnr is not None and math.isinf(psnr) and psnr > 0:
        text = "identical to the reference"
    else:
        text = f"RMSE {number(latent_rmse)} · {psnr_db(psnr)} dB"
    return text + (" · stochastic" if stochastic else "")
