"""Peak memory of loading a single-file checkpoint: schedcmp's streaming loader against diffusers' from_single_file.

Builds random-weight SD 1.5 (or, with ``--family sdxl``, SDXL base) from the real configs, writes it as one
original-layout ``.safetensors`` file (tests/single_file_writer.py), then loads it in fresh processes and prints
each one's peak resident memory while loading and touching every weight (mapped tensors count once read), above
what its imports hold, against the file's size, side by side:

    python benchmarks/single_file_memory.py                   # SD 1.5, fp16 file, loaded in fp16 (~2 GB)
    python benchmarks/single_file_memory.py --family sdxl     # SDXL base (~7 GB file; needs ~30 GB free disk/RAM)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from sd_models import build_sd15_folder, build_sdxl_folder  # noqa: E402
from single_file_writer import write_single_file  # noqa: E402

BUILDERS = {"sd1": build_sd15_folder, "sdxl": build_sdxl_folder}

# Each loader runs in its own process and prints its peak RSS (VmHWM, KiB; reset by exec, unlike ru_maxrss, which a
# child inherits from the process that forked it) after the imports and after loading, as JSON.
LOAD = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import torch, diffusers
import schedcmp.core as core

def high_water():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

which, file, folder = sys.argv[1:4]
before = high_water()
if which == "schedcmp":
    pipe = core.DiffusionPipeline.from_single_file(file, torch_dtype=torch.float16)
elif which == "diffusers":
    cls = diffusers.StableDiffusionXLPipeline if "xl" in folder else diffusers.StableDiffusionPipeline
    extra = {"add_watermarker": False} if "xl" in folder else {"safety_checker": None, "requires_safety_checker": False}
    pipe = cls.from_single_file(file, config=folder, local_files_only=True, torch_dtype=torch.float16, **extra)
# safetensors tensors may still be mapped, not read: touch every weight, as the first image will
for component in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
    if component is not None:
        for parameter in component.parameters():
            parameter.detach().view(-1)[:: 1 << 10].sum()
print(json.dumps({"before": before, "peak": high_water()}))
"""


def peak_mib(which: str, file: Path, folder: Path) -> tuple[float, float]:
    """(RSS after the imports, peak RSS above it while loading ``file`` with ``which``) of a fresh process, MiB."""
    out = subprocess.run([sys.executable, "-c", LOAD, which, str(file), str(folder)], capture_output=True, text=True,
                         check=True, env={"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    marks = json.loads(out.stdout.strip().splitlines()[-1])
    return marks["before"] / 1024, (marks["peak"] - marks["before"]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="sd1", choices=list(BUILDERS))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / ("sdxl-folder" if args.family == "sdxl" else "sd15-folder")
        BUILDERS[args.family](folder, False, "cpu", torch.float16)
        file = write_single_file(folder, args.family, Path(tmp) / "model.safetensors", dtype=torch.float16)
        size = file.stat().st_size / 2**20
        marks = {name: peak_mib(name, file, folder) for name in ("diffusers", "schedcmp")}
        rows = {name: peak for name, (_, peak) in marks.items()}
    imports = ", ".join(f"{name} {before:.0f}" for name, (before, _) in marks.items())
    print(f"{args.family} fp16 file: {size:.0f} MiB; peak RSS while loading, above the imports ({imports} MiB):")
    print("| loader | MiB | x file size | x diffusers |")
    print("|---|---|---|---|")
    for name, mib in rows.items():
        print(f"| {name} | {mib:.0f} | {mib / size:.2f} | {mib / rows['diffusers']:.2f} |")


if __name__ == "__main__":
    main()
