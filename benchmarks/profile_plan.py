"""Where the time goes: torch.profiler's top operators for the diffusers loop and schedcmp's two modes.

Runs ``configs/seed-doc.yaml`` on the tiny test SD (32x32, CPU, fp32, one thread) once per way, after one
untimed pass of the diffusers loop, and prints each way's total operator self time and its largest operators:
the profile behind the README's note that the tiny model's batched ratio is bound by attention.

    .venv/bin/python benchmarks/profile_plan.py
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import diffusers
import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from sd_models import diffusers_loop  # noqa: E402
from tiny_sd import build_tiny_sd  # noqa: E402

from schedcmp.core.load import load_pipeline  # noqa: E402
from schedcmp.engine import Engine  # noqa: E402
from schedcmp.plan import build_plan  # noqa: E402

PLAN = ROOT / "configs" / "seed-doc.yaml"
TOP = 5


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    diffusers.utils.logging.set_verbosity_error()
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tiny"
        build_tiny_sd(folder, "sd1")
        ours = load_pipeline(str(folder), cpu, torch.float32)
        theirs = diffusers.StableDiffusionPipeline.from_pretrained(folder).to(cpu)
        theirs.set_progress_bar_config(disable=True)
        spec = {"model": str(folder), "size": "32x32", "reference": "none"}
        plans = {mode: build_plan(PLAN, {**spec, "mode": mode}) for mode in ("sequential", "batched")}
        diffusers_loop(theirs, plans["sequential"], 32, cpu)  # warm-up
        ways = {
            "diffusers loop": lambda: diffusers_loop(theirs, plans["sequential"], 32, cpu),
            "schedcmp sequential": lambda: Engine(ours, plans["sequential"]).run(),
            "schedcmp batched": lambda: Engine(ours, plans["batched"]).run(),
        }
        for name, run in ways.items():
            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                run()
            events = sorted(profiler.key_averages(), key=lambda e: -e.self_cpu_time_total)
            total = sum(e.self_cpu_time_total for e in events)
            top = "; ".join(f"{e.key} {e.self_cpu_time_total / 1e6:.2f} s ({100 * e.self_cpu_time_total / total:.0f}%)"
                            for e in events[:TOP])
            print(f"{name}: operator self time {total / 1e6:.2f} s; {top}")


if __name__ == "__main__":
    main()
