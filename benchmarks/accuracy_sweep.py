"""Accuracy on builtin:shapes over many seeds: each scheduler's median latent RMSE against the exact solution.

For every alias but EDM Euler (which does not solve a DDPM model's ODE), at 5, 10, 20 and 50 steps, over
``--seeds`` seeds: the median RMSE against the exact float64 ODE solution from the same noise, and how many seeds
landed on the reference's own data-set image (RMSE < 1e-3). The table behind the accuracy notes.

    .venv/bin/python benchmarks/accuracy_sweep.py --prompt "a star" --seeds 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path[:0] = [str(Path(__file__).parents[1])]

from schedcmp.core.builtin import ShapesPipeline  # noqa: E402
from schedcmp.core.schedulers import ALIASES, EDMEulerScheduler  # noqa: E402
from schedcmp.engine import Engine  # noqa: E402
from schedcmp.plan import build_plan  # noqa: E402

SAME_IMAGE = 1e-3  # latent RMSE below which a run ended on the reference's data-set image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="a star")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--steps", default="5,10,20,50")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    pipeline = ShapesPipeline()
    names = [alias.name for alias in ALIASES if alias.cls is not EDMEulerScheduler]
    steps = [int(s) for s in args.steps.split(",")]
    errors: dict[tuple[str, int], list[float]] = {}
    stochastic: dict[str, bool] = {}
    for seed in range(args.seeds):
        plan = build_plan(None, {"prompt": args.prompt, "schedulers": ",".join(names), "steps": args.steps,
                                 "seed": seed, "guidance": args.guidance})
        for result in Engine(pipeline, plan).run().results:
            errors.setdefault((result.spec.scheduler, result.spec.steps), []).append(result.accuracy.latent_rmse)
            stochastic[result.spec.scheduler] = result.accuracy.stochastic
    table = Table(title=f'Median latent RMSE against the exact solution (seeds landing on its image), "{args.prompt}", '
                        f"guidance {args.guidance:g}, {args.seeds} seeds", title_justify="left")
    table.add_column("scheduler")
    for count in steps:
        table.add_column(f"{count} steps", justify="right")
    for name in names:
        cells = []
        for count in steps:
            values = errors[name, count]
            same = sum(value < SAME_IMAGE for value in values)
            cells.append(f"{statistics.median(values):.2g} ({same}/{len(values)})")
        table.add_row(name + (" (stochastic)" if stochastic[name] else ""), *cells)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
