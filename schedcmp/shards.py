"""A plan's cells over the ranks of a torch.distributed world. Rank 0 shares the missing cells out by model calls,
every rank computes its share of the references and all ranks get all of them, then each rank runs its cells
(sequential or batched) and sends each one to rank 0 as it ends; rank 0 writes every page exactly as one process
would. Nothing but rank 0's output folder is written, so no filesystem is shared."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from . import __version__, terminal
from .accuracy import Accuracy
from .boundary import StopSignals
from .core.pipeline import DiffusionPipeline, NearestImage
from .distributed import (
    Inbox,
    Message,
    RankLostError,
    World,
    all_gather_bytes,
    blob_tensor,
    broadcast_bytes,
    pack,
    send_to_main,
    share_by_calls,
    tensor_blob,
    unpack,
)
from .engine import Engine, EngineReport, ReferenceResult, RunResult, cpu_threads, run_engines_batched
from .errors import RunFailedError, SchedcmpError
from .outputs.sweep import page_name
from .pages import PageJob, page_engine, restore_result
from .plan import Plan

DRAIN_SECONDS = 15.0  # after a stop, how long rank 0 waits for the workers' last messages (torchrun kills at 30)
PageDone = Callable[[PageJob, EngineReport], None]


def named_pages(plan: Plan) -> dict[str, Plan]:
    """The plan's pages by name: a sweep's pages, or the one page of a comparison (named '')."""
    if not plan.is_sweep:
        return {"": plan}
    return {page_name(page, plan): page for page in plan.pages()}


@dataclass
class RankLoad:
    """One rank's share and what it took: its cells, their model calls, the references it computed, its busy time
    (the seconds of those cells and references), and how it ended ('done', 'stopped', 'failed', 'lost': its
    connection broke, or 'silent': no last word after a stop)."""

    rank: int
    host: str
    device: str
    cells: int = 0
    model_calls: int = 0
    references: int = 0
    busy_seconds: float = 0.0
    status: str = "running"
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "busy_seconds": round(self.busy_seconds, 6)}


def speedup(loads: list[RankLoad], wall_seconds: float) -> float | None:
    """The speed-up over one rank: the ranks' busy time summed (what one rank would spend sampling) over the wall
    time (the ranks' start, waits and exchanges included)."""
    busy = sum(load.busy_seconds for load in loads)
    return busy / wall_seconds if wall_seconds > 0 and busy > 0 else None


# ---------------------------------------------------------------------------------------------------------------
# Start: every rank loaded the same plan and model, or none starts


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def plan_digest(plan: Plan) -> str:
    """What every rank must agree on: the plan as run (its file's path aside) and this program's version."""
    return _digest({**plan.to_json(), "source": None, "schedcmp": __version__})


def _file_fingerprint(path: Path) -> list[Any]:
    """A weights file's size and the sha256 of its first and last MiB (a checkpoint's header and tail): what
    tells two checkpoints apart without reading gigabytes on every rank."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        digest.update(handle.read(2**20))
        handle.seek(max(0, size - 2**20))
        digest.update(handle.read(2**20))
    return [size, digest.hexdigest()]


def _folder_fingerprint(folder: Path) -> list[Any]:
    """A diffusers folder's configs and weight files: each one's path in it and fingerprint."""
    return [[str(p.relative_to(folder)), _file_fingerprint(p)] for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix in (".safetensors", ".json", ".bin", ".txt")]


def weights_fingerprint(model: str, pipeline: DiffusionPipeline, vae: str | None) -> str:
    """The weights' identity: a checkpoint file's sha256 (computed at load), a folder's configs and its weight
    files' fingerprints, or the built-in model's name; with a swapped VAE's (its file's sha256, or its folder's)."""
    provenance = pipeline.provenance or {}
    folder = Path(model).expanduser()
    parts: list[Any] = [provenance.get("sha256") or model]
    if "sha256" not in provenance and folder.is_dir():
        parts = _folder_fingerprint(folder)
    if vae is not None:
        vae_path = Path(vae).expanduser()
        parts.append((provenance.get("vae") or {}).get("sha256") or (
            _file_fingerprint(vae_path) if vae_path.is_file() else _folder_fingerprint(vae_path)))
    return _digest(parts)


def agree(world: World, identity: dict[str, Any] | None, error: str | None) -> list[dict[str, Any]]:
    """Every rank's identity (plan digest, weights, device, host) on every rank, or the first rank's error: a rank
    that could not start, or one whose plan or weights differ from rank 0's, stops them all (rank 0 says why)."""
    mine = {"rank": world.rank, "host": world.host, "error": error, **(identity or {})}
    everyone = [json.loads(data) for data in all_gather_bytes(json.dumps(mine).encode("utf-8"), world)]
    failed = [entry for entry in everyone if entry["error"]]
    if failed:
        first = failed[0]
        where = "" if first["rank"] == 0 else f"rank {first['rank']} ({first['host']}): "
        raise SchedcmpError(where + first["error"])
    main = everyone[0]
    for entry in everyone[1:]:
        for key, what in (("plan", "plan (its file and flags)"), ("weights", "model weights")):
            if entry[key] != main[key]:
                raise SchedcmpError(
                    f"rank {entry['rank']} ({entry['host']}) has another {what} than rank 0 ({main['host']}): "
                    f"{key} digest {entry[key][:12]} against {main[key][:12]}; start every rank with the same plan, "
                    "flags and model files")
    return everyone


# ---------------------------------------------------------------------------------------------------------------
# Shares: which rank runs which cell and computes which reference


@dataclass(frozen=True)
class Assignment:
    """Who runs what: ``cells[page][run index]`` and ``references[page]`` are ranks."""

    cells: dict[str, dict[int, int]]
    references: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"cells": {page: sorted(owners.items()) for page, owners in self.cells.items()},
                "references": self.references}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Assignment:
        return cls({page: {int(i): int(r) for i, r in owners} for page, owners in data["cells"].items()},
                   {page: int(rank) for page, rank in data["references"].items()})

    def indices(self, page: str, rank: int) -> list[int]:
        """The runs of ``page`` that ``rank`` runs, in the page's order."""
        return sorted(i for i, r in self.cells.get(page, {}).items() if r == rank)


def reference_calls(engine: Engine) -> int:
    """What a page's reference costs in model calls: its run's, or the exact solution's equivalent."""
    reference = engine.reference
    if reference is None or reference.status != "not run":
        return 0
    if reference.run is not None:
        return len(reference.run.scheduler.timesteps)
    return engine.pipeline.exact_solution_calls


def assign(jobs: list[PageJob], world: World) -> Assignment:
    """The cells of every page job over the ranks by their model calls (longest first), and the references of
    the pages with cells to run over the ranks by theirs, each phase balanced on its own (references are all
    computed before any cell runs)."""
    cells = [(job.name, result.index, len(result.scheduler.timesteps)) for job in jobs
             for result in job.engine.results]
    owners = share_by_calls([calls for _page, _index, calls in cells], world.size)
    by_page: dict[str, dict[int, int]] = {job.name: {} for job in jobs}
    for (page, index, _calls), rank in zip(cells, owners, strict=True):
        by_page[page][index] = rank
    with_reference = [job for job in jobs if reference_calls(job.engine) > 0]
    reference_owners = share_by_calls([reference_calls(job.engine) for job in with_reference], world.size)
    return Assignment(by_page, {job.name: rank for job, rank in zip(with_reference, reference_owners, strict=True)})


def local_engines(pipeline: DiffusionPipeline, pages: dict[str, Plan], assignment: Assignment, rank: int,
                  encoded: dict) -> dict[str, Engine]:
    """This rank's engines: one per page where it runs cells or computes the reference, over its cells only."""
    engines = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank 0 showed them when it prepared the whole plan
        for name, page in pages.items():
            indices = assignment.indices(name, rank)
            if indices or assignment.references.get(name) == rank:
                engines[name] = page_engine(pipeline, page, indices, encoded)
    return engines


# ---------------------------------------------------------------------------------------------------------------
# References: computed by their owners, then every rank has every one


def _reference_message(reference: ReferenceResult) -> bytes:
    header: dict[str, Any] = {"status": reference.status, "error": reference.error, "seconds": reference.seconds,
                              "model_calls": reference.model_calls,
                              "nearest": list(reference.nearest) if reference.nearest else None}
    blobs = []
    if reference.latents is not None:
        header["latents"], data = tensor_blob(reference.latents)
        blobs.append(data)
    if reference.image is not None:
        header["image"] = {"size": list(reference.image.size), "mode": reference.image.mode}
        blobs.append(reference.image.tobytes())
    return pack(header, blobs)


def _restore_reference(reference: ReferenceResult, data: bytes, device: torch.device) -> None:
    """``reference`` (not computed here) as its owner computed it, bit for bit."""
    header, blobs = unpack(data)
    reference.status, reference.error, reference.seconds = header["status"], header["error"], header["seconds"]
    reference.nearest = NearestImage(*header["nearest"]) if header["nearest"] else None
    if reference.run is not None:
        reference.run.status, reference.run.model_calls = header["status"], header["model_calls"]
    if "latents" in header:
        reference.latents = blob_tensor(header["latents"], blobs.pop(0), device)
    if "image" in header:
        reference.image = Image.frombytes(header["image"]["mode"], tuple(header["image"]["size"]), blobs.pop(0))
    if reference.run is not None:
        reference.run.latents, reference.run.image = reference.latents, reference.image


def share_references(world: World, engines: dict[str, Engine], assignment: Assignment,
                     also: dict[str, Engine] | None = None) -> None:
    """Compute this rank's references, then hand each from its owner to every rank (collective, in the
    assignment's order); ``also``: more engines of the same pages that need them (rank 0's whole pages)."""
    mine = [name for name, rank in assignment.references.items() if rank == world.rank]
    if mine:
        first = engines[mine[0]]
        with cpu_threads(first.pipeline.cpu_threads, first.device):
            first.warm_up()
            with torch.inference_mode():
                for name in mine:
                    engines[name]._run_reference()
    for name, owner in assignment.references.items():
        data = broadcast_bytes(_reference_message(engines[name].reference) if owner == world.rank else None, owner)
        for group in (engines, also or {}):
            engine = group.get(name)
            if engine is not None and engine.reference is not None and engine.reference.status == "not run":
                _restore_reference(engine.reference, data, engine.device)


# ---------------------------------------------------------------------------------------------------------------
# Cells: run where they were assigned, each sent to rank 0 as it ends


def _cell_message(page: str, result: RunResult, notes: list[str]) -> tuple[dict[str, Any], list[bytes]]:
    accuracy = None
    if result.accuracy is not None:
        accuracy = dataclasses.asdict(result.accuracy)
        accuracy["psnr"] = None if accuracy["psnr"] == float("inf") else accuracy["psnr"]
    header: dict[str, Any] = {
        "kind": "cell", "page": page, "index": result.index, "status": result.status, "error": result.error,
        "model_calls": result.model_calls, "seconds": result.seconds, "scheduler_seconds": result.scheduler_seconds,
        "accuracy": accuracy, "device": result.device, "warnings": notes}
    blobs = []
    if result.image is not None:
        header["image"] = {"size": list(result.image.size), "mode": result.image.mode}
        blobs.append(result.image.tobytes())
    if result.latents is not None:
        header["latents"], data = tensor_blob(result.latents)
        blobs.append(data)
    return header, blobs


def _restore_cell(result: RunResult, message: Message, device: torch.device) -> RunResult:
    """The placeholder of a cell another rank ran, filled in with what it sent, bit for bit."""
    header, blobs = message.header, list(message.blobs)
    accuracy = None
    if header["accuracy"] is not None:
        fields = dict(header["accuracy"])
        fields["psnr"] = float("inf") if fields["psnr"] is None else fields["psnr"]
        accuracy = Accuracy(**fields)
    restore_result(result, header["status"], header["error"], header["model_calls"], header["seconds"],
                   header["scheduler_seconds"], accuracy, message.source, header["device"])
    if "image" in header:
        result.image = Image.frombytes(header["image"]["mode"], tuple(header["image"]["size"]), blobs.pop(0))
    if "latents" in header:
        result.latents = blob_tensor(header["latents"], blobs.pop(0), device)
    return result


def _run_share(engines: dict[str, Engine], plan: Plan, progress: Callable[[int], None],
               finished: Callable[[str, RunResult], None]) -> bool:
    """Run this rank's cells (each page's engine in turn, or all as one continuous batch); whether it stopped."""
    running = {name: engine for name, engine in engines.items() if engine.results}
    if not running:
        return False
    if plan.mode == "batched":
        names = {id(engine): name for name, engine in running.items()}
        reports = run_engines_batched(list(running.values()), progress,
                                      lambda engine, result: finished(names[id(engine)], result), plan.max_batch)
        return any(report.interrupted for report in reports)
    for name, engine in running.items():
        report = engine.run(progress, lambda result, name=name: finished(name, result))
        if report.interrupted:
            return True
    return False


def serve(world: World, plan: Plan, pipeline: DiffusionPipeline, signals: StopSignals) -> int:
    """A worker rank: take its share from rank 0, help compute the references, run its cells and send each to rank
    0 as it ends, then how it ended. It writes nothing and prints only what is about itself alone."""
    setup = json.loads(broadcast_bytes(None, 0))
    if "error" in setup:  # rank 0 could not prepare the plan and says so
        return 1
    assignment = Assignment.from_json(setup["assignment"])
    status, error = "done", None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engines = local_engines(pipeline, named_pages(plan), assignment, world.rank, {})
            share_references(world, engines, assignment)

            def finished(page: str, result: RunResult) -> None:
                with signals.deferred():
                    result.rank = world.rank
                    notes = list(dict.fromkeys(str(w.message) for w in caught))
                    caught.clear()
                    send_to_main(*_cell_message(page, result, notes))

            if _run_share(engines, plan, lambda _n: None, finished) or signals.exit_code() is not None:
                status = "stopped"
    except RankLostError as err:
        return _orphaned(world, err)
    except KeyboardInterrupt:
        status = "stopped"
    except Exception as err:  # told to rank 0, which names this rank and keeps what finished
        status, error = "failed", f"{type(err).__name__}: {terminal.one_line(str(err))}"
    try:
        with signals.deferred():
            send_to_main({"kind": status, "error": error})
    except RankLostError as err:
        return _orphaned(world, err)
    if status == "failed":
        return 70
    return signals.exit_code() or (130 if status == "stopped" else 0)


def _orphaned(world: World, err: RankLostError) -> int:
    """A worker whose rank 0 is gone: one line, and the error exit (what finished is in rank 0's staging folder)."""
    terminal.error(f"rank {world.rank} ({world.host}): {err}; the cells that ended are in rank 0's output or its "
                   "staging folder, which --resume reads")
    return 1


# ---------------------------------------------------------------------------------------------------------------
# Rank 0: its own share, and everything the others send


@dataclass
class ShardedOutcome:
    """How the plan went over the ranks: each page's report (every run, from whichever rank), each rank's load,
    the wall time, whether it stopped early, and what lost ranks left unrun."""

    reports: dict[str, EngineReport]
    loads: list[RankLoad]
    wall_seconds: float
    stopped: bool
    lost: dict[int, list[str]] = field(default_factory=dict)

    def ranks_json(self) -> dict[str, Any]:
        """The per-rank load for the record (results.json, sweep.json, the report)."""
        gain = speedup(self.loads, self.wall_seconds)
        return {"world_size": len(self.loads), "wall_seconds": round(self.wall_seconds, 6),
                "speedup_over_one_rank": None if gain is None else round(gain, 3),
                "ranks": [load.to_json() for load in self.loads]}

    def describe(self) -> str:
        """One line for the terminal: each rank's share and the speed-up over one rank."""
        shares = "; ".join(f"rank {load.rank} ({load.device}) {load.cells} cells, {load.model_calls} calls, "
                           f"{load.busy_seconds:.1f} s" for load in self.loads)
        gain = speedup(self.loads, self.wall_seconds)
        tail = "" if gain is None else (f"; {gain:.2f}x one rank's speed (busy time summed over "
                                        f"{self.wall_seconds:.1f} s of wall time)")
        return f"{len(self.loads)} ranks: {shares}{tail}"

    def lost_error(self, kept_in: Path, finish_with: str) -> RunFailedError | None:
        """The one line for ranks that went away or failed: which, and the cells they did not finish."""
        if not self.lost:
            return None
        parts = []
        for rank, cells in sorted(self.lost.items()):
            load = self.loads[rank]
            how = {"failed": f"failed ({load.error})", "silent": "stopped answering"}.get(load.status, "went away")
            listed = ", ".join(cells[:4]) + (f" and {len(cells) - 4} more" if len(cells) > 4 else "")
            parts.append(f"rank {rank} ({load.host}, {load.device}) {how} with {len(cells)} cells unfinished"
                         + (f": {listed}" if cells else ""))
        finished = sum(1 for report in self.reports.values() for r in report.results if r.status in ("ok", "failed"))
        return RunFailedError("; ".join(parts) + f"; the {finished} cells that finished are kept in {kept_in}; "
                              + finish_with)


class MainRank:
    """Rank 0 of a sharded plan: shares the page jobs out, runs its own share, and takes the others' cells as they
    come (between its own model calls), writing each at once and each page as its last cell ends."""

    def __init__(self, world: World, plan: Plan, pipeline: DiffusionPipeline, signals: StopSignals,
                 peers: list[dict[str, Any]]):
        """``peers``: every rank's identity from the start (its host and device)."""
        self.world, self.plan, self.pipeline, self.signals = world, plan, pipeline, signals
        self.announced = False
        self.jobs: dict[str, PageJob] = {}
        self.loads = [RankLoad(peer["rank"], peer["host"], peer["device"]) for peer in peers]
        self.finished_pages: set[str] = set()
        self.notes: list[str] = []

    def abandon(self) -> None:
        """Rank 0 could not prepare the plan: tell the workers still waiting for their shares, so they stop."""
        if not self.announced:
            self.announced = True
            try:
                broadcast_bytes(json.dumps({"error": "rank 0 stopped"}).encode("utf-8"), 0)
            except RankLostError:  # a worker is gone already; the others see rank 0 go
                pass

    def run(self, jobs: list[PageJob], progress: Callable[[int], None],
            page_done: PageDone | None = None) -> ShardedOutcome:
        """Every missing cell of every job over the ranks; ``page_done`` gets each page as its last cell ends."""
        start = time.perf_counter()
        self.jobs = {job.name: job for job in jobs}
        self.progress, self.page_done = progress, page_done
        assignment = assign(jobs, self.world)
        broadcast_bytes(json.dumps({"assignment": assignment.to_json()}).encode("utf-8"), 0)
        self.announced = True
        self.assignment = assignment
        engines = local_engines(self.pipeline, {name: job.page for name, job in self.jobs.items()}, assignment, 0,
                                {})
        share_references(self.world, engines, assignment, {name: job.engine for name, job in self.jobs.items()})
        for name, owner in assignment.references.items():
            reference = self.jobs[name].engine.reference
            self.loads[owner].references += 1
            self.loads[owner].busy_seconds += reference.seconds
            progress(reference.model_calls)
        self.inbox = Inbox(self.world)
        stopped = False
        try:
            stopped = _run_share(engines, self.plan, self._progress, lambda page, result: self._place(page, result))
        except KeyboardInterrupt:
            stopped = True
        self.loads[0].status = "stopped" if stopped else "done"
        stopped = self._wait_for_workers(stopped)
        self.inbox.close()
        wall = time.perf_counter() - start
        return self._outcome(wall, stopped)

    def _progress(self, calls: int) -> None:
        self.progress(calls)
        self._handle(self.inbox.take())

    def _place(self, page: str, result: RunResult) -> None:
        """A cell has ended: into its page (replacing the placeholder), written now; the page when it is whole."""
        job = self.jobs[page]
        load = self.loads[result.rank]
        load.cells, load.model_calls, load.busy_seconds = (load.cells + 1, load.model_calls + result.model_calls,
                                                           load.busy_seconds + result.seconds)
        with self.signals.deferred():
            results = job.engine.results
            position = next(i for i, r in enumerate(results) if r.index == result.index)
            results[position] = result
            job.writer.run_finished(result)
            if all(r.status in ("ok", "failed") for r in results) and page not in self.finished_pages:
                self.finished_pages.add(page)
                if self.page_done is not None:
                    self.page_done(job, self._page_report(job, interrupted=False))

    def _handle(self, messages: list[Message]) -> None:
        for message in messages:
            if message.kind == "cell":
                job = self.jobs[message.header["page"]]
                placeholder = next(r for r in job.engine.results if r.index == message.header["index"])
                for note in message.header["warnings"]:
                    if note not in self.notes:
                        terminal.warning(f"rank {message.source}: {note}")
                        self.notes.append(note)
                result = _restore_cell(dataclasses.replace(placeholder), message, self.pipeline.device)
                self.progress(result.model_calls)
                if result.status in ("ok", "failed"):
                    self._place(message.header["page"], result)
            elif message.kind in ("done", "stopped", "failed"):
                load = self.loads[message.source]
                load.status, load.error = message.kind, message.header["error"]
            elif message.kind == "lost":
                self._lose(message.source, message.header["error"])

    def _lose(self, rank: int, error: str) -> None:
        """A rank gone before its last message (its connection broke)."""
        self.loads[rank].status, self.loads[rank].error = "lost", error

    def _wait_for_workers(self, stopped: bool) -> bool:
        """Take the workers' cells until each has sent its last message or gone; after a stop signal, for at most
        DRAIN_SECONDS. Returns whether the plan stopped early."""
        stop_time = time.monotonic() if stopped or self.signals.exit_code() is not None else None
        while self.inbox.open:
            if stop_time is not None and time.monotonic() - stop_time > DRAIN_SECONDS:
                break
            try:
                self._handle(self.inbox.take(timeout=0.2))
            except KeyboardInterrupt:
                stop_time = stop_time or time.monotonic()
        for rank in sorted(self.inbox.open):  # no last message in DRAIN_SECONDS after the stop: counted as gone
            self.loads[rank].status = "silent"
        return stop_time is not None or any(load.status in ("stopped", "lost") for load in self.loads)

    def _page_report(self, job: PageJob, interrupted: bool) -> EngineReport:
        """A page's report from its cells, wherever they ran: its wall time is theirs and its reference's summed."""
        results = job.engine.results
        reference = job.engine.reference
        wall = sum(r.seconds for r in results) + (reference.seconds if reference is not None else 0.0)
        return EngineReport(list(results), self.plan.mode, wall, interrupted, max_batch=self.plan.max_batch,
                            max_batch_reason="set by the plan" if self.plan.max_batch else
                            ("each rank fits its own batch to its memory" if self.plan.mode == "batched" else None),
                            reference=reference)

    def _outcome(self, wall: float, stopped: bool) -> ShardedOutcome:
        lost: dict[int, list[str]] = {}
        lost_ranks = {load.rank for load in self.loads if load.status in ("lost", "failed", "silent")}
        for name, job in self.jobs.items():
            for result in job.engine.results:
                if result.status in ("ok", "failed"):
                    continue
                owner = self.assignment.cells[name].get(result.index, 0)
                if owner in lost_ranks:
                    result.error = f"rank {owner} ended before it finished"
                    lost.setdefault(owner, []).append(
                        f"{name + ': ' if name else ''}{result.spec.label} {result.spec.steps} steps")
        for rank in lost_ranks:
            lost.setdefault(rank, [])
        reports = {name: self._page_report(job, interrupted=name not in self.finished_pages)
                   for name, job in self.jobs.items()}
        return ShardedOutcome(reports, self.loads, wall, stopped, lost)


def pin_device(world: World, device: str) -> str:
    """The device a rank runs on: its node's GPU LOCAL_RANK where the plan asks for CUDA (or 'auto' finds it)."""
    if not world.distributed:
        return device
    wants_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not wants_cuda:
        return device
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise SchedcmpError(f"LOCAL_RANK {world.local_rank} has no GPU: this node has {count}; start at most {count} "
                            "processes per node (torchrun --nproc-per-node)")
    return f"cuda:{world.local_rank}"
