"""Our schedulers equal diffusers' number for number: full sampling loops compared step by step."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

import diffusers
import pytest
import torch
from scheduler_cases import ALL_CASES, Case

import schedcmp.core as core

SHAPE = (2, 4, 8, 8)
RELATIVE_TOLERANCE = 1e-5
LEARNED_VARIANCE = ("learned", "learned_range")


class PhaseError(Exception):
    """An exception raised by a library during one phase of the loop (init, set_timesteps, step k)."""

    def __init__(self, phase: int, error: Exception):
        super().__init__(f"phase {phase}: {type(error).__name__}: {error}")
        self.phase, self.error = phase, error


@dataclass
class Trace:
    """Everything a loop produced that the two libraries must agree on."""

    timesteps: torch.Tensor | None = None
    init_noise_sigma: float = math.nan
    order: int = 0
    model_inputs: list[torch.Tensor] = field(default_factory=list)
    prev_samples: list[torch.Tensor] = field(default_factory=list)
    pred_originals: list[torch.Tensor | None] = field(default_factory=list)


def closed_form_model(sample: torch.Tensor, timestep: torch.Tensor | float, channels: int) -> torch.Tensor:
    """A smooth deterministic stand-in for a denoiser, with a learned-variance half where asked."""
    t = float(timestep)
    out = 0.5 * torch.tanh(sample) + 0.05 * sample + 0.1 * math.sin(t / 100.0)
    if channels == 2 * sample.shape[1]:
        out = torch.cat([out, 0.8 * torch.tanh(sample + t / 1000.0)], dim=1)
    return out


def random_model(index: int, channels: int) -> torch.Tensor:
    """Model output for step ``index``: the same seeded normal draw for both libraries."""
    generator = torch.Generator().manual_seed(1000 + index)
    return torch.randn((SHAPE[0], channels, *SHAPE[2:]), generator=generator)


def run_loop(cls: type, case: Case, ours: bool) -> Trace:
    """Run one full sampling loop, raising PhaseError with the phase that failed."""
    trace = Trace()
    phase = 0
    try:
        scheduler = cls.from_config(case.config)
        phase = 1
        scheduler.set_timesteps(case.steps)
        if case.class_name == "DPMSolverSDEScheduler":
            from sde_bridge import share_brownian_noise

            share_brownian_noise(scheduler, generator_seed=1234, ours=ours)
        trace.timesteps = scheduler.timesteps.clone()
        trace.init_noise_sigma = float(scheduler.init_noise_sigma)
        trace.order = scheduler.order
        channels = SHAPE[1] * (2 if dict(case.options).get("variance_type") in LEARNED_VARIANCE else 1)
        sample = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
        generator = torch.Generator().manual_seed(1234)
        step_kwargs = dict(case.step_kwargs)
        takes_generator = "generator" in step_params(cls)
        for index, t in enumerate(scheduler.timesteps):
            phase = 2 + index
            model_input = scheduler.scale_model_input(sample, t)
            if case.model == "random":
                model_output = random_model(index, channels)
            else:
                model_output = closed_form_model(model_input, t, channels)
            if takes_generator:
                step_kwargs["generator"] = generator
            output = scheduler.step(model_output, t, sample, **step_kwargs)
            sample = output.prev_sample
            trace.model_inputs.append(model_input)
            trace.prev_samples.append(sample)
            trace.pred_originals.append(getattr(output, "pred_original_sample", None))
    except Exception as error:
        raise PhaseError(phase, error) from error
    return trace


def step_params(cls: type) -> set[str]:
    """The keyword arguments a library's ``step`` takes (ours adds ``generator`` only where it draws noise)."""
    return set(inspect.signature(cls.step).parameters)


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    """Equal within RELATIVE_TOLERANCE of the reference's largest magnitude; non-finite entries must coincide."""
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(theirs.shape)}"
    finite = torch.isfinite(theirs)
    assert torch.equal(finite, torch.isfinite(ours)), f"{what}: non-finite entries differ"
    if not finite.all():
        assert torch.equal(torch.nan_to_num(ours[~finite]), torch.nan_to_num(theirs[~finite])), (
            f"{what}: non-finite values differ"
        )
    ours, theirs = ours[finite].double(), theirs[finite].double()
    if theirs.numel() == 0:
        return
    scale = max(theirs.abs().max().item(), 1e-6)
    error = (ours - theirs).abs().max().item()
    assert error <= RELATIVE_TOLERANCE * scale, f"{what}: max abs error {error:.3g} > {RELATIVE_TOLERANCE:g} x {scale:.3g}"


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.id)
def test_loop_matches_diffusers(case: Case) -> None:
    """Timesteps, scaled inputs, every prev_sample and x0 estimate equal diffusers' within 1e-5 relative."""
    theirs_cls = getattr(diffusers, case.class_name)
    ours_cls = getattr(core, case.class_name)
    try:
        theirs = run_loop(theirs_cls, case, ours=False)
    except PhaseError as reference_failure:
        with pytest.raises(PhaseError) as ours_failure:
            run_loop(ours_cls, case, ours=True)
        assert ours_failure.value.phase <= reference_failure.phase, (
            f"diffusers refused this case ({reference_failure}); ours refused later ({ours_failure.value})"
        )
        assert not isinstance(ours_failure.value.error, AssertionError)
        return
    ours = run_loop(ours_cls, case, ours=True)

    assert ours.timesteps.dtype == theirs.timesteps.dtype, "timesteps dtype"
    assert_close(ours.timesteps, theirs.timesteps, "timesteps")
    assert ours.order == theirs.order
    assert math.isclose(ours.init_noise_sigma, theirs.init_noise_sigma, rel_tol=1e-6)
    assert len(ours.prev_samples) == len(theirs.prev_samples)
    for i, (a, b) in enumerate(zip(ours.model_inputs, theirs.model_inputs, strict=True)):
        assert_close(a, b, f"scale_model_input at step {i}")
    for i, (a, b) in enumerate(zip(ours.prev_samples, theirs.prev_samples, strict=True)):
        assert_close(a, b, f"prev_sample at step {i}")
    for i, (a, b) in enumerate(zip(ours.pred_originals, theirs.pred_originals, strict=True)):
        if a is not None and b is not None:
            assert_close(a, b, f"pred_original_sample at step {i}")
