"""One invocation of `schedcmp run`: plan -> load -> engine -> accuracy -> outputs, written atomically.

The output folder is checked before anything loads; results go to a staging folder beside it (each image as its
run ends) and are moved in at the end, so a failed start or a crash leaves the folder as it was."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import terminal
from .accuracy import Accuracy
from .boundary import StopSignals
from .core.load import load_pipeline
from .core.pipeline import DiffusionPipeline
from .engine import Engine, EngineReport, RunResult, cpu_threads, run_engines_batched
from .errors import OutputFolderError, RunFailedError, SchedcmpError
from .outputs.folder import OutputFolder
from .outputs.grid import MAX_GRID_MEGAPIXELS, grid_megapixels, grid_shape
from .outputs.record import IMAGES, results_text
from .outputs.summary import Summary
from .outputs.sweep import (
    PAGES,
    SWEEP_NAME,
    KeptPage,
    PartialPage,
    failed_labels,
    finished_pages,
    leftover_stagings,
    page_name,
    run_count,
    samples_of,
    statistics_table,
    write_page_entry,
    write_page_identity,
    write_sweep,
)
from .outputs.tables import cost_table, expectation_table, timing_table
from .outputs.writer import ResultWriter, Written
from .plan import Plan
from .smoke import DEFAULT_TOLERANCE_DB, check_determinism, compare_with_expected, identical_results, read_expected
from .statistics import cell_statistics, pareto_front, recommend

SMALLEST_IMAGE = (64, 64)  # builtin:shapes' size, the smallest a model here draws by default
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class RunOptions:
    """What `run` does beyond the plan: where results go, how the model loads, and the CI checks."""

    out: Path | None = None
    overwrite: bool = False
    allow_pickle: bool = False
    compile_model: bool = False
    cuda_graphs: bool = False
    expect: Path | None = None
    tolerance: float = DEFAULT_TOLERANCE_DB
    check_determinism: bool = False
    json_output: bool = False
    resume: bool = False

    def __post_init__(self) -> None:
        if not self.tolerance >= 0:  # NaN too
            raise SchedcmpError(f"--tolerance must be a PSNR in dB, 0 or more; got {self.tolerance:g}")


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


@contextmanager
def shown_warnings(into: list[str]) -> Iterator[None]:
    """Collect the warnings the block raises, print each once as one line, and append them to ``into``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for message in dict.fromkeys(str(w.message) for w in caught):
                terminal.warning(message)
                into.append(message)


def _read_baseline(expect: Path | None, out: Path) -> dict[str, Any] | None:
    """The record of the previous run --expect names (read before sampling); it must not be this run's folder."""
    if expect is None:
        return None
    if expect.resolve() == out.resolve():
        raise OutputFolderError(f"--expect {expect} is the output folder of this run; point it at a previous run's "
                                "folder (copy it aside first)")
    return read_expected(expect)


def _load(plan: Plan, options: RunOptions) -> tuple[DiffusionPipeline, torch.device, Plan]:
    """The pipeline on its device (compiled if asked), and the plan with the model's defaults filled in."""
    device = resolve_device(plan.device)
    dtype = resolve_dtype(plan.dtype, device, plan.model)
    if options.cuda_graphs and device.type != "cuda":
        raise SchedcmpError(f"--cuda-graphs needs a CUDA device; this run is on {device.type} "
                            "(use --compile instead)")
    _check_grid_size(plan, plan.size or SMALLEST_IMAGE)  # before loading; the model's own size is checked after
    pipeline = load_pipeline(plan.model, device, dtype, options.allow_pickle, plan.clip_skip, plan.prediction_type,
                             plan.vae)
    plan = plan.with_model_defaults(pipeline)
    _check_grid_size(plan, plan.size or pipeline.default_size)
    if options.compile_model or options.cuda_graphs:
        pipeline.compile(mode="reduce-overhead" if options.cuda_graphs else None)
    return pipeline, device, plan


def _check_grid_size(plan: Plan, size: tuple[int, int]) -> None:
    """Refuse, before anything runs, a plan whose grid page would exceed MAX_GRID_MEGAPIXELS."""
    rows, columns = grid_shape([r.row_label for r in plan.runs], [str(r.steps) for r in plan.runs], plan.layout)
    megapixels = grid_megapixels(rows, columns, size)
    if megapixels > MAX_GRID_MEGAPIXELS:
        raise SchedcmpError(f"a grid page would be {megapixels:.0f} MP ({rows} rows x {columns} columns of "
                            f"{size[0]}x{size[1]}), more than the {MAX_GRID_MEGAPIXELS} MP a page may be; split the "
                            "plan (fewer samplers, schedules or step counts per page; seeds and prompts make pages)")


def _output_folder(options: RunOptions) -> OutputFolder:
    if options.resume and options.out is None:
        raise SchedcmpError("--resume needs --out, the folder of the sweep to finish")
    folder = OutputFolder(options.out or Path("out") / time.strftime("run-%Y%m%d-%H%M%S"),
                          options.overwrite or options.resume)
    folder.check()
    return folder


def run_comparison(plan: Plan, options: RunOptions, signals: StopSignals) -> int:
    """Load the model once, run every cell of the plan, write every output; returns the exit code."""
    if plan.is_sweep:
        return run_sweep(plan, options, signals)
    if options.resume:
        raise SchedcmpError("--resume finishes a sweep (--seeds, a guidance list, prompt axes); this plan has one "
                            "page: run it again with --overwrite")
    folder = _output_folder(options)
    baseline = _read_baseline(options.expect, folder.target)
    notes: list[str] = []
    with shown_warnings(notes):
        pipeline, device, plan = _load(plan, options)
        engine = Engine(pipeline, plan)
    size = plan.size or pipeline.default_size
    staging = folder.open_staging()
    try:
        writer = ResultWriter(staging, plan, size, pipeline.provenance)
        with shown_warnings(notes):
            report = _sample(engine, plan, writer)
        with signals.deferred():
            report.warnings.extend(notes)
            for message in identical_results(report.results):
                terminal.warning(message)
                report.warnings.append(message)
            summary = Summary.build(plan, report, pipeline.describe(), size)
            written = writer.finish(summary)
            folder.commit()
    except SchedcmpError:
        folder.discard()
        raise
    except BaseException:
        terminal.warning(f"the runs that finished are kept in {staging}")
        raise
    _show(summary, written, folder.target, options.json_output)
    return _verdict(summary, written, baseline, signals, folder.target, options, pipeline, device)


def run_sweep(plan: Plan, options: RunOptions, signals: StopSignals) -> int:
    """A sweep over seeds, guidance and prompts: every page (one of each) is the comparison it would be alone, in
    its own folder under pages/, written as it finishes; then the statistics over seeds, the Pareto front and the
    recommendation (sweep.json, statistics.csv, the terminal) and a grid per page at the top."""
    if options.expect is not None or options.check_determinism:
        raise SchedcmpError("--expect and --check-determinism check one page; run them without --seeds or a "
                            "guidance sweep")
    folder = _output_folder(options)
    notes: list[str] = []
    with shown_warnings(notes):
        pipeline, _device, plan = _load(plan, options)
    kept, partial = finished_pages(folder.target, plan) if options.resume else ({}, {})
    if kept or partial:
        runs = sum(len(p.records) for p in partial.values())
        more = f" and {runs} runs of unfinished ones" if partial else ""
        terminal.note("resume", f"{len(kept)} of {len(plan.pages())} pages are finished{more}; running the others")
    staging = folder.open_staging()
    try:
        pages, interrupted = _run_pages(plan, pipeline, kept, partial, folder.target, staging, notes, signals)
        with signals.deferred():
            samples = [sample for _name, page in pages for sample in samples_of(page)]
            cells = cell_statistics(samples, plan.target_error)
            recommendation = recommend(cells, plan.target_error)
            (staging / IMAGES).rmdir()  # a sweep's images are in its pages
            names = write_sweep(staging, plan, pages, cells, pareto_front(cells), recommendation)
            leftovers = leftover_stagings(folder.target) if options.resume else []
            folder.commit()
            for leftover in leftovers:  # what killed runs left, now in the sweep
                if leftover != staging:
                    shutil.rmtree(leftover, ignore_errors=True)
    except SchedcmpError:
        folder.discard()
        raise
    except BaseException:
        terminal.warning(f"the pages that finished are kept in {staging}")
        raise
    if options.json_output:
        sys.stdout.write((folder.target / SWEEP_NAME).read_text(encoding="utf-8"))
    else:
        terminal.show(statistics_table(cells, plan.target_error))
        terminal.show(f"recommendation: {recommendation.describe()}")
        front = pareto_front(cells)
        if front:
            terminal.show("Pareto front (model calls, median RMSE): " + ", ".join(
                f"{c.row} {c.steps} steps ({c.model_calls}, {c.median_error:.3g})" for c in front))
        terminal.show(f"{len(pages)} pages, {sum(run_count(p) for _n, p in pages)} runs; wrote "
                      f"{', '.join(str(folder.target / n) for n in names)} and {PAGES}/")
    if interrupted:
        terminal.note("interrupted", f"wrote the pages that finished to {folder.target}")
        return signals.exit_code() or 130
    failed = [(name, label) for name, page in pages for label in failed_labels(page)]
    if failed:
        listed = ", ".join(f"{name} ({label})" for name, label in failed[:5])
        raise RunFailedError(f"{len(failed)} runs of the sweep failed: {listed}")
    return 0


@dataclass
class _PageRun:
    """One page to run: its plan and name, the engine over its missing runs, its writer and the runs kept."""

    name: str
    page: Plan
    engine: Engine
    writer: ResultWriter
    ended: list[RunResult]
    notes: list[str]


def _run_pages(plan: Plan, pipeline: DiffusionPipeline, kept: dict[str, KeptPage], partial: dict[str, PartialPage],
               target: Path, staging: Path, notes: list[str],
               signals: StopSignals) -> tuple[list[tuple[str, Summary | KeptPage]], bool]:
    """Every page of the sweep into staging/pages/ (kept ones copied from the target), under one progress bar
    with the time left over the whole sweep: one page after another, or in batched mode all pages' runs as lanes
    of one continuous batch. A stop signal ends it after what is in progress. Returns the pages in the sweep's
    order and whether it stopped early."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    done: dict[str, Summary | KeptPage] = {}
    todo = []
    encoded: dict = {}  # each of the sweep's prompts encoded once, for all its pages
    for page in plan.pages():
        name = page_name(page, plan)
        if name in kept:
            shutil.copytree(kept[name].source / PAGES / name, staging / PAGES / name)
            done[name] = kept[name]
        else:
            todo.append(_prepare_page(name, page, pipeline, partial.get(name), staging, encoded))
    stopped = False
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=terminal.err(), transient=True) as progress:
        overall = progress.add_task(f"sweep: {len(todo)} pages",
                                    total=sum(run.engine.total_model_calls for run in todo))
        if plan.mode == "batched" and todo:
            with shown_warnings(todo[0].notes):
                reports = run_engines_batched([run.engine for run in todo], lambda n: progress.advance(overall, n),
                                              lambda engine, result: _writer_of(todo, engine).run_finished(result),
                                              plan.max_batch)
            for run, report in zip(todo, reports, strict=True):
                done[run.name] = _finish_page(run, report, pipeline, notes, signals)
            stopped = any(report.interrupted for report in reports) or signals.exit_code() is not None
        else:
            for run in todo:
                task = progress.add_task(f"{run.name}: {len(run.engine.results)} runs",
                                         total=run.engine.total_model_calls)
                with shown_warnings(run.notes):
                    report = run.engine.run(
                        lambda n, task=task: (progress.advance(task, n), progress.advance(overall, n)),
                        run.writer.run_finished)
                progress.remove_task(task)
                done[run.name] = _finish_page(run, report, pipeline, notes, signals)
                if report.interrupted or signals.exit_code() is not None:  # a stop while the page was written
                    stopped = True
                    break
    names = [page_name(page, plan) for page in plan.pages()]
    return [(name, done[name]) for name in names if name in done], stopped


def _writer_of(todo: list[_PageRun], engine: Engine) -> ResultWriter:
    return next(run.writer for run in todo if run.engine is engine)


def _prepare_page(name: str, page: Plan, pipeline: DiffusionPipeline, partial: PartialPage | None,
                  staging: Path, encoded: dict) -> _PageRun:
    """A page's folder, writer and engine over the runs it still needs (all, or those a stop left unfinished)."""
    (staging / PAGES / name / IMAGES).mkdir(parents=True)
    write_page_identity(staging / PAGES / name, page)
    size = page.size or pipeline.default_size
    writer = ResultWriter(staging / PAGES / name, page, size, pipeline.provenance)
    ended = _ended_runs(pipeline, page, partial, writer)
    page_notes: list[str] = []
    with shown_warnings(page_notes):
        missing = [i for i in range(len(page.runs)) if i not in {r.index for r in ended}]
        if not missing:  # every run ended but the page did not: the engine still needs one to run
            ended, missing = ended[:-1], [ended[-1].index]
        engine = Engine(pipeline, dataclasses.replace(page, runs=tuple(page.runs[i] for i in missing)), encoded)
    for result, index in zip(engine.results, missing, strict=True):
        result.index = index  # its place on the whole page: its image name, its "run N"
    return _PageRun(name, page, engine, writer, ended, page_notes)


def _finish_page(run: _PageRun, report: EngineReport, pipeline: DiffusionPipeline, notes: list[str],
                 signals: StopSignals) -> Summary:
    """The page's results, the kept runs among them, written as a whole comparison folder."""
    with signals.deferred():
        report.results = sorted([*run.ended, *report.results], key=lambda r: r.index)
        report.warnings.extend(notes + run.notes)
        summary = Summary.build(run.page, report, pipeline.describe(), run.page.size or pipeline.default_size)
        run.writer.finish(summary)
        write_page_entry(run.writer.folder, run.name, summary)
    return summary


def _ended_runs(pipeline: DiffusionPipeline, page: Plan, partial: PartialPage | None,
                writer: ResultWriter) -> list[RunResult]:
    """The runs an interrupted sweep finished on this page, back as results (their images copied into the new
    page folder, their records given to its writer) so a resumed page runs only the others."""
    if partial is None:
        return []
    from PIL import Image

    old_folder = partial.source / PAGES / partial.name
    results = []
    for record in partial.records:
        index = record["index"] - 1
        spec = page.runs[index]
        image = None
        if record.get("image"):
            shutil.copyfile(old_folder / record["image"], writer.folder / record["image"])
            with Image.open(writer.folder / record["image"]) as opened:
                image = opened.convert("RGB")
        scheduler = spec.preset.build(pipeline.scheduler.config, **spec.config_options)
        results.append(RunResult(index, spec, scheduler, record["status"], image, None, record["model_calls"],
                                 record["seconds"], record["scheduler_seconds"], record["error"],
                                 Accuracy.from_json(record["accuracy"]) if record.get("accuracy") else None))
        writer.records[index] = record
    return results


def _sample(engine: Engine, plan: Plan, writer: ResultWriter) -> EngineReport:
    """Every run, with a transient progress bar on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=terminal.err(), transient=True) as progress:
        task = progress.add_task(f"{len(plan.runs)} runs, {plan.mode}", total=engine.total_model_calls)
        return engine.run(lambda n: progress.advance(task, n), writer.run_finished)


def _show(summary: Summary, written: Written, target: Path, json_output: bool) -> None:
    """The record as JSON, or the tables and a summary line, on stdout."""
    if json_output:
        sys.stdout.write(results_text(written.document))
        return
    terminal.show(timing_table(summary))
    costs = cost_table(summary)
    if costs is not None:
        terminal.show(costs)
    report = summary.report
    terminal.show(f"{len(summary.results)} runs, {summary.model_calls} model calls, "
                  f"{report.wall_seconds:.2f} s wall ({report.mode})")
    files = [str(target / name) for name in written.names]
    terminal.show(f"wrote {', '.join(files)} and {written.images} images")


def _verdict(summary: Summary, written: Written, baseline: dict[str, Any] | None, signals: StopSignals,
             target: Path, options: RunOptions, pipeline: DiffusionPipeline, device: torch.device) -> int:
    """The exit code: interrupted (128 + signal), a failed run (1), a failed CI check (1), or 0."""
    reference = summary.report.reference
    if reference is not None and reference.status == "failed":
        terminal.warning(f"the reference failed, so no run has accuracy figures: {reference.error or ''}")
    if summary.report.interrupted:
        terminal.note("interrupted", f"wrote the runs that finished to {target}")
        return signals.exit_code() or 130
    failed = summary.failed()
    if failed:
        names = ", ".join(f"{r.index + 1} ({r.spec.label})" for r in failed)
        raise RunFailedError(f"{len(failed)} of {len(summary.results)} runs failed: {names}")
    if baseline is not None:
        checks = compare_with_expected(written.document, target, baseline, options.expect, options.tolerance)
        terminal.show(expectation_table(checks, str(options.expect), options.tolerance))
        bad = [c for c in checks if not c.passed]
        if bad:
            names = ", ".join(f"{c.label} {c.steps} ({c.status})" for c in bad)
            raise SchedcmpError(f"{len(bad)} of {len(checks)} images differ from {options.expect}: {names}")
        terminal.note("expect", f"all {len(checks)} images match {options.expect}")
    if options.check_determinism:
        return _check_determinism(summary.plan, pipeline, device, target, signals)
    return 0


def _check_determinism(plan: Plan, pipeline: DiffusionPipeline, device: torch.device, target: Path,
                       signals: StopSignals) -> int:
    """Sample the first run twice more; raise when the latents differ."""
    try:
        with cpu_threads(pipeline.cpu_threads, device), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the run above has shown them already
            check = check_determinism(pipeline, plan)
    except KeyboardInterrupt:
        terminal.note("interrupted", f"during the determinism check; the results are in {target}")
        return signals.exit_code() or 130
    where = f"run 1 ({check.label}, {check.steps} steps)"
    if not check.identical:
        raise SchedcmpError(f"{where} is not deterministic: sampled twice from seed {plan.seed}, its latents "
                            f"differ by up to {check.max_abs_difference:.3g}")
    terminal.note("determinism", f"{where} gave bit-identical latents twice")
    return 0
