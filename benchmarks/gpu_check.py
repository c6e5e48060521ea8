"""GPU check: random-weight SD 1.5-shaped models from the real configs, parity and speed against diffusers.

Builds the UNet, VAE and CLIP text encoder from ``tests/fixtures/sd15`` (no downloads), saves them in diffusers'
layout, loads the folder with both libraries, then measures in one process:

1. parity on the device in the chosen dtype: text embeddings, UNet output (per-sample timesteps), VAE decode and
   whole images for a few schedulers;
2. host-device synchronisation: every scheduler's loop under ``torch.cuda.set_sync_debug_mode("error")``;
3. the ``configs/seed-doc.yaml`` plan at the chosen size: the diffusers pipeline looping over ``from_config``
   swaps as the guide does, against schedcmp sequential and batched, interleaved over repetitions;
4. the UNet call's throughput against the 0.80 TFLOP per image per call of SD 1.5 at 512x512;
5. each scheduler's share of its run's wall time (scale_model_input + step against the whole run), sequential;
6. with ``--cuda-graphs``: the sequential plan again with the UNet compiled in reduce-overhead mode (one CUDA graph
   for the plan's fixed batch shape; the compilation is paid in an untimed first pass).

    python benchmarks/gpu_check.py --out DIR                     # CUDA, fp16, 512x512 (benchmarks/gpu_check.sh)
    python benchmarks/gpu_check.py --device cpu --dtype fp32 --size 64 --reduced --repeats 1 --out DIR  # dry run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import diffusers
import numpy as np
import torch

ROOT = Path(__file__).parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from sd_models import build_sd15_folder, diffusers_loop  # noqa: E402

import schedcmp.core as core  # noqa: E402
from schedcmp.core.conditioning import Conditioning  # noqa: E402
from schedcmp.core.load import load_pipeline  # noqa: E402
from schedcmp.core.pipeline import to_unit_images  # noqa: E402
from schedcmp.core.schedulers import ALIASES  # noqa: E402
from schedcmp.engine import Engine, synchronize  # noqa: E402
from schedcmp.plan import build_plan  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PROMPT = "A photograph of an astronaut riding a horse on Mars, high resolution, high definition."
UNET_TFLOP_PER_IMAGE = 0.80  # SD 1.5 UNet at 64x64 latents, one image, one call (issue 5)


def max_abs(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = torch.as_tensor(a).float().cpu(), torch.as_tensor(b).float().cpu()
    return (a - b).abs().max().item()


def parity(ours, theirs, size: int, device: str) -> dict[str, float]:
    """Max abs differences of every component and of whole images (first three: float outputs)."""
    result = {}
    with torch.inference_mode():
        cond, _ = ours.encode_prompt(PROMPT, "")
        result["text embeddings"] = max_abs(cond.embeddings, theirs.encode_prompt(PROMPT, device, 1, False)[0])
        g = torch.Generator(device).manual_seed(0)
        latents = torch.randn((2, 4, size // 8, size // 8), generator=g, device=device).to(ours.dtype)
        context = Conditioning.concat([cond, cond])
        t = torch.tensor([999.0, 37.5], device=device)
        result["unet output"] = max_abs(ours.denoise(latents, t, context),
                                        theirs.unet(latents, t, encoder_hidden_states=context.embeddings).sample)
        scale = theirs.vae.config.scaling_factor
        vae_dtype = next(ours.vae.parameters()).dtype
        result["vae decode"] = max_abs(ours.vae.decode(latents.to(vae_dtype) / scale),
                                       theirs.vae.decode(latents.to(theirs.vae.dtype) / scale).sample)
    for alias, cls, steps in (("ddim", "DDIMScheduler", 10), ("euler_a", "EulerAncestralDiscreteScheduler", 10),
                              ("DPM++ 2M Karras", "DPMSolverMultistepScheduler", 10)):
        options = {"use_karras_sigmas": True} if "Karras" in alias else {}
        theirs.scheduler = getattr(diffusers, cls).from_config(ours.scheduler.config, **options)
        image = theirs(PROMPT, num_inference_steps=steps, generator=torch.Generator(device).manual_seed(8),
                       output_type="np", height=size, width=size).images
        plan = build_plan(None, {"prompt": PROMPT, "schedulers": alias, "steps": str(steps), "model": ours.name,
                                 "size": f"{size}x{size}", "seed": 8})
        report = Engine(ours, plan).run()
        ours_image = to_unit_images(ours.decode_pixels(report.results[0].latents))
        result[f"image {alias} {steps} steps"] = max_abs(ours_image, image)
    return result


def sync_free(device: str) -> dict[str, str]:
    """Each scheduler's whole loop under CUDA's sync debug mode: 'ok' or the error it raised."""
    outcome = {}
    config = json.loads((FIXTURES / "sd15" / "scheduler" / "scheduler_config.json").read_text())
    for cls in core.SCHEDULER_CLASSES:
        scheduler = cls.from_config(config)
        scheduler.set_timesteps(12, device=device)
        generator = torch.Generator(device).manual_seed(0)
        sample = torch.randn((1, 4, 64, 64), device=device, generator=generator)
        kwargs = {"generator": generator} if "generator" in scheduler.step.__code__.co_varnames else {}
        torch.cuda.set_sync_debug_mode("error")
        try:
            for t in scheduler.timesteps:
                model_input = scheduler.scale_model_input(sample, t)
                sample = scheduler.step(torch.randn_like(model_input), t, sample, **kwargs).prev_sample
            outcome[cls.__name__] = "ok"
        except RuntimeError as err:
            outcome[cls.__name__] = f"sync: {str(err).splitlines()[0]}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return outcome


def unet_tflops(ours, size: int, device: str) -> tuple[float, float]:
    """(milliseconds per CFG-pair UNet call, TFLOP/s) at the plan's size, batch 2."""
    latents = torch.randn((2, 4, size // 8, size // 8), device=device, dtype=ours.dtype)
    context = Conditioning(torch.randn((2, 77, ours.unet.config.cross_attention_dim), device=device, dtype=ours.dtype))
    t = torch.tensor([500.0, 500.0], device=device)
    with torch.inference_mode():
        for _ in range(3):
            ours.denoise(latents, t, context)
        synchronize(torch.device(device))
        start = time.perf_counter()
        for _ in range(10):
            ours.denoise(latents, t, context)
        synchronize(torch.device(device))
    seconds = (time.perf_counter() - start) / 10
    flops = UNET_TFLOP_PER_IMAGE * 2 * (size / 512) ** 2
    return seconds * 1e3, flops / seconds


def scheduler_shares(ours, folder: Path, size: str) -> dict[str, float]:
    """Every alias at 20 steps, sequential: scheduler seconds over the run's wall seconds, in percent."""
    names = ",".join(alias.name for alias in ALIASES)
    plan = build_plan(None, {"prompt": PROMPT, "schedulers": names, "steps": "20", "model": str(folder), "size": size})
    return {r.spec.label: round(100 * r.scheduler_seconds / r.seconds, 3) for r in Engine(ours, plan).run().results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--reduced", action="store_true", help="shrunken SD shapes for a CPU dry run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cuda-graphs", action="store_true", help="also time the plan with CUDA graphs")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    diffusers.utils.logging.set_verbosity_error()
    dtype = DTYPES[args.dtype]
    if args.device == "cpu":
        torch.set_num_threads(1)  # a CPU dry run: two OpenMP threads stall on a busy 2-core machine
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": args.device, "dtype": args.dtype, "size": args.size, "reduced": args.reduced,
                    "torch": torch.__version__, "diffusers": diffusers.__version__}
    if args.device == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "sd15-random"
        start = time.perf_counter()
        build_sd15_folder(folder, args.reduced, args.device, dtype)
        report["build seconds"] = round(time.perf_counter() - start, 1)
        ours = load_pipeline(str(folder), args.device, dtype)
        theirs = diffusers.StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype).to(args.device)
        theirs.set_progress_bar_config(disable=True)
        report["parity (max abs)"] = parity(ours, theirs, args.size, args.device)
        if args.device == "cuda":
            report["sync-free step"] = sync_free(args.device)
        size = f"{args.size}x{args.size}"
        plan = build_plan(ROOT / "configs" / "seed-doc.yaml", {"model": str(folder), "size": size})
        timings: dict[str, list[float]] = {"diffusers loop": [], "schedcmp sequential": [], "schedcmp batched": []}
        for _ in range(args.repeats):  # interleaved A B C A B C
            timings["diffusers loop"].append(diffusers_loop(theirs, plan, args.size, torch.device(args.device))[0])
            for mode in ("sequential", "batched"):
                mode_plan = build_plan(ROOT / "configs" / "seed-doc.yaml",
                                       {"model": str(folder), "size": size, "mode": mode})
                timings[f"schedcmp {mode}"].append(Engine(ours, mode_plan).run().wall_seconds)
        if args.cuda_graphs:
            graphed = load_pipeline(str(folder), args.device, dtype)
            graphed.compile(mode="reduce-overhead")
            sequential = build_plan(ROOT / "configs" / "seed-doc.yaml", {"model": str(folder), "size": size})
            start = time.perf_counter()
            Engine(graphed, sequential).run()  # compiles and captures
            report["cuda graphs first pass seconds"] = round(time.perf_counter() - start, 1)
            timings["schedcmp sequential, CUDA graphs"] = [Engine(graphed, sequential).run().wall_seconds
                                                           for _ in range(args.repeats)]
        baseline = statistics.median(timings["diffusers loop"])
        report["seed-doc plan seconds (median)"] = {
            name: {"seconds": round(statistics.median(v), 3), "ratio": round(statistics.median(v) / baseline, 3)}
            for name, v in timings.items()
        }
        ms, tflops = unet_tflops(ours, args.size, args.device)
        report["unet call"] = {"ms per CFG pair": round(ms, 2), "TFLOP/s": round(tflops, 1)}
        report["scheduler share of run wall time (%)"] = scheduler_shares(ours, folder, size)
        batched = Engine(ours, build_plan(ROOT / "configs" / "seed-doc.yaml",
                                          {"model": str(folder), "size": size, "mode": "batched"})).run()
        report["batched max_batch"] = {"lanes": batched.max_batch, "why": batched.max_batch_reason}
    text = json.dumps(report, indent=2)
    (args.out / "gpu_check.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
