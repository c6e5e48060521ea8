"""Batched mode's 'auto' lane count: measured activation bytes per lane against free memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from schedcmp import engine as engine_module
from schedcmp.core.builtin import ShapesPipeline
from schedcmp.engine import Engine
from schedcmp.memory import MEMORY_HEADROOM, free_memory_bytes, lanes_that_fit, peak_call_bytes
from schedcmp.plan import build_plan

CPU = torch.device("cpu")


# The counter sees whatever tensors torch's dispatcher creates, which differs between torch versions (an op may be
# decomposed, a scalar wrapped in a 0-d tensor): so these bound the peak instead of pinning a byte count.
ONE = 1000 * 4  # bytes of one float32 tensor of 1000 elements


def test_peak_counts_tensors_alive_at_the_same_time() -> None:
    # the ones are still alive while the product is written: at least both at the peak, and not a third copy
    peak = peak_call_bytes(lambda: torch.ones(1000) * 2, CPU)
    assert 2 * ONE <= peak < 3 * ONE


def test_peak_does_not_count_views_twice() -> None:
    # a view and its transpose share the base's storage: counted once
    peak = peak_call_bytes(lambda: torch.ones(1000).view(10, 100).t(), CPU)
    assert ONE <= peak < 2 * ONE


def test_peak_forgets_freed_intermediates() -> None:
    def chain() -> torch.Tensor:
        x = torch.ones(1000)
        for _ in range(5):
            x = x + 1  # each sum frees the previous one
        return x

    # two alive at a time (the operand and its sum), never the six of the chain
    assert 2 * ONE <= peak_call_bytes(chain, CPU) < 3 * ONE


def test_peak_counts_what_the_call_keeps_alive() -> None:
    def keep_all() -> list[torch.Tensor]:
        return [torch.ones(1000) for _ in range(5)]

    assert 5 * ONE <= peak_call_bytes(keep_all, CPU) < 6 * ONE


def test_peak_of_a_model_call_grows_with_the_batch() -> None:
    pipeline = ShapesPipeline()
    cond, _ = pipeline.encode_prompt("a star")
    one, four = (
        peak_call_bytes(lambda b=b: pipeline.denoise(torch.zeros(b, 3, 64, 64), torch.full((b,), 500.0),
                                                     cond.repeat(b)), CPU)
        for b in (1, 4)
    )
    assert one < four


def test_free_memory_is_positive_on_this_machine() -> None:
    assert free_memory_bytes(CPU) > 0


@pytest.mark.parametrize(
    ("per_lane", "free", "lanes", "expected"),
    [
        (100, 1000, 45, int(1000 * MEMORY_HEADROOM) // 100),
        (100, 10**9, 45, 45),  # everything fits
        (10**9, 100, 45, 1),  # nothing fits: still one lane at a time
        (0, 100, 7, 7),  # nothing measured: no bound
    ],
)
def test_lanes_that_fit(per_lane: int, free: int, lanes: int, expected: int) -> None:
    assert lanes_that_fit(per_lane, free, lanes) == expected


def _plan(**overrides):
    return build_plan(None, {"prompt": "a star", "schedulers": "ddim,euler,dpm", "steps": "6", "mode": "batched",
                             **overrides})


def test_auto_max_batch_is_measured_and_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    # with ample free memory (pinned: this machine's own free memory is not part of the test) every lane fits
    monkeypatch.setattr(engine_module, "free_memory_bytes", lambda device: 2**40)
    report = Engine(ShapesPipeline(), _plan()).run()
    assert report.max_batch == 3
    assert report.max_batch_reason.startswith("auto: ")
    assert "MiB of activations per lane" in report.max_batch_reason


def test_auto_max_batch_shrinks_when_memory_is_short(monkeypatch: pytest.MonkeyPatch) -> None:
    sequential = Engine(ShapesPipeline(), _plan(mode="sequential")).run()
    monkeypatch.setattr(engine_module, "free_memory_bytes", lambda device: 1)
    report = Engine(ShapesPipeline(), _plan()).run()
    assert report.max_batch == 1
    for ours, alone in zip(report.results, sequential.results, strict=True):
        assert np.array_equal(np.asarray(ours.image), np.asarray(alone.image))


def test_a_plan_max_batch_is_kept() -> None:
    report = Engine(ShapesPipeline(), _plan(max_batch=2)).run()
    assert (report.max_batch, report.max_batch_reason) == (2, "set by the plan")
