"""Each run against the reference of the same seed, error-vs-cost series, and the cost to reach a target error."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from .core.pipeline import NearestImage
from .metrics import latent_rmse, psnr, ssim


@dataclass(frozen=True)
class Accuracy:
    """How far one run landed from the reference (and, on a model with a known data set, from its data)."""

    latent_rmse: float
    psnr: float  # dB; infinite when the images are identical
    ssim: float
    stochastic: bool  # a stochastic sampler's distance to an ODE solution is a spread, not an error
    nearest_dataset_rmse: float | None = None
    nearest_caption: str | None = None
    nearest_index: int | None = None  # which data-set image it landed nearest to
    on_reference_image: bool | None = None  # the same data-set image as the reference's
    adheres_to_prompt: bool | None = None  # that image shows what the prompt asks for

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Accuracy:
        """The accuracy a run record holds (``to_json`` back: a PSNR of None is the identical images' infinity, and
        a record spells non-finite numbers as text)."""
        return cls(float(record["latent_rmse"]), math.inf if record["psnr"] is None else float(record["psnr"]),
                   float(record["ssim"]), record["stochastic"], record.get("nearest_dataset_rmse"),
                   record.get("nearest_caption"), record.get("nearest_index"), record.get("on_reference_image"),
                   record.get("adheres_to_prompt"))

    def to_json(self) -> dict[str, Any]:
        return {
            "latent_rmse": self.latent_rmse,
            "psnr": None if math.isinf(self.psnr) else round(self.psnr, 4),
            "ssim": round(self.ssim, 6),
            "stochastic": self.stochastic,
            "nearest_dataset_rmse": self.nearest_dataset_rmse,
            "nearest_caption": self.nearest_caption,
            "nearest_index": self.nearest_index,
            "on_reference_image": self.on_reference_image,
            "adheres_to_prompt": self.adheres_to_prompt,
        }


def measure(latents: torch.Tensor, image: Image.Image, reference_latents: torch.Tensor,
            reference_image: Image.Image, stochastic: bool, nearest: NearestImage | None = None,
            reference_nearest: NearestImage | None = None, adheres: bool | None = None) -> Accuracy:
    """Latent RMSE, image PSNR and SSIM of one result against the reference from the same seed, and where the model
    knows its data set, the image it landed nearest to, whether that is the reference's and fits the prompt."""
    if nearest is None:
        return Accuracy(latent_rmse(latents, reference_latents), psnr(image, reference_image),
                        ssim(image, reference_image), stochastic)
    on_reference = None if reference_nearest is None else nearest.index == reference_nearest.index
    return Accuracy(latent_rmse(latents, reference_latents), psnr(image, reference_image),
                    ssim(image, reference_image), stochastic, nearest.rmse, nearest.caption, nearest.index,
                    on_reference, adheres)


@dataclass(frozen=True)
class Measured:
    """One finished run as the sweep sees it: its row (scheduler), cost and error."""

    row: str
    steps: int
    model_calls: int
    error: float
    stochastic: bool


def by_row(points: Sequence[Measured]) -> dict[str, list[Measured]]:
    """The points of each row, rows in first-seen order."""
    rows: dict[str, list[Measured]] = {}
    for point in points:
        rows.setdefault(point.row, []).append(point)
    return rows


@dataclass(frozen=True)
class CostToReach:
    """The cheapest measured run of a row whose error is at most the target (None: no step count reached it)."""

    row: str
    stochastic: bool
    model_calls: int | None
    steps: int | None
    best_error: float
    best_calls: int

    def to_json(self) -> dict[str, Any]:
        return {"scheduler": self.row, "stochastic": self.stochastic, "model_calls": self.model_calls,
                "steps": self.steps, "best_error": self.best_error, "best_model_calls": self.best_calls}


def cost_to_reach(points: Sequence[Measured], target: float) -> list[CostToReach]:
    """Per row, the fewest model calls among its runs with error <= ``target``; cheapest first, unreached last
    (those by their best error), stochastic rows after deterministic ones."""
    table = []
    for row, members in by_row(points).items():
        reached = [p for p in members if p.error <= target]
        first = min(reached, key=lambda p: p.model_calls) if reached else None
        best = min(members, key=lambda p: (p.error, p.model_calls))
        table.append(CostToReach(row, any(p.stochastic for p in members), first.model_calls if first else None,
                                 first.steps if first else None, best.error, best.model_calls))
    return sorted(table, key=_cheapest_first)


def _cheapest_first(row: CostToReach) -> tuple[bool, bool, int, float]:
    return row.stochastic, row.model_calls is None, row.model_calls or 0, row.best_error
