"""The `schedcmp` command line: parse -> plan -> engine -> outputs. The only module that imports typer."""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .core.load import load_pipeline, load_scheduler_config
from .core.schedulers import A1111_PRESETS, ALIASES, SchedulerPreset, resolve_scheduler
from .engine import Engine, cpu_threads
from .errors import RunFailedError, SchedcmpError
from .outputs.record import cost_table, prepare_output_folder, timing_table, write_outputs
from .plan import build_plan
from .smoke import (
    DEFAULT_TOLERANCE_DB,
    ImageCheck,
    check_determinism,
    compare_with_expected,
    identical_results,
    read_expected,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Compare diffusion schedulers and step counts on one prompt, seed and model.",
)
# Tables go to stdout at a width that suits files and pipes too; progress, warnings and errors go to stderr.
out_console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _show_messages(messages: list[str]) -> list[str]:
    for message in messages:
        err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)
    return messages


def _show_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return _show_messages(list(dict.fromkeys(str(w.message) for w in caught)))


def _version(value: bool) -> None:
    if value:
        out_console.print(f"schedcmp {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Compare diffusion schedulers and step counts on one prompt, seed and model."""


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when present, else Apple's MPS, else the CPU; an absent device is a user error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SchedcmpError("--device cuda: no CUDA device is available here (try --device cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise SchedcmpError("--device mps: no Apple MPS device is available here (try --device cpu)")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device, model: str) -> torch.dtype:
    """'auto' is fp16 on CUDA for real models and fp32 elsewhere (builtin:shapes is always exact fp32)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" and not model.startswith("builtin:") else torch.float32
    return DTYPES[name]


@app.command()
def run(
    plan_file: Annotated[Path | None, typer.Argument(help="YAML plan; flags override its values.")] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="The prompt.")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="The negative prompt.")] = None,
    schedulers: Annotated[
        str | None, typer.Option(help="Comma-separated scheduler names (crossed with --steps).")
    ] = None,
    steps: Annotated[str | None, typer.Option(help="Comma-separated step counts, e.g. 20,30.")] = None,
    model: Annotated[str | None, typer.Option(help="builtin:shapes (default).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every run's generator (default 8).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale (7.5).")] = None,
    size: Annotated[str | None, typer.Option(help="WIDTHxHEIGHT (model default).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, fp32, fp16 or bf16.")] = None,
    batched: Annotated[
        bool | None, typer.Option("--batched/--sequential", help="Share model calls across runs, or time each alone.")
    ] = None,
    max_batch: Annotated[int | None, typer.Option(help="Most runs per batched model call.")] = None,
    generator_device: Annotated[
        str | None, typer.Option(help="Device of each run's torch.Generator (default: --device).")
    ] = None,
    clip_skip: Annotated[int | None, typer.Option(help="Use the text encoder's k-th last layer (SD models).")] = None,
    reference: Annotated[
        str | None,
        typer.Option(help="Measure every run against: exact (builtin:shapes' ODE solution, its default), NAME[:STEPS] "
                          "(e.g. dpm:200), auto (exact where the model has it, else dpm:200) or none."),
    ] = None,
    target_error: Annotated[
        float | None, typer.Option(help="Latent RMSE the cost-to-reach table asks for (default 0.05).")
    ] = None,
    compile_model: Annotated[
        bool, typer.Option("--compile", help="torch.compile the denoiser (UNet) before the first run.")
    ] = False,
    cuda_graphs: Annotated[
        bool, typer.Option("--cuda-graphs", help="Capture each batch shape's model call in a CUDA graph "
                                                 "(torch.compile mode reduce-overhead; pays with fixed shapes).")
    ] = False,
    allow_pickle: Annotated[
        bool, typer.Option(help="Also load pickled .bin/.ckpt weights, with torch.load(weights_only=True).")
    ] = False,
    expect: Annotated[
        Path | None, typer.Option(help="CI check: compare the images with a previous run's --out folder; exit 1 on "
                                       "drift.")
    ] = None,
    tolerance: Annotated[
        float, typer.Option(min=0, help="Lowest PSNR in dB an image may have against --expect's.")
    ] = DEFAULT_TOLERANCE_DB,
    check_determinism_flag: Annotated[
        bool, typer.Option("--check-determinism", help="CI check: sample the first run twice; exit 1 if they differ.")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="Output folder (default out/run-<time>).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace results already in the output folder.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print results.json instead of the table.")] = False,
) -> None:
    """Sample the same prompt and seed with every scheduler and step count; write grid, table and record."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plan = build_plan(
                plan_file,
                {
                    "prompt": prompt,
                    "negative_prompt": negative_prompt,
                    "schedulers": schedulers,
                    "steps": steps,
                    "model": model,
                    "seed": seed,
                    "guidance": guidance,
                    "size": size,
                    "device": device,
                    "dtype": dtype,
                    "mode": None if batched is None else ("batched" if batched else "sequential"),
                    "max_batch": max_batch,
                    "generator_device": generator_device,
                    "clip_skip": clip_skip,
                    "reference": reference,
                    "target_error": target_error,
                },
            )
            if expect is not None:
                read_expected(expect)  # before sampling anything
            folder = out or Path("out") / time.strftime("run-%Y%m%d-%H%M%S")
            prepare_output_folder(folder, overwrite)
            torch_device = resolve_device(plan.device)
            dtype = resolve_dtype(plan.dtype, torch_device, plan.model)
            if cuda_graphs and torch_device.type != "cuda":
                raise SchedcmpError(f"--cuda-graphs needs a CUDA device; this run is on {torch_device.type} "
                                    "(use --compile instead)")
            pipeline = load_pipeline(plan.model, torch_device, dtype, allow_pickle, plan.clip_skip)
            if compile_model or cuda_graphs:
                pipeline.compile(mode="reduce-overhead" if cuda_graphs else None)
            engine = Engine(pipeline, plan)
        notes = _show_warnings(caught)
    except SchedcmpError as err:
        raise _fail(str(err)) from None

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task(f"{len(plan.runs)} runs, {plan.mode}", total=engine.total_model_calls)
        report = engine.run(lambda n: progress.advance(task, n))
    report.warnings.extend(notes)
    report.warnings.extend(_show_messages(identical_results(report.results)))

    width, height = plan.size or pipeline.default_size
    files = write_outputs(folder, plan, report, pipeline.describe(), (width, height))
    if json_output:
        typer.echo(files.results.read_text(encoding="utf-8"), nl=False)
    else:
        out_console.print(timing_table(report))
        costs = cost_table(plan, report)
        if costs is not None:
            out_console.print(costs)
        calls = sum(r.model_calls for r in report.results)
        out_console.print(
            f"{len(report.results)} runs, {calls} model calls, {report.wall_seconds:.2f} s wall ({report.mode})",
            highlight=False,
        )
        written = [files.grid, files.timings, files.results, *([files.plot] if files.plot else []), files.html]
        out_console.print(f"wrote {', '.join(map(str, written))} and {len(files.images)} images", highlight=False)
    if report.reference is not None and report.reference.status == "failed":
        err_console.print(f"[yellow]warning:[/yellow] the reference failed, so no run has accuracy figures: "
                          f"{escape(report.reference.error or '')}", highlight=False, soft_wrap=True)
    if report.interrupted:
        err_console.print("[yellow]interrupted:[/yellow] wrote the runs that finished", highlight=False)
        raise typer.Exit(130)
    failed = [r for r in report.results if r.status == "failed"]
    if failed:
        names = ", ".join(f"{r.index + 1} ({r.spec.label})" for r in failed)
        raise _fail(str(RunFailedError(f"{len(failed)} of {len(report.results)} runs failed: {names}")))
    try:
        if expect is not None:
            checks = compare_with_expected(files.document, folder, expect, tolerance)
            _report_expectations(checks, expect, tolerance)
        if check_determinism_flag:
            with cpu_threads(pipeline.cpu_threads, torch_device), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the run above has shown them already
                check = check_determinism(pipeline, plan)
            where = f"run 1 ({check.label}, {check.steps} steps)"
            if not check.identical:
                raise SchedcmpError(f"{where} is not deterministic: sampled twice from seed {plan.seed}, its latents "
                                    f"differ by up to {check.max_abs_difference:.3g}")
            err_console.print(f"determinism: {where} gave bit-identical latents twice", highlight=False)
    except SchedcmpError as err:
        raise _fail(str(err)) from None


def _report_expectations(checks: list[ImageCheck], expected: Path, tolerance: float) -> None:
    """Print every image's PSNR against the expected run's; raise when any drifted, failed or is missing."""
    table = Table(title=f"Images against {expected} (pass: PSNR >= {tolerance:g} dB)", title_justify="left")
    for name, justify in (("run", "left"), ("steps", "right"), ("PSNR dB", "right"), ("status", "left")):
        table.add_column(name, justify=justify)
    for check in checks:
        shown = "" if check.psnr is None else ("∞" if check.psnr == float("inf") else f"{check.psnr:.1f}")
        status = check.status if check.passed else f"[red]{check.status}[/red]"
        table.add_row(check.label, str(check.steps), shown, status)
    out_console.print(table)
    bad = [c for c in checks if not c.passed]
    if bad:
        names = ", ".join(f"{c.label} {c.steps} ({c.status})" for c in bad)
        raise SchedcmpError(f"{len(bad)} of {len(checks)} images differ from {expected}: {names}")
    err_console.print(f"expect: all {len(checks)} images match {expected}", highlight=False)


def _preset_row(preset: SchedulerPreset, config: dict, steps: int = 20) -> list[str]:
    scheduler = preset.build(config)
    scheduler.set_timesteps(steps)
    calls = len(scheduler.timesteps) / steps
    options = ", ".join(f"{k}={v}" for k, v in preset.options.items())
    return [preset.name, preset.cls.__name__, f"{calls:g}", "yes" if scheduler.is_stochastic else "no", options]


@app.command("list-compatible")
def list_compatible(
    model: Annotated[str, typer.Option(help="builtin:shapes or a diffusers model folder.")] = "builtin:shapes",
) -> None:
    """List the scheduler names you can pass to --schedulers, with model calls per step."""
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            config = load_scheduler_config(model)
            rows = [_preset_row(p, config) for p in (*ALIASES, *A1111_PRESETS)]
    except SchedcmpError as err:
        raise _fail(str(err)) from None
    table = Table(title=f"Schedulers compatible with {model} (model calls per step at 20 steps)", title_justify="left")
    for name in ("name", "class", "calls/step", "stochastic", "options"):
        table.add_column(name, justify="right" if name == "calls/step" else "left")
    for row in rows:
        table.add_row(*row)
    out_console.print(table)


@app.command("show-config")
def show_config(
    model: Annotated[str, typer.Option(help="builtin:shapes or a diffusers model folder.")] = "builtin:shapes",
    as_name: Annotated[
        str | None, typer.Option("--as", help="Show the config a swap to this scheduler yields.")
    ] = None,
) -> None:
    """Print the model's scheduler config as JSON, or what a swap to another scheduler would produce."""
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            config = load_scheduler_config(model)
            source = resolve_scheduler(config.get("_class_name", "PNDMScheduler")).cls.from_config(config)
            shown = resolve_scheduler(as_name).build(source.config) if as_name else source
    except SchedcmpError as err:
        raise _fail(str(err)) from None
    typer.echo(shown.to_json_string(), nl=False)
    if as_name:
        before, after = json.loads(source.to_json_string()), json.loads(shown.to_json_string())
        changed = sorted(k for k in set(before) | set(after) if before.get(k, "—") != after.get(k, "—"))
        swap = f"{type(source).__name__} -> {type(shown).__name__}"
        err_console.print(f"{swap}: {len(changed)} keys differ", highlight=False)
        for key in changed:
            err_console.print(f"  {key}: {before.get(key, '—')!r} -> {after.get(key, '—')!r}", highlight=False)
