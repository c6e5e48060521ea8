"""One invocation of `schedcmp run`: plan -> load -> engine -> accuracy -> outputs, written atomically.

The output folder is checked before anything loads; results go to a staging folder beside it (each image as its
run ends) and are moved in at the end, so a failed start or a crash leaves the folder as it was."""

from __future__ import annotations

import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import terminal
from .boundary import StopSignals
from .core.load import load_pipeline
from .core.pipeline import DiffusionPipeline
from .distributed import World, join, leave, world_from_environment
from .engine import Engine, EngineReport, cpu_threads, run_engines_batched
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
    write_sweep,
)
from .outputs.tables import cost_table, expectation_table, timing_table
from .outputs.writer import ResultWriter, Written
from .pages import PageJob, finish_page, prepare_page
from .plan import Plan
from .shards import MainRank, RankLoad, ShardedOutcome, agree, pin_device, plan_digest, serve, weights_fingerprint
from .smoke import DEFAULT_TOLERANCE_DB, check_determinism, compare_with_expected, identical_results, read_expected
from .statistics import cell_statistics, pareto_front, recommend
from .terminal import shown_warnings

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
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SchedcmpError("--device cuda: no CUDA device is available here (try --device cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise SchedcmpError("--device mps: no Apple MPS device is available here (try --device cpu)")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device, model: str) -> torch.dtype:
    """'auto' is fp16 on CUDA for real models and fp32 elsewhere (builtin:shapes is always exact fp32)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" and not model.startswith("builtin:") else torch.float32
    return DTYPES[name]


def _read_baseline(expect: Path | None, out: Path) -> dict[str, Any] | None:
    """The record of the previous run --expect names (read before sampling); it must not be this run's folder."""
    if expect is None:
        return None
    if expect.resolve() == out.resolve():
        raise OutputFolderError(f"--expect {expect} is the output folder of this run; point it at a previous run's "
                                "folder (copy it aside first)")
    return read_expected(expect)


def _load(plan: Plan, options: RunOptions, device_name: str | None = None
          ) -> tuple[DiffusionPipeline, torch.device, Plan]:
    """The pipeline on its device (``device_name``, else the plan's; compiled if asked), and the plan with the
    model's defaults filled in."""
    device = resolve_device(device_name or plan.device)
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


def run_comparison(make_plan: Callable[[], Plan], options: RunOptions, signals: StopSignals) -> int:
    """Build the plan, load the model once, run every cell, write every output; returns the exit code. Under
    torchrun (WORLD_SIZE > 1) every rank runs a share of the cells and rank 0 writes the one output folder; the plan
    is built once this process is in its world, so a plan one rank cannot build stops them all."""
    world = world_from_environment()
    if not world.distributed:
        return _run_here(world, make_plan(), options, signals)
    join(world)
    try:
        if world.rank == 0:
            return _run_here(world, _agreed_plan(world, make_plan), options, signals)
        try:
            plan = _agreed_plan(world, make_plan)
            return _serve(world, plan, options, signals)
        except SchedcmpError:
            return 1  # rank 0 says why
        except KeyboardInterrupt as stop:  # rank 0 reports the stop and what was kept
            return getattr(stop, "exit_code", 130)
    finally:
        leave()


def _agreed_plan(world: World, make_plan: Callable[[], Plan]) -> Plan:
    """The plan; where this rank cannot build it, its error goes to every rank in the start's agreement (which
    the others reach after loading), so no rank waits for it."""
    try:
        return make_plan()
    except SchedcmpError as err:
        agree(world, None, str(err))
        raise


@dataclass(frozen=True)
class _Started:
    """What a rank starts with: rank 0's checked outputs, the pipeline, its device, the plan with the model's
    defaults, and every rank's identity (host, device) in a world."""

    checked: Any
    pipeline: DiffusionPipeline
    device: torch.device
    plan: Plan
    peers: list[dict[str, Any]]

    def main_rank(self, world: World, signals: StopSignals) -> MainRank | None:
        """Rank 0's side of a world (None for one process)."""
        return MainRank(world, self.plan, self.pipeline, signals, self.peers) if world.distributed else None


def _start(world: World, plan: Plan, options: RunOptions, checks: Callable[[], Any]) -> _Started:
    """Rank 0's checks of its outputs, then the model on this rank's device; across ranks, every rank starts with
    the same plan and weights or none does (rank 0 says which rank could not, and why)."""
    if not world.distributed:
        checked = checks()
        return _Started(checked, *_load(plan, options), [])
    checked = loaded = error = None
    try:
        checked = checks() if world.rank == 0 else None
        loaded = _load(plan, options, pin_device(world, plan.device))
    except SchedcmpError as err:
        error = str(err)
    identity = None if loaded is None else {"plan": plan_digest(plan), "device": str(loaded[1]),
                                            "weights": weights_fingerprint(plan.model, loaded[0], plan.vae)}
    peers = agree(world, identity, error)
    return _Started(checked, *loaded, peers)


def _serve(world: World, plan: Plan, options: RunOptions, signals: StopSignals) -> int:
    """A worker rank: start with the others, then run the share rank 0 gives it. What goes wrong with the plan or
    the model is rank 0's to say (once, naming the rank), so this rank exits quietly."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rank 0 shows them
            started = _start(world, plan, options, lambda: None)
    except SchedcmpError:
        return 1
    return serve(world, started.plan, started.pipeline, signals)


def _run_here(world: World, plan: Plan, options: RunOptions, signals: StopSignals) -> int:
    """The comparison with this process writing it: alone, or as rank 0 of a world."""
    if plan.is_sweep:
        return run_sweep(plan, options, signals, world)
    if options.resume:
        raise SchedcmpError("--resume finishes a sweep (--seeds, a guidance list, prompt axes); this plan has one "
                            "page: run it again with --overwrite")

    def checks() -> tuple[OutputFolder, dict[str, Any] | None]:
        folder = _output_folder(options)
        return folder, _read_baseline(options.expect, folder.target)

    notes: list[str] = []
    with shown_warnings(notes):
        started = _start(world, plan, options, checks)
    main = started.main_rank(world, signals)
    (folder, baseline), pipeline, device = started.checked, started.pipeline, started.device
    try:
        return _compare(started.plan, options, signals, folder, baseline, pipeline, device, notes, main)
    except BaseException:
        if main is not None:
            main.abandon()
        raise


def _compare(plan: Plan, options: RunOptions, signals: StopSignals, folder: OutputFolder,
             baseline: dict[str, Any] | None, pipeline: DiffusionPipeline, device: torch.device, notes: list[str],
             main: MainRank | None) -> int:
    """One page: every run (here, or over the ranks), then its folder, the tables and the verdict."""
    with shown_warnings(notes):
        engine = Engine(pipeline, plan)
    size = plan.size or pipeline.default_size
    staging = folder.open_staging()
    outcome = None
    try:
        writer = ResultWriter(staging, plan, size, pipeline.provenance)
        with shown_warnings(notes):
            if main is None:
                report = _sample(engine, plan, writer)
            else:
                outcome = _sample_on_ranks(main, PageJob("", plan, engine, writer, [], []))
                report = outcome.reports[""]
                report.ranks = outcome.ranks_json()
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
    if outcome is not None and not options.json_output:
        terminal.show(outcome.describe())
    lost = outcome.lost_error(folder.target, "run the same command again for them (a comparison of one page "
                              "runs whole; sweeps resume)") if outcome else None
    if lost is not None:
        raise lost
    return _verdict(summary, written, baseline, signals, folder.target, options, pipeline, device)


def _sample_on_ranks(main: MainRank, job: PageJob) -> ShardedOutcome:
    """Every run of one page over the ranks, with a transient progress bar on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=terminal.err(), transient=True) as progress:
        task = progress.add_task(f"{len(job.page.runs)} runs, {job.page.mode}, {main.world.size} ranks",
                                 total=job.engine.total_model_calls)
        return main.run([job], lambda n: progress.advance(task, n))


def _sweep_checks(options: RunOptions) -> OutputFolder:
    if options.expect is not None or options.check_determinism:
        raise SchedcmpError("--expect and --check-determinism check one page; run them without --seeds or a "
                            "guidance sweep")
    return _output_folder(options)


def run_sweep(plan: Plan, options: RunOptions, signals: StopSignals, world: World | None = None) -> int:
    """A sweep over seeds, guidance and prompts: every page (one of each) is the comparison it would be alone, in
    its own folder under pages/, written as it finishes; then the statistics over seeds, the Pareto front and the
    recommendation (sweep.json, statistics.csv, the terminal) and a grid per page at the top."""
    world = world or World()
    notes: list[str] = []
    with shown_warnings(notes):
        started = _start(world, plan, options, lambda: _sweep_checks(options))
    main = started.main_rank(world, signals)
    try:
        return _sweep(started.plan, options, signals, started.checked, started.pipeline, notes, main)
    except BaseException:
        if main is not None:
            main.abandon()
        raise


def _sweep(plan: Plan, options: RunOptions, signals: StopSignals, folder: OutputFolder, pipeline: DiffusionPipeline,
           notes: list[str], main: MainRank | None) -> int:
    """The sweep's pages (here, or over the ranks), then its own outputs and what the terminal shows."""
    kept, partial = finished_pages(folder.target, plan) if options.resume else ({}, {})
    if kept or partial:
        runs = sum(len(p.records) for p in partial.values())
        more = f" and {runs} runs of unfinished ones" if partial else ""
        terminal.note("resume", f"{len(kept)} of {len(plan.pages())} pages are finished{more}; running the others")
    staging = folder.open_staging()
    try:
        pages, interrupted, ranks = _run_pages(plan, pipeline, kept, partial, folder.target, staging, notes, signals,
                                               main)
        with signals.deferred():
            samples = [sample for _name, page in pages for sample in samples_of(page)]
            cells = cell_statistics(samples, plan.target_error)
            recommendation = recommend(cells, plan.target_error)
            (staging / IMAGES).rmdir()  # a sweep's images are in its pages
            names = write_sweep(staging, plan, pages, cells, pareto_front(cells), recommendation,
                                ranks.ranks_json())
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
        if len(ranks.loads) > 1:
            terminal.show(ranks.describe())
    lost = ranks.lost_error(folder.target, "run the same command with --resume to finish the rest (on any number "
                            "of ranks)")
    if lost is not None:
        raise lost
    if interrupted:
        terminal.note("interrupted", f"wrote the pages that finished to {folder.target}")
        return signals.exit_code() or 130
    failed = [(name, label) for name, page in pages for label in failed_labels(page)]
    if failed:
        listed = ", ".join(f"{name} ({label})" for name, label in failed[:5])
        raise RunFailedError(f"{len(failed)} runs of the sweep failed: {listed}")
    return 0


def _run_pages(plan: Plan, pipeline: DiffusionPipeline, kept: dict[str, KeptPage], partial: dict[str, PartialPage],
               target: Path, staging: Path, notes: list[str], signals: StopSignals,
               main: MainRank | None) -> tuple[list[tuple[str, Summary | KeptPage]], bool, ShardedOutcome]:
    """Every page of the sweep into staging/pages/ (kept ones copied from the target), under one progress bar
    with the time left over the whole sweep: one page after another, in batched mode all pages' runs as lanes of
    one continuous batch, or over the ranks of a world. A stop signal ends it after what is in progress. Returns
    the pages in the sweep's order, whether it stopped early and the ranks' loads."""
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
            todo.append(prepare_page(name, page, pipeline, partial.get(name), staging / PAGES / name, encoded))
    stopped = False
    start = time.perf_counter()
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=terminal.err(), transient=True) as progress:
        ranks = f", {main.world.size} ranks" if main is not None else ""
        overall = progress.add_task(f"sweep: {len(todo)} pages{ranks}",
                                    total=sum(run.engine.total_model_calls for run in todo))
        if main is not None:
            outcome = main.run(todo, lambda n: progress.advance(overall, n), lambda job, report: done.__setitem__(
                job.name, finish_page(job, report, pipeline, notes, signals)))
            for run in todo:
                if run.name not in done:
                    done[run.name] = finish_page(run, outcome.reports[run.name], pipeline, notes, signals)
            return [(page_name(p, plan), done[page_name(p, plan)]) for p in plan.pages()], outcome.stopped, outcome
        if plan.mode == "batched" and todo:
            with shown_warnings(todo[0].notes):
                reports = run_engines_batched([run.engine for run in todo], lambda n: progress.advance(overall, n),
                                              lambda engine, result: _writer_of(todo, engine).run_finished(result),
                                              plan.max_batch)
            for run, report in zip(todo, reports, strict=True):
                done[run.name] = finish_page(run, report, pipeline, notes, signals)
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
                done[run.name] = finish_page(run, report, pipeline, notes, signals)
                if report.interrupted or signals.exit_code() is not None:  # a stop while the page was written
                    stopped = True
                    break
    names = [page_name(page, plan) for page in plan.pages()]
    alone = _one_rank(todo, pipeline, time.perf_counter() - start, stopped)
    return [(name, done[name]) for name in names if name in done], stopped, alone


def _one_rank(todo: list[PageJob], pipeline: DiffusionPipeline, wall: float, stopped: bool) -> ShardedOutcome:
    """A sweep in one process as a world of one rank: its load is every cell it ran."""
    ran = [r for job in todo for r in job.engine.results if r.status in ("ok", "failed")]
    references = [job.engine.reference for job in todo if job.engine.reference is not None]
    load = RankLoad(0, World().host, str(pipeline.device), len(ran), sum(r.model_calls for r in ran),
                    len(references), sum(r.seconds for r in ran) + sum(r.seconds for r in references),
                    "stopped" if stopped else "done")
    return ShardedOutcome({}, [load], wall, stopped)


def _writer_of(todo: list[PageJob], engine: Engine) -> ResultWriter:
    return next(run.writer for run in todo if run.engine is engine)


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
