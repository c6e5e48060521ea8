"""A sweep on one process against the same sweep over torch.distributed ranks, whole processes as a user runs them.

For each plan, interleaved over repetitions (A B C A B C ...): (a) `python -m schedcmp run ...` alone, (b)
`torchrun --standalone --nproc-per-node N -m schedcmp run ...`, (c) `schedcmp run --workers N ...`. Prints the
wall seconds of each whole command (min / median / max, start-up and writing included), the sampling wall time the
sweep records (its first reference to its last cell), and the speed-ups over the one process on all cores. The
images of every world are checked equal to a one-thread process's (sequential mode: oneDNN rounds by thread
count), so a fast wrong answer cannot pass.

    .venv/bin/python benchmarks/distributed.py                 # CPU, gloo: builtin:shapes and tiny SD, 2 ranks
    .venv/bin/python benchmarks/distributed.py --ranks 8 --plans shapes --repeats 3   # a node of 8 GPUs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).parents[1]
sys.path[:0] = [str(ROOT / "tests")]

SHAPES = ("--schedulers", "euler,heun,dpm,unipc,Euler a,DPM++ 2M", "--steps", "50,100", "--seeds", "1-8")
TINY_SD = ("--prompt", "a cat", "--schedulers", "euler,heun,dpm,DPM++ 2M SDE", "--steps", "10,20",
           "--seeds", "1-4", "--reference", "dpm:40")


def plans(work: Path, names: list[str]) -> dict[str, tuple[str, ...]]:
    """The benchmark's sweeps by name (tiny SD built into ``work`` with diffusers)."""
    chosen = {}
    if "shapes" in names:
        chosen["builtin:shapes, 8 seeds x 6 samplers x 2 steps"] = SHAPES
    if "tiny-sd" in names:
        from tiny_sd import build_tiny_sd

        build_tiny_sd(work / "tiny-sd")
        chosen["tiny SD 1.x 16x16, 4 seeds x 4 samplers x 2 steps"] = ("--model", str(work / "tiny-sd"), *TINY_SD)
    return chosen


def commands(ranks: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    """How each side starts, and its environment: one process on all cores (what a user gets by default), one
    process on one thread (a rank's share of the cores, and the images every world must equal bit for bit),
    torchrun, and --workers (both give each rank cores / ranks threads)."""
    python = [sys.executable]
    base = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"} | {"NO_COLOR": "1"}
    per_rank = str(max(1, (os.cpu_count() or 1) // ranks))
    return {
        "one process, all cores": ([*python, "-m", "schedcmp", "run"], base),
        "one process, 1 thread": ([*python, "-m", "schedcmp", "run"], base | {"OMP_NUM_THREADS": "1"}),
        f"torchrun x{ranks}": ([*python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
                                "-m", "schedcmp", "run"], base | {"OMP_NUM_THREADS": per_rank}),
        f"--workers {ranks}": ([*python, "-m", "schedcmp", "run", "--workers", str(ranks)], base),
    }


def timed(command: list[str], args: tuple[str, ...], out: Path, env: dict[str, str]) -> tuple[float, float]:
    """Whole-process wall seconds of the command, and the sampling wall time its sweep.json records."""
    start = time.perf_counter()
    finished = subprocess.run([*command, *args, "--out", str(out), "--overwrite"], env=env, capture_output=True,
                              text=True)
    wall = time.perf_counter() - start
    if finished.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({finished.returncode}): {finished.stderr[-2000:]}")
    return wall, json.loads((out / "sweep.json").read_text())["ranks"]["wall_seconds"]


def same_images(expected: Path, actual: Path) -> bool:
    return all(np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(actual / p.relative_to(expected))))
               for p in expected.glob("pages/*/images/*.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plans", default="shapes,tiny-sd")
    parser.add_argument("--device", default="auto")
    arguments = parser.parse_args()
    console = Console(width=170)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        table = Table(title=f"Sweeps over {arguments.ranks} ranks against one process ({os.cpu_count()} cores, "
                            f"device {arguments.device}); speed-ups over one process on all cores")
        for column in ("plan", "started as", "whole s (min / median / max)", "sampling s", "speed-up whole",
                       "speed-up sampling", "images vs 1 thread"):
            table.add_column(column, justify="left" if column in ("plan", "started as") else "right")
        for name, args in plans(work, arguments.plans.split(",")).items():
            args = (*args, "--device", arguments.device)
            sides = commands(arguments.ranks)
            walls: dict[str, list[float]] = {side: [] for side in sides}
            sampling: dict[str, list[float]] = {side: [] for side in sides}
            for _ in range(arguments.repeats):
                for side, (command, env) in sides.items():
                    wall, sampled = timed(command, args, work / side.replace(" ", "_"), env)
                    walls[side].append(wall)
                    sampling[side].append(sampled)
            alone, one_thread = list(sides)[:2]
            for side in sides:
                whole = walls[side]
                equal = same_images(work / one_thread.replace(" ", "_"), work / side.replace(" ", "_"))
                table.add_row(name, side, f"{min(whole):.2f} / {statistics.median(whole):.2f} / {max(whole):.2f}",
                              f"{statistics.median(sampling[side]):.2f}",
                              f"{statistics.median(walls[alone]) / statistics.median(whole):.2f}x",
                              f"{statistics.median(sampling[alone]) / statistics.median(sampling[side]):.2f}x",
                              "equal" if equal else "differ")
        console.print(table)


if __name__ == "__main__":
    main()
