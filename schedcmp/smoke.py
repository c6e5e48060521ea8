"""CI smoke checks of a user's pipeline: images against a previous run, determinism, and swaps that did nothing."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .core.pipeline import DiffusionPipeline
from .engine import Engine, RunResult
from .errors import SchedcmpError
from .metrics import psnr
from .plan import Plan

DEFAULT_TOLERANCE_DB = 40.0


class SmokeCheckError(SchedcmpError):
    """A smoke check could not be carried out (e.g. --expect names no previous run)."""


@dataclass(frozen=True)
class ImageCheck:
    """One run's image against the expected run's: its PSNR and whether it passes."""

    label: str
    steps: int
    psnr: float | None  # None when there was nothing to compare
    status: str  # 'ok', 'drifted', 'failed', 'new run' or 'missing'

    @property
    def passed(self) -> bool:
        return self.status == "ok"


def _run_key(run: dict[str, Any]) -> tuple[str, str, int, str]:
    """Runs match across two results.json files by scheduler, label, steps and options."""
    return (str(run.get("scheduler")), str(run.get("label")), int(run.get("steps", 0)),
            json.dumps(run.get("options") or {}, sort_keys=True))


def read_expected(folder: Path) -> dict[str, Any]:
    """The results.json of a previous run's output folder, or a clear error saying what is missing."""
    record = folder / "results.json"
    if not record.is_file():
        raise SmokeCheckError(f"--expect {folder}: no results.json there; point --expect at the --out folder of a "
                              "previous schedcmp run")
    try:
        document = json.loads(record.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SmokeCheckError(f"--expect {folder}: results.json is not valid JSON ({err})") from None
    if not isinstance(document, dict) or not isinstance(document.get("runs"), list):
        raise SmokeCheckError(f"--expect {folder}: results.json has no list of runs; is it from schedcmp?")
    return document


def compare_with_expected(document: dict[str, Any], folder: Path, baseline: dict[str, Any], expected_folder: Path,
                          tolerance_db: float) -> list[ImageCheck]:
    """Each run's image against the same run's in ``baseline`` (``read_expected(expected_folder)``): PSNR >=
    ``tolerance_db`` passes; runs only one side has are reported as 'new run' or 'missing'."""
    expected = {_run_key(run): run for run in baseline["runs"]}
    checks = []
    for run in document["runs"]:
        key = _run_key(run)
        label, steps = str(run.get("label")), int(run.get("steps", 0))
        before = expected.pop(key, None)
        if before is None:
            checks.append(ImageCheck(label, steps, None, "new run"))
        elif not run.get("image"):
            checks.append(ImageCheck(label, steps, None, "failed"))
        elif not before.get("image") or not (expected_folder / before["image"]).is_file():
            checks.append(ImageCheck(label, steps, None, "missing"))
        else:
            with Image.open(folder / run["image"]) as now, Image.open(expected_folder / before["image"]) as then:
                value = psnr(now, then) if now.size == then.size else -math.inf
            checks.append(ImageCheck(label, steps, value, "ok" if value >= tolerance_db else "drifted"))
    checks += [ImageCheck(str(run.get("label")), int(run.get("steps", 0)), None, "missing")
               for run in expected.values()]
    return checks


@dataclass(frozen=True)
class DeterminismCheck:
    """The first run of a plan sampled twice alone: whether the two final latents are bit-identical."""

    label: str
    steps: int
    identical: bool
    max_abs_difference: float


def check_determinism(pipeline: DiffusionPipeline, plan: Plan) -> DeterminismCheck:
    """Run the plan's first cell twice, alone and in sequential mode, and compare the final latents bit for bit."""
    single = dataclasses.replace(plan, runs=plan.runs[:1], mode="sequential", reference=None)
    first, second = (Engine(pipeline, single).run().results[0] for _ in range(2))
    spec = first.spec
    for result in (first, second):
        if result.status != "ok":
            raise SmokeCheckError(f"--check-determinism: run 1 ({spec.label}, {spec.steps} steps) failed: "
                                  f"{result.error}")
    identical = torch.equal(first.latents, second.latents)
    difference = float((first.latents.double() - second.latents.double()).abs().max())
    return DeterminismCheck(spec.label, spec.steps, identical, difference)


def _requested_sampler(result: RunResult) -> str:
    """What the run asked for: scheduler class, every option and the step count."""
    return json.dumps(result.spec.to_json() | {"label": None, "scheduler": None, "tool": None}, sort_keys=True,
                      default=str)


def identical_results(results: list[RunResult]) -> list[str]:
    """Warnings for runs that asked for different samplers yet ended on bit-identical latents (a broken swap)."""
    warnings = []
    finished = [r for r in results if r.status == "ok" and r.latents is not None]
    for later_index, later in enumerate(finished):
        for earlier in finished[:later_index]:
            asked_differently = _requested_sampler(earlier) != _requested_sampler(later)
            if asked_differently and torch.equal(earlier.latents, later.latents):
                warnings.append(
                    f"runs {earlier.index + 1} ({earlier.spec.label}, {earlier.spec.steps} steps) and "
                    f"{later.index + 1} ({later.spec.label}, {later.spec.steps} steps) ended on bit-identical latents "
                    "although they ask for different samplers: check that the scheduler swap took effect"
                )
                break
    return warnings
