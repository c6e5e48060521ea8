"""Parity with diffusers, summarised: per scheduler, how many table cases match and the largest error seen.

Runs every case of tests/scheduler_cases.py (the parity test table) and prints, per class, the cases compared,
the cases both libraries refuse, and the largest relative error of any prev_sample (max |ours - theirs| over the
reference's largest magnitude, per step).

    .venv/bin/python benchmarks/parity_table.py
"""

from __future__ import annotations

import sys
import warnings
from collections import defaultdict
from pathlib import Path

import diffusers
import torch
from rich.console import Console
from rich.table import Table

sys.path[:0] = [str(Path(__file__).parents[1] / "tests")]

from scheduler_cases import ALL_CASES, CLASS_NAMES  # noqa: E402
from test_scheduler_parity import PhaseError, run_loop  # noqa: E402

import schedcmp.core as core  # noqa: E402


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    finite = torch.isfinite(theirs) & torch.isfinite(ours)
    if not finite.any():
        return 0.0
    a, b = ours[finite].double(), theirs[finite].double()
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-6)).item()


def main() -> None:
    warnings.simplefilter("ignore")
    diffusers.utils.logging.set_verbosity_error()
    compared, refused, worst = defaultdict(int), defaultdict(int), defaultdict(float)
    for case in ALL_CASES:
        try:
            theirs = run_loop(getattr(diffusers, case.class_name), case, ours=False)
        except PhaseError:
            refused[case.class_name] += 1
            continue
        ours = run_loop(getattr(core, case.class_name), case, ours=True)
        compared[case.class_name] += 1
        for a, b in zip(ours.prev_samples, theirs.prev_samples, strict=True):
            worst[case.class_name] = max(worst[case.class_name], relative_error(a, b))
    table = Table(title="Parity with diffusers 0.42 (fp32, CPU): every case of the parity table")
    for column in ("scheduler", "cases compared", "refused by both", "max relative error (prev_sample)"):
        table.add_column(column, justify="left" if column == "scheduler" else "right")
    for name in CLASS_NAMES:
        table.add_row(name, str(compared[name]), str(refused[name]), f"{worst[name]:.2e}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
