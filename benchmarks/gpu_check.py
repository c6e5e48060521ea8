"""GPU check: random-weight SD 1.5- or SDXL-shaped models from the real configs, parity and speed against diffusers.

Builds the UNet, VAE and CLIP text encoder(s) from ``tests/fixtures/sd15`` or ``tests/fixtures/sdxl/base`` (no
downloads), saves them in diffusers' layout, loads the folder with both libraries, then measures in one process:

1. parity on the device in the chosen dtype: text embeddings (and SDXL's pooled embedding), UNet output
   (per-sample timesteps; SDXL's time ids), VAE decode and whole images for a few schedulers;
2. host-device synchronisation: every scheduler's loop under ``torch.cuda.set_sync_debug_mode("error")``;
3. the ``configs/seed-doc.yaml`` plan at the chosen size: the diffusers pipeline looping over ``from_config``
   swaps as the guide does, against schedcmp sequential and batched, interleaved over repetitions;
4. the UNet call's throughput, its FLOPs counted by torch's FlopCounterMode;
5. each scheduler's share of its run's wall time (scale_model_input + step against the whole run), sequential;
6. with ``--cuda-graphs``: the sequential plan again with the UNet compiled in reduce-overhead mode (one CUDA graph
   for the plan's fixed batch shape; the compilation is paid in an untimed first pass).

    python benchmarks/gpu_check.py --out DIR                     # CUDA, fp16, 512x512 (benchmarks/gpu_check.sh)
    python benchmarks/gpu_check.py --family sdxl --size 1024 --out DIR                            # SDXL, 1024x1024
    python benchmarks/gpu_check.py --device cpu --dtype fp32 --size 64 --reduced --repeats 1 --out DIR  # dry run
"""

from __future__ import annotations

import argparse
import inspect
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

from sd_models import build_sd15_folder, build_sdxl_folder, diffusers_loop  # noqa: E402

import schedcmp.core as core  # noqa: E402
from schedcmp.core.conditioning import Conditioning  # noqa: E402
from schedcmp.core.load import load_pipeline  # noqa: E402
from schedcmp.core.pipeline import to_unit_images  # noqa: E402
from schedcmp.core.schedulers import A1111_SAMPLERS, ALIASES, COMFY_SAMPLERS  # noqa: E402
from schedcmp.engine import Engine, synchronize  # noqa: E402
from schedcmp.plan import build_plan  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PROMPT = "A photograph of an astronaut riding a horse on Mars, high resolution, high definition."
# family -> (folder builder, diffusers pipeline class, its extra constructor arguments)
FAMILIES = {
    "sd15": (build_sd15_folder, diffusers.StableDiffusionPipeline, {}),
    "sdxl": (build_sdxl_folder, diffusers.StableDiffusionXLPipeline, {"add_watermarker": False}),
}


def max_abs(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = torch.as_tensor(a).float().cpu(), torch.as_tensor(b).float().cpu()
    return (a - b).abs().max().item()


def unet_inputs(ours, cond: Conditioning, size: int, device: str) -> tuple[Conditioning, dict]:
    """A batch of 2 of ``cond`` for our UNet and the same inputs as diffusers' UNet takes them (SDXL: explicit
    default time ids, original = target = the image size)."""
    if cond.pooled is None:
        pair = Conditioning.concat([cond, cond])
        return pair, {"encoder_hidden_states": pair.embeddings}
    ids = torch.tensor([[size, size, 0, 0, size, size]] * 2, device=device, dtype=ours.dtype)
    pair = Conditioning(torch.cat([cond.embeddings] * 2), torch.cat([cond.pooled] * 2), ids)
    return pair, {"encoder_hidden_states": pair.embeddings, "added_cond_kwargs": pair.added_cond_kwargs}


def parity(ours, theirs, size: int, device: str) -> dict[str, float]:
    """Max abs differences of every component and of whole images (first ones: float outputs)."""
    result = {}
    with torch.inference_mode():
        cond, _ = ours.encode_prompt(PROMPT, "")
        expected = theirs.encode_prompt(PROMPT, device=device, num_images_per_prompt=1,
                                        do_classifier_free_guidance=False)
        result["text embeddings"] = max_abs(cond.embeddings, expected[0])
        if cond.pooled is not None:
            result["pooled text embedding"] = max_abs(cond.pooled, expected[2])
        g = torch.Generator(device).manual_seed(0)
        latents = torch.randn((2, 4, size // 8, size // 8), generator=g, device=device).to(ours.dtype)
        context, theirs_inputs = unet_inputs(ours, cond, size, device)
        t = torch.tensor([999.0, 37.5], device=device)
        result["unet output"] = max_abs(ours.denoise(latents, t, context),
                                        theirs.unet(latents, t, **theirs_inputs).sample)
        scale = theirs.vae.config.scaling_factor
        vae_dtype = next(ours.vae.parameters()).dtype
        result["vae decode"] = max_abs(ours.vae.decode(latents.to(vae_dtype) / scale),
                                       theirs.vae.decode(latents.to(vae_dtype) / scale).sample)
    for alias, cls, steps in (("ddim", "DDIMScheduler", 10), ("euler_a", "EulerAncestralDiscreteScheduler", 10),
                              ("DPM++ 2M Karras", "DPMSolverMultistepScheduler", 10)):
        options = {"use_karras_sigmas": True} if "Karras" in alias else {}
        theirs.scheduler = getattr(diffusers, cls).from_config(ours.scheduler.config, **options)
        image = theirs(PROMPT, num_inference_steps=steps, generator=torch.Generator(device).manual_seed(8),
                       output_type="np", height=size, width=size, guidance_scale=ours.default_guidance).images
        plan = build_plan(None, {"prompt": PROMPT, "schedulers": alias, "steps": str(steps), "model": ours.name,
                                 "size": f"{size}x{size}", "seed": 8})
        report = Engine(ours, plan).run()
        ours_image = to_unit_images(ours.decode_pixels(report.results[0].latents))
        result[f"image {alias} {steps} steps"] = max_abs(ours_image, image)
    return result


def sync_free(device: str) -> dict[str, str]:
    """Each scheduler's whole loop under CUDA's sync debug mode, diffusers' classes and every A1111 / ComfyUI
    sampler: 'ok' or the error it raised (DPM adaptive syncs by design: its step size reads an error norm)."""
    outcome = {}
    config = json.loads((FIXTURES / "sd15" / "scheduler" / "scheduler_config.json").read_text())
    tool_presets = [p for p in (*A1111_SAMPLERS, *COMFY_SAMPLERS) if not p.name.endswith("_gpu")]
    schedulers = {cls.__name__: cls.from_config(config) for cls in core.SCHEDULER_CLASSES}
    schedulers |= {f"{p.tool}:{p.name}": p.build(config) for p in tool_presets}
    for name, scheduler in schedulers.items():
        scheduler.set_timesteps(12, device=device)
        generator = torch.Generator(device).manual_seed(0)
        sample = torch.randn((1, 4, 64, 64), device=device, generator=generator)
        kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        torch.cuda.set_sync_debug_mode("error")
        try:
            i = 0
            while i < len(scheduler.timesteps):  # DPM adaptive adds its calls as it goes
                t = scheduler.timesteps[i]
                model_input = scheduler.scale_model_input(sample, t)
                output = torch.randn_like(model_input) * 0.1
                extra = {"uncond_output": output} if scheduler.needs_uncond else {}
                sample = scheduler.step(output, t, sample, **kwargs, **extra).prev_sample
                i += 1
            outcome[name] = "ok"
        except RuntimeError as err:
            outcome[name] = f"sync: {str(err).splitlines()[0]}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return outcome


def unet_tflops(ours, size: int, device: str) -> tuple[float, float, float]:
    """(milliseconds per CFG-pair UNet call, TFLOP/s, TFLOP per call) at the plan's size, batch 2."""
    from torch.utils.flop_counter import FlopCounterMode

    latents = torch.randn((2, 4, size // 8, size // 8), device=device, dtype=ours.dtype)
    cond, _ = ours.encode_prompt(PROMPT, "")
    context, _ = unet_inputs(ours, cond, size, device)
    t = torch.tensor([500.0, 500.0], device=device)
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            ours.denoise(latents, t, context)
        for _ in range(3):
            ours.denoise(latents, t, context)
        synchronize(torch.device(device))
        start = time.perf_counter()
        for _ in range(10):
            ours.denoise(latents, t, context)
        synchronize(torch.device(device))
    seconds = (time.perf_counter() - start) / 10
    flops = counter.get_total_flops()
    return seconds * 1e3, flops / seconds / 1e12, flops / 1e12


def builds(alias, config) -> bool:
    """Whether the model's scheduler config builds this alias (SDXL's saved config refuses edm_euler)."""
    try:
        alias.build(config)
    except core.ConfigError:
        return False
    return True


def scheduler_shares(ours, folder: Path, size: str) -> dict[str, float]:
    """Every alias at 20 steps, sequential: scheduler seconds over the run's wall seconds, in percent."""
    names = ",".join(alias.name for alias in ALIASES if builds(alias, ours.scheduler.config))
    plan = build_plan(None, {"prompt": PROMPT, "schedulers": names, "steps": "20", "model": str(folder), "size": size})
    return {r.spec.label: round(100 * r.scheduler_seconds / r.seconds, 3) for r in Engine(ours, plan).run().results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="sd15", choices=list(FAMILIES))
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
    build_folder, pipeline_cls, extra = FAMILIES[args.family]
    report: dict = {"family": args.family, "device": args.device, "dtype": args.dtype, "size": args.size,
                    "reduced": args.reduced,
                    "torch": torch.__version__, "diffusers": diffusers.__version__}
    if args.device == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / f"{args.family}-random"
        start = time.perf_counter()
        build_folder(folder, args.reduced, args.device, dtype)
        report["build seconds"] = round(time.perf_counter() - start, 1)
        ours = load_pipeline(str(folder), args.device, dtype)
        theirs = pipeline_cls.from_pretrained(folder, torch_dtype=dtype, **extra).to(args.device)
        theirs.set_progress_bar_config(disable=True)
        report["parity (max abs)"] = parity(ours, theirs, args.size, args.device)
        if args.device == "cuda" and args.family == "sd15":
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
        ms, tflops, tflop = unet_tflops(ours, args.size, args.device)
        report["unet call"] = {"ms per CFG pair": round(ms, 2), "TFLOP per call": float(f"{tflop:.4g}"),
                               "TFLOP/s": float(f"{tflops:.4g}")}
        report["scheduler share of run wall time (%)"] = scheduler_shares(ours, folder, size)
        batched = Engine(ours, build_plan(ROOT / "configs" / "seed-doc.yaml",
                                          {"model": str(folder), "size": size, "mode": "batched"})).run()
        report["batched max_batch"] = {"lanes": batched.max_batch, "why": batched.max_batch_reason}
    text = json.dumps(report, indent=2)
    (args.out / f"gpu_check_{args.family}.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
