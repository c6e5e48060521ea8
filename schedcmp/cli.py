"""The `schedcmp` command line: declares the options and hands each command to the error boundary. The only
module that imports typer; it imports nothing heavy, so --help and --version start fast."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from . import __version__
from .boundary import StopSignals, run_guarded

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Compare diffusion schedulers and step counts on one prompt, seed and model.",
)

SAMPLING, MODEL, ACCURACY, OUTPUT, CHECKS, SPEED = (
    "Sampling", "Model and device", "Accuracy", "Output", "CI checks", "Speed")
MODEL_HELP = "builtin:shapes (default), a diffusers model folder, or a hub id (owner/name)."


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Prediction(str, Enum):
    epsilon = "epsilon"
    v_prediction = "v_prediction"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback of any error (or SCHEDCMP_DEBUG=1).")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"schedcmp {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Compare diffusion schedulers and step counts on one prompt, seed and model."""


def _finish(code: int) -> None:
    if code:
        raise typer.Exit(code)


def _value(choice: Enum | None) -> str | None:
    return None if choice is None else choice.value


@app.command()
def run(
    plan_file: Annotated[Path | None, typer.Argument(
        readable=False, help="YAML plan; flags override its values.")] = None,  # plan.py says what is wrong
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="The prompt.", rich_help_panel=SAMPLING)] = None,
    negative_prompt: Annotated[
        str | None, typer.Option(help="The negative prompt.", rich_help_panel=SAMPLING)] = None,
    schedulers: Annotated[str | None, typer.Option(
        help="Comma-separated sampler names: ours, diffusers classes, A1111 labels, ComfyUI names (crossed with "
             "--schedules and --steps).", rich_help_panel=SAMPLING)] = None,
    schedules: Annotated[str | None, typer.Option(
        help="Comma-separated schedule types, e.g. karras,simple,\"Align Your Steps\" (default: each sampler's "
             "own).", rich_help_panel=SAMPLING)] = None,
    axis: Annotated[list[str] | None, typer.Option(
        "--axis", help="A scheduler option as an axis, NAME=VALUES (eta=0,0.5,1 or eta=0-1 [3]); repeatable.",
        rich_help_panel=SAMPLING)] = None,
    steps: Annotated[str | None, typer.Option(
        help="Comma-separated step counts, e.g. 20,30.", rich_help_panel=SAMPLING)] = None,
    seed: Annotated[int | None, typer.Option(
        help="Seed of every run's generator (default 8).", rich_help_panel=SAMPLING)] = None,
    prompt_sr: Annotated[str | None, typer.Option(
        "--prompt-sr", help="A1111's Prompt S/R: 'red,blue,green' samples the prompt with red replaced by each.",
        rich_help_panel=SAMPLING)] = None,
    seeds: Annotated[str | None, typer.Option(
        help="A sweep over seeds: 8,9,10 or A1111 ranges 1-16, 1-16 (+2), 1-100 [8].",
        rich_help_panel=SAMPLING)] = None,
    guidance: Annotated[str | None, typer.Option(
        help="Classifier-free guidance scale (the model's default: 7.5, SDXL 5.0), or a sweep: 5,7.5 / 3-9 (+1.5).",
        rich_help_panel=SAMPLING)] = None,
    size: Annotated[str | None, typer.Option(help="WIDTHxHEIGHT (model default).", rich_help_panel=SAMPLING)] = None,
    model: Annotated[str | None, typer.Option(help=MODEL_HELP, rich_help_panel=MODEL)] = None,
    device: Annotated[Device | None, typer.Option(
        case_sensitive=False, help="Where to run (auto: CUDA, else MPS, else CPU).", rich_help_panel=MODEL)] = None,
    dtype: Annotated[Precision | None, typer.Option(
        case_sensitive=False, help="auto: fp16 on CUDA, fp32 elsewhere.", rich_help_panel=MODEL)] = None,
    generator_device: Annotated[Device | None, typer.Option(
        case_sensitive=False, help="Device of each run's torch.Generator (default: --device).",
        rich_help_panel=MODEL)] = None,
    clip_skip: Annotated[int | None, typer.Option(
        help="Use the text encoder's k-th last layer (SD models).", rich_help_panel=MODEL)] = None,
    vae: Annotated[str | None, typer.Option(
        help="Decode with this VAE: a .safetensors file (A1111's VAE files) or a diffusers VAE folder.",
        rich_help_panel=MODEL)] = None,
    prediction_type: Annotated[Prediction | None, typer.Option(
        case_sensitive=False, help="What a checkpoint file's UNet predicts (SD 2.x files cannot say; assumed: "
        "v_prediction).", rich_help_panel=MODEL)] = None,
    allow_pickle: Annotated[bool, typer.Option(
        help="Also load pickled .bin/.ckpt weights, with torch.load(weights_only=True).",
        rich_help_panel=MODEL)] = False,
    reference: Annotated[str | None, typer.Option(
        help="Measure every run against: exact (builtin:shapes' ODE solution, its default), NAME[:STEPS] "
             "(e.g. dpm:200), auto (exact where the model has it, else dpm:200) or none.",
        rich_help_panel=ACCURACY)] = None,
    target_error: Annotated[float | None, typer.Option(
        help="Latent RMSE the cost-to-reach table asks for (default 0.05).", rich_help_panel=ACCURACY)] = None,
    batched: Annotated[bool | None, typer.Option(
        "--batched/--sequential", help="Share model calls across runs, or time each alone.",
        rich_help_panel=SPEED)] = None,
    max_batch: Annotated[int | None, typer.Option(
        help="Most runs per batched model call (default: what fits in memory).", rich_help_panel=SPEED)] = None,
    compile_model: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the denoiser (UNet) before the first run.", rich_help_panel=SPEED)] = False,
    workers: Annotated[int | None, typer.Option(
        help="Run the plan in N local processes, each a rank with its share of the cells (torch's launcher; one "
             "per GPU). torchrun -m schedcmp run ... does the same over nodes.", rich_help_panel=SPEED)] = None,
    cuda_graphs: Annotated[bool, typer.Option(
        "--cuda-graphs", help="Capture each batch shape's model call in a CUDA graph (torch.compile mode "
                              "reduce-overhead; pays with fixed shapes).", rich_help_panel=SPEED)] = False,
    expect: Annotated[Path | None, typer.Option(
        help="Compare the images with a previous run's --out folder; exit 1 on drift.", rich_help_panel=CHECKS)] = None,
    tolerance: Annotated[float, typer.Option(
        help="Lowest PSNR in dB an image may have against --expect's.", rich_help_panel=CHECKS)] = 40.0,
    check_determinism: Annotated[bool, typer.Option(
        "--check-determinism", help="Sample the first run twice; exit 1 if they differ.", rich_help_panel=CHECKS)
    ] = False,
    out: Annotated[Path | None, typer.Option(
        help="Output folder (default out/run-<time>).", rich_help_panel=OUTPUT)] = None,
    overwrite: Annotated[bool, typer.Option(
        help="Replace results already in the output folder (once the new ones exist).", rich_help_panel=OUTPUT)
    ] = False,
    resume: Annotated[bool, typer.Option(
        help="Finish an interrupted sweep in --out: run only its missing pages (the plan must be the same).",
        rich_help_panel=OUTPUT)] = False,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print results.json instead of the table.", rich_help_panel=OUTPUT)] = False,
    debug: Debug = False,
) -> None:
    """Sample the same prompt and seed with every scheduler and step count; write grid, table and record."""
    overrides = {
        "prompt": prompt, "negative_prompt": negative_prompt, "schedulers": schedulers, "schedules": schedules,
        "steps": steps, "model": model, "seed": seed, "seeds": seeds, "prompt_sr": prompt_sr,
        "option_axes": axis or None, "guidance": _number_or_axis(guidance), "size": size, "device": _value(device),
        "dtype": _value(dtype), "mode": None if batched is None else ("batched" if batched else "sequential"),
        "max_batch": max_batch, "generator_device": _value(generator_device), "clip_skip": clip_skip,
        "prediction_type": _value(prediction_type), "vae": vae,
        "reference": reference, "target_error": target_error,
    }

    def body(signals: StopSignals) -> int:
        if workers is not None:
            from .launch import launch_workers

            return launch_workers(workers, sys.argv[sys.argv.index("run") + 1:])
        from .compare import RunOptions, run_comparison
        from .plan import build_plan

        options = RunOptions(out, overwrite, allow_pickle, compile_model, cuda_graphs, expect, tolerance,
                             check_determinism, json_output, resume)
        return run_comparison(lambda: build_plan(plan_file, overrides), options, signals)

    _finish(run_guarded(body, debug))


@app.command("list-compatible")
def list_compatible(
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "builtin:shapes",
    debug: Debug = False,
) -> None:
    """List the scheduler names you can pass to --schedulers, with model calls per step."""
    def body(_signals: StopSignals) -> None:
        from .listing import list_compatible

        list_compatible(model)

    _finish(run_guarded(body, debug))


@app.command("show-config")
def show_config(
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "builtin:shapes",
    as_name: Annotated[
        str | None, typer.Option("--as", help="Show the config a swap to this scheduler yields.")] = None,
    debug: Debug = False,
) -> None:
    """Print the model's scheduler config as JSON, or what a swap to another scheduler would produce."""
    def body(_signals: StopSignals) -> None:
        from .listing import show_config

        show_config(model, as_name)

    _finish(run_guarded(body, debug))


def _number_or_axis(text: str | None) -> float | str | None:
    """A flag that is a number or an axis: the number as a float, an axis as its text (the plan reads it)."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def entry_point() -> None:
    """The `schedcmp` executable: usage errors (Typer's exit 2) as one line too, never a box or a traceback."""
    from . import terminal

    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="schedcmp", standalone_mode=False)
    except typer.Abort:
        code = 130
    except Exception as err:
        # click's usage errors (vendored inside newer Typer releases, so matched by shape, not by class)
        if not (hasattr(err, "format_message") and hasattr(err, "exit_code")):
            raise
        context = getattr(err, "ctx", None)
        if type(err).__name__ == "NoArgsIsHelpError" and context is not None:
            typer.echo(context.get_help())
            code = 0
        else:
            where = context.command_path if context is not None else "schedcmp"
            message = err.format_message().replace("Value error, ", "").rstrip(".")
            terminal.error(f"{message} (see '{where} --help')")
            code = err.exit_code
    sys.exit(code if isinstance(code, int) else 0)
