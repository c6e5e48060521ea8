"""Scheduler overhead, ours vs diffusers, side by side in one process.

For every scheduler of the family: microseconds per ``scale_model_input`` + ``step`` (one model call's worth of
scheduler work) and per ``set_timesteps``, on CPU with one thread and a 1x4x64x64 fp32 latent (SD 1.5's 512 px
latent), interleaving the two libraries over repetitions and reporting medians. A second table puts A1111's and
ComfyUI's samplers (our KSampler programs) beside the diffusers class of the same algorithm.

    .venv/bin/python benchmarks/scheduler_step.py [--steps 50] [--repeats 7]
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import time
from pathlib import Path

import diffusers
import torch
from rich.console import Console
from rich.table import Table

import schedcmp.core as core
from schedcmp.core.schedulers import SCHEDULER_CLASSES

SD15_CONFIG_FILE = Path(__file__).parents[1] / "tests/fixtures/sd15/scheduler/scheduler_config.json"
SD15_CONFIG = json.loads(SD15_CONFIG_FILE.read_text())
SHAPE = (1, 4, 64, 64)


# A tool's sampler and the diffusers class (with options) that runs the same algorithm.
TOOL_PEERS = (
    ("Euler", "EulerDiscreteScheduler", {}),
    ("Euler a", "EulerAncestralDiscreteScheduler", {}),
    ("Heun", "HeunDiscreteScheduler", {}),
    ("LMS", "LMSDiscreteScheduler", {}),
    ("DPM++ 2M", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    ("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++",
                                                     "use_exponential_sigmas": True}),
    ("comfy:uni_pc", "UniPCMultistepScheduler", {"solver_type": "bh1", "solver_order": 3}),
)


def time_loop(build, steps: int, model_outputs: list[torch.Tensor]) -> tuple[float, float]:
    """Seconds for one set_timesteps, and seconds per (scale_model_input + step) over a full loop of the scheduler
    ``build()`` makes."""
    scheduler = build()
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    kwargs = {"generator": torch.Generator().manual_seed(0)} if takes_generator else {}
    start = time.perf_counter()
    scheduler.set_timesteps(steps)
    set_timesteps_seconds = time.perf_counter() - start
    sample = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * scheduler.init_noise_sigma
    timesteps = list(scheduler.timesteps)
    start = time.perf_counter()
    for i, t in enumerate(timesteps):
        scheduler.scale_model_input(sample, t)
        sample = scheduler.step(model_outputs[i % len(model_outputs)], t, sample, **kwargs).prev_sample
    return set_timesteps_seconds, (time.perf_counter() - start) / len(timesteps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    diffusers.utils.logging.set_verbosity_error()
    generator = torch.Generator().manual_seed(2)
    model_outputs = [torch.randn(SHAPE, generator=generator) for _ in range(8)]

    title = f"Scheduler overhead, {args.steps} steps, 1x4x64x64 fp32, CPU 1 thread (median of {args.repeats})"
    rows = [(cls.__name__, lambda cls=cls: getattr(core, cls.__name__).from_config(SD15_CONFIG),
             lambda cls=cls: getattr(diffusers, cls.__name__).from_config(SD15_CONFIG)) for cls in SCHEDULER_CLASSES]
    Console(width=140).print(_table(title, rows, args, model_outputs))
    tools = [(f"{name} vs {peer}", lambda name=name: core.make_scheduler(name, config=SD15_CONFIG),
              lambda peer=peer, options=options: getattr(diffusers, peer).from_config(SD15_CONFIG, **options))
             for name, peer, options in TOOL_PEERS]
    Console(width=140).print(_table("Tool samplers against diffusers' class of the same algorithm", tools, args,
                                    model_outputs))


def _table(title: str, rows, args, model_outputs: list[torch.Tensor]) -> Table:
    """Our and diffusers' loop cost per row (name, build ours, build theirs), interleaved over repetitions."""
    table = Table(title=title)
    for column in ("scheduler", "step us (ours)", "step us (diffusers)", "ratio", "set_timesteps us (ours)",
                   "set_timesteps us (diffusers)", "ratio"):
        table.add_column(column, justify="left" if column == "scheduler" else "right")
    for name, ours, theirs in rows:
        ours_runs, theirs_runs = [], []
        for _ in range(args.repeats):  # interleaved A B A B so drift hits both alike
            ours_runs.append(time_loop(ours, args.steps, model_outputs))
            theirs_runs.append(time_loop(theirs, args.steps, model_outputs))
        ours_set, ours_step = (statistics.median(x) * 1e6 for x in zip(*ours_runs, strict=True))
        theirs_set, theirs_step = (statistics.median(x) * 1e6 for x in zip(*theirs_runs, strict=True))
        table.add_row(name, f"{ours_step:.0f}", f"{theirs_step:.0f}", f"{ours_step / theirs_step:.2f}",
                      f"{ours_set:.0f}", f"{theirs_set:.0f}", f"{ours_set / theirs_set:.2f}")
    return table


if __name__ == "__main__":
    main()
