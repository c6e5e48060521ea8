"""A sweep's pages as units of work: each page's folder, writer and engine over the runs it still needs, the runs
an interrupted sweep (or another rank) finished put back as results, and a finished page written whole."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

from .accuracy import Accuracy
from .boundary import StopSignals
from .core.pipeline import DiffusionPipeline
from .engine import Engine, EngineReport, RunResult
from .outputs.record import IMAGES
from .outputs.summary import Summary
from .outputs.sweep import PAGES, PartialPage, write_page_entry, write_page_identity
from .outputs.writer import ResultWriter
from .plan import Plan
from .terminal import shown_warnings


@dataclass
class PageJob:
    """One page to run: its plan and name, the engine over its missing runs, its writer and the runs kept."""

    name: str
    page: Plan
    engine: Engine
    writer: ResultWriter
    ended: list[RunResult]
    notes: list[str]

    @property
    def results(self) -> list[RunResult]:
        """Every run of the page in its order: those kept from before and those this run makes."""
        return sorted([*self.ended, *self.engine.results], key=lambda r: r.index)


def prepare_page(name: str, page: Plan, pipeline: DiffusionPipeline, partial: PartialPage | None,
                 folder: Path, encoded: dict) -> PageJob:
    """A page's folder, writer and engine over the runs it still needs (all, or those a stop left unfinished);
    ``folder`` is where the page is written (a sweep's pages/<name>, or the whole staging folder of one page)."""
    (folder / IMAGES).mkdir(parents=True, exist_ok=True)
    write_page_identity(folder, page)
    size = page.size or pipeline.default_size
    writer = ResultWriter(folder, page, size, pipeline.provenance)
    ended = _ended_runs(pipeline, page, partial, writer)
    page_notes: list[str] = []
    with shown_warnings(page_notes):
        missing = [i for i in range(len(page.runs)) if i not in {r.index for r in ended}]
        if not missing:  # every run ended but the page did not: the engine still needs one to run
            ended, missing = ended[:-1], [ended[-1].index]
        engine = page_engine(pipeline, page, missing, encoded)
    return PageJob(name, page, engine, writer, ended, page_notes)


def page_engine(pipeline: DiffusionPipeline, page: Plan, indices: list[int], encoded: dict) -> Engine:
    """An engine over some runs of a page (``indices``, in the page's order), each result keeping its place on
    the whole page (its image name, its "run N") and computing what it would on the whole page."""
    engine = Engine(pipeline, dataclasses.replace(page, runs=tuple(page.runs[i] for i in indices)), encoded, page)
    for result, index in zip(engine.results, indices, strict=True):
        result.index = index
    return engine


def finish_page(job: PageJob, report: EngineReport, pipeline: DiffusionPipeline, notes: list[str],
                signals: StopSignals) -> Summary:
    """The page's results, the kept runs among them, written as a whole comparison folder."""
    with signals.deferred():
        report.results = sorted([*job.ended, *report.results], key=lambda r: r.index)
        report.warnings.extend(notes + job.notes)
        summary = Summary.build(job.page, report, pipeline.describe(), job.page.size or pipeline.default_size)
        job.writer.finish(summary)
        write_page_entry(job.writer.folder, job.name, summary)
    return summary


def restore_result(result: RunResult, status: str, error: str | None, model_calls: int, seconds: float,
                   scheduler_seconds: float, accuracy: Accuracy | None, rank: int, device: str) -> RunResult:
    """``result`` (a run not run here) filled in with how it went where it ran: another rank, or an earlier run."""
    result.status, result.error, result.model_calls = status, error, model_calls
    result.seconds, result.scheduler_seconds, result.accuracy = seconds, scheduler_seconds, accuracy
    result.rank, result.device = rank, device
    return result


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
        result = RunResult(index, spec, spec.preset.build(pipeline.scheduler.config, **spec.config_options))
        if record.get("image"):
            shutil.copyfile(old_folder / record["image"], writer.folder / record["image"])
            with Image.open(writer.folder / record["image"]) as opened:
                result.image = opened.convert("RGB")
        accuracy = Accuracy.from_json(record["accuracy"]) if record.get("accuracy") else None
        results.append(restore_result(result, record["status"], record["error"], record["model_calls"],
                                      record["seconds"], record["scheduler_seconds"], accuracy,
                                      record.get("rank", 0), record.get("device", "")))
        writer.keep(index, record)
    return results
