"""End to end: the diffusers "swap the scheduler and call the pipeline again" loop against schedcmp.

For each model and plan, in one process, interleaved over repetitions (A B C A B C ...):
  (a) diffusers' StableDiffusionPipeline looping over ``from_config`` swaps exactly as the guide does,
  (b) schedcmp in sequential mode, (c) schedcmp in batched mode,
with the same model folder, size, guidance, seed and dtype. Prints median wall seconds, the ratios ours /
diffusers, the peak memory of the tensors each side allocates (activations, weights excluded: CUDA allocator
statistics on a GPU, live tensor bytes counted by a dispatch mode on the CPU; one extra untimed pass each), and
the largest pixel difference between the libraries' images, so a fast wrong answer cannot pass (DPMSolverSDE
runs are left out of that check: diffusers draws their noise from torchsde, we from the run's generator).
builtin:shapes has no diffusers counterpart and is timed for schedcmp alone.

    .venv/bin/python benchmarks/e2e.py                       # CPU: tiny SD, reduced SD 1.5 shape, builtin
    .venv/bin/python benchmarks/e2e.py --device cuda --dtype fp16 --size 512 --models sd15   # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from functools import partial
from pathlib import Path

import diffusers
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from sd_models import build_sd15_folder, diffusers_loop  # noqa: E402
from tiny_sd import build_tiny_sd  # noqa: E402

from schedcmp.core.load import load_pipeline  # noqa: E402
from schedcmp.core.schedulers import ALIASES  # noqa: E402
from schedcmp.engine import Engine  # noqa: E402
from schedcmp.memory import peak_call_bytes  # noqa: E402
from schedcmp.plan import build_plan  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PROMPT = "A photograph of an astronaut riding a horse on Mars, high resolution, high definition."


def plans(model: str, size: int) -> dict[str, dict]:
    """The seven runs of the guide, and every alias at 10, 20 and 30 steps."""
    common = {"model": model, "size": f"{size}x{size}", "prompt": PROMPT, "reference": "none"}  # timing only
    return {
        "seed-doc (7 runs)": {"path": ROOT / "configs" / "seed-doc.yaml", **common},
        "15 schedulers x {10,20,30}": {
            "path": None, "schedulers": ",".join(a.name for a in ALIASES), "steps": "10,20,30", **common
        },
    }


def ours_run(pipeline, plan) -> tuple[float, list[np.ndarray]]:
    """schedcmp's engine on the plan; wall seconds and images."""
    report = Engine(pipeline, plan).run()
    images = [np.asarray(r.image, dtype=np.float32) / 255 for r in report.results]
    return report.wall_seconds, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--models", default="tiny,reduced,builtin")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny models stall with more)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    diffusers.utils.logging.set_verbosity_error()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    table = Table(title=f"End to end on {args.device} {args.dtype}: median wall seconds of {args.repeats} "
                        "interleaved repetitions")
    for column in ("model", "plan", "diffusers loop", "schedcmp sequential", "ratio", "schedcmp batched", "ratio",
                   "max pixel diff", "peak MiB diffusers / seq / batched"):
        table.add_column(column, justify="left" if column in ("model", "plan") else "right")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            if model == "builtin":
                folder, pipe, size = "builtin:shapes", None, 64
                pipeline = load_pipeline(folder, device, torch.float32)
            else:
                path = Path(tmp) / model
                if model == "tiny":
                    build_tiny_sd(path, "sd1")
                else:
                    build_sd15_folder(path, reduced=model == "reduced", device=args.device, dtype=dtype)
                folder, size = str(path), args.size if model != "tiny" else 32
                pipeline = load_pipeline(folder, device, dtype)
                pipe = diffusers.StableDiffusionPipeline.from_pretrained(path, torch_dtype=dtype).to(device)
                pipe.set_progress_bar_config(disable=True)
            for plan_name, spec in plans(folder, size).items():
                path = spec.pop("path")
                seconds: dict[str, list[float]] = {"diffusers": [], "sequential": [], "batched": []}
                difference = float("nan")
                for _ in range(args.repeats):
                    if pipe is not None:
                        elapsed, theirs = diffusers_loop(pipe, build_plan(path, spec), size, device)
                        seconds["diffusers"].append(elapsed)
                    for mode in ("sequential", "batched"):
                        elapsed, ours = ours_run(pipeline, build_plan(path, {**spec, "mode": mode}))
                        seconds[mode].append(elapsed)
                    if pipe is not None:
                        # DPMSolverSDE draws its Brownian noise from the generator here, from torchsde there.
                        runs = build_plan(path, spec).runs
                        same_noise = [r.preset.cls.__name__ != "DPMSolverSDEScheduler" for r in runs]
                        difference = max(
                            float(np.abs(a - b).max())
                            for a, b, comparable in zip(ours, theirs, same_noise, strict=True)
                            if comparable
                        )
                peaks = {  # MiB, one untimed pass each
                    mode: peak_call_bytes(partial(ours_run, pipeline, build_plan(path, {**spec, "mode": mode})),
                                          device) >> 20
                    for mode in ("sequential", "batched")
                }
                if pipe is not None:
                    peaks["diffusers"] = peak_call_bytes(
                        partial(diffusers_loop, pipe, build_plan(path, spec), size, device), device) >> 20
                median = {k: statistics.median(v) if v else float("nan") for k, v in seconds.items()}
                table.add_row(
                    model, plan_name, f"{median['diffusers']:.2f}", f"{median['sequential']:.2f}",
                    f"{median['sequential'] / median['diffusers']:.2f}", f"{median['batched']:.2f}",
                    f"{median['batched'] / median['diffusers']:.2f}", f"{difference:.4f}",
                    f"{peaks.get('diffusers', '—')} / {peaks['sequential']} / {peaks['batched']}",
                )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
