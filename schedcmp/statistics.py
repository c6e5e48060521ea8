"""A sweep's answer: per (sampler, schedule, steps) the spread of its error over seeds, the share of seeds that
reach the target, its cost; the Pareto front of error against model calls; and the recommendation, the cheapest
cell that reaches the target error on a given share of seeds."""

from __future__ import annotations

import math
import statistics as stats
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_TARGET_SHARE = 0.9  # the share of seeds a recommended cell must bring within the target error


@dataclass(frozen=True)
class Sample:
    """One finished cell of a sweep: which row and steps it belongs to, its seed and guidance, what it cost and how
    far it landed from its own seed's reference (None: not measured)."""

    row: str
    steps: int
    seed: int
    guidance: float
    model_calls: int
    seconds: float
    error: float | None
    stochastic: bool
    prompt: str = ""
    nearest_index: int | None = None  # the data-set image it landed nearest to (models that know their data)
    reference_index: int | None = None  # the one its seed's reference landed nearest to
    adheres: bool | None = None  # whether its nearest data-set image shows what the prompt asks for


@dataclass(frozen=True)
class CellStatistics:
    """One (row, steps, guidance) over the sweep's seeds and prompts."""

    row: str
    steps: int
    guidance: float
    seeds: int  # how many samples (seed, prompt) were measured
    model_calls: int  # the median over seeds (a DPM adaptive run's count varies)
    median_seconds: float
    median_error: float | None
    q1_error: float | None
    q3_error: float | None
    stochastic: bool
    target_error: float
    errors: tuple[float, ...]  # each measured sample's error, in sweep order
    prompts: int = 1  # how many prompts the samples span
    share_on_reference: float | None = None  # samples on their reference's data-set image
    prompt_adherence: float | None = None  # samples whose data-set image fits the prompt
    modes: int | None = None  # distinct data-set images the samples reached
    reference_modes: int | None = None  # distinct ones the references (the exact posterior's own draws) reached

    @property
    def iqr(self) -> float | None:
        return None if self.q1_error is None or self.q3_error is None else self.q3_error - self.q1_error

    def share_within(self, target_error: float) -> float | None:
        """The share of measured seeds with error <= ``target_error`` (None: none measured)."""
        return sum(e <= target_error for e in self.errors) / len(self.errors) if self.errors else None

    @property
    def share_reaching(self) -> float | None:
        """The share of measured seeds within the sweep's target error."""
        return self.share_within(self.target_error)

    def to_json(self) -> dict[str, Any]:
        return {"scheduler": self.row, "steps": self.steps, "guidance": self.guidance, "seeds": self.seeds,
                "prompts": self.prompts, "share_on_reference_image": self.share_on_reference,
                "prompt_adherence": self.prompt_adherence, "modes": self.modes, "reference_modes": self.reference_modes,
                "model_calls": self.model_calls, "median_seconds": self.median_seconds,
                "median_error": self.median_error, "q1_error": self.q1_error, "q3_error": self.q3_error,
                "share_reaching_target": self.share_reaching, "stochastic": self.stochastic}


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile), linear interpolation between order statistics (numpy's default,
    Hyndman & Fan 1996 type 7); one value is all three."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0], ordered[0], ordered[0]
    q1, q2, q3 = stats.quantiles(ordered, n=4, method="inclusive")
    return q1, q2, q3


def cell_statistics(samples: Sequence[Sample], target_error: float) -> list[CellStatistics]:
    """Per (row, steps, guidance), in first-seen order: medians and quartiles over the seeds and prompts that were
    measured (``seeds`` counts the samples: seeds x prompts)."""
    groups: dict[tuple[str, int, float], list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.row, sample.steps, sample.guidance), []).append(sample)
    table = []
    for (row, steps, guidance), members in groups.items():
        errors = tuple(s.error for s in members if s.error is not None and math.isfinite(s.error))
        q1 = median = q3 = None
        if errors:
            q1, median, q3 = quartiles(errors)
        table.append(CellStatistics(
            row, steps, guidance, len(errors), round(stats.median(s.model_calls for s in members)),
            stats.median(s.seconds for s in members), median, q1, q3, any(s.stochastic for s in members),
            target_error, errors, len({s.prompt for s in members}), *_data_set_figures(members)))
    return table


def _share(flags: list[bool | None]) -> float | None:
    known = [flag for flag in flags if flag is not None]
    return sum(known) / len(known) if known else None


def _data_set_figures(members: Sequence[Sample]) -> tuple[float | None, float | None, int | None, int | None]:
    """On a model that knows its data set: the share of samples on their reference's image, the prompt adherence,
    and the distinct images the samples and their references reached (mode coverage against the posterior's own)."""
    pairs = [(s.nearest_index, s.reference_index) for s in members if s.nearest_index is not None]
    if not pairs:
        return None, None, None, None
    on_reference = _share([None if ref is None else got == ref for got, ref in pairs])
    references = {ref for _got, ref in pairs if ref is not None}
    return (on_reference, _share([s.adheres for s in members]), len({got for got, _ref in pairs}),
            len(references) if references else None)


def pareto_front(cells: Sequence[CellStatistics]) -> list[CellStatistics]:
    """The measured cells no other cell beats on both median error and model calls, cheapest first."""
    measured = sorted((c for c in cells if c.median_error is not None), key=lambda c: (c.model_calls, c.median_error))
    front, best = [], math.inf
    for cell in measured:
        if cell.median_error < best:
            front.append(cell)
            best = cell.median_error
    return front


@dataclass(frozen=True)
class Recommendation:
    """The cheapest cell reaching the target on the share of seeds asked for (None: no cell did), and why."""

    cell: CellStatistics | None
    target_error: float
    target_share: float
    candidates: int  # cells that qualified

    def describe(self) -> str:
        """One line: what to use and the evidence, or that nothing qualified."""
        share = f"{self.target_share:.0%}"
        if self.cell is None:
            return (f"no sampler reached latent RMSE <= {self.target_error:g} on {share} of the seeds; try more "
                    "steps or a looser --target-error")
        c = self.cell
        kind = ", stochastic" if c.stochastic else ""
        return (f"{c.row} at {c.steps} steps (guidance {c.guidance:g}): {c.model_calls} model calls, median RMSE "
                f"{c.median_error:.3g} (IQR {c.iqr:.2g}) over {_samples(c)}, {c.share_within(self.target_error):.0%} "
                f"within {self.target_error:g}{kind}; the cheapest of {self.candidates} that reach it on {share} of "
                "seeds")

    def to_json(self) -> dict[str, Any]:
        return {"cell": self.cell.to_json() if self.cell else None, "target_error": self.target_error,
                "target_share": self.target_share, "qualifying_cells": self.candidates}


def _samples(cell: CellStatistics) -> str:
    """'8 seeds', or '16 samples of 2 prompts'."""
    return f"{cell.seeds} seeds" if cell.prompts == 1 else f"{cell.seeds} samples of {cell.prompts} prompts"


def recommend(cells: Sequence[CellStatistics], target_error: float,
              target_share: float = DEFAULT_TARGET_SHARE) -> Recommendation:
    """The cell with the fewest model calls among those whose share of seeds within ``target_error`` is at least
    ``target_share``; ties go to the deterministic one, then to the lower median error."""
    qualifying = [c for c in cells if (c.share_within(target_error) or 0.0) >= target_share]
    best = min(qualifying, key=lambda c: (c.model_calls, c.stochastic, c.median_error), default=None)
    return Recommendation(best, target_error, target_share, len(qualifying))
