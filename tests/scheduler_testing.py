"""What the scheduler behaviour tests share: ours-and-diffusers pairs, seeded loops, comparisons, meta-tensor loops."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable

import diffusers
import pytest
import torch
from scheduler_cases import BASE_CONFIGS

import schedcmp.core as core
from schedcmp.core.errors import ConfigError

# Stable Diffusion 1.5's scheduler config (the fixture's), without diffusers' private keys.
SD15 = {k: v for k, v in BASE_CONFIGS["sd15"].items() if not k.startswith("_")}
SHAPE = (2, 4, 8, 8)


def our_scheduler(name: str, base: dict | None = None, **options: object) -> object:
    """Our scheduler of class ``name`` from ``base`` (SD 1.5's config) plus ``options``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # keys a class does not take are kept with a warning
        return getattr(core, name).from_config({**(SD15 if base is None else base), **options})


def pair(name: str, base: dict | None = None, **options: object) -> tuple[object, object]:
    """(ours, diffusers') scheduler of class ``name`` from the same config: ``base`` (SD 1.5's) plus ``options``."""
    config = {**(SD15 if base is None else base), **options}
    return our_scheduler(name, config), getattr(diffusers, name).from_config(config)


def seeded_normal(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A standard normal tensor from a fresh CPU generator seeded with ``seed``: the same for both libraries."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def smooth_model(sample: torch.Tensor, index: int) -> torch.Tensor:
    """A smooth deterministic stand-in for a denoiser at loop step ``index``."""
    return 0.5 * torch.tanh(sample) + 0.1 * (index + 1)


def takes_generator(scheduler: object) -> bool:
    """Whether the scheduler's ``step`` draws noise from a ``generator`` argument."""
    return "generator" in inspect.signature(scheduler.step).parameters


def trace_loop(
    scheduler: object, *, seed: int = 7, dtype: torch.dtype = torch.float32, start: int = 0, **step_kwargs: object
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """A loop of ``smooth_model`` from schedule index ``start``: (scaled input, prev_sample, x0) per step."""
    generator = torch.Generator().manual_seed(seed)
    sample = (seeded_normal(SHAPE, 0) * scheduler.init_noise_sigma).to(dtype)
    if takes_generator(scheduler):
        step_kwargs = {**step_kwargs, "generator": generator}
    trace = []
    for index, t in enumerate(scheduler.timesteps[start:]):
        model_input = scheduler.scale_model_input(sample, t)
        output = smooth_model(model_input, index).to(dtype)
        prev, pred = scheduler.step(output, t, sample, return_dict=False, **step_kwargs)
        trace.append((model_input, prev, pred))
        sample = prev
    return trace


def sample_loop(
    scheduler: object,
    steps: int | None = None,
    *,
    model: Callable[[torch.Tensor, int], torch.Tensor],
    begin: int = 0,
    shape: tuple[int, ...] = SHAPE,
    dtype: torch.dtype = torch.float32,
    noises: list[torch.Tensor] | None = None,
    **set_kwargs: object,
) -> list[torch.Tensor]:
    """``set_timesteps`` then a loop from ``begin`` with ``model(sample, i)`` outputs; returns every prev_sample.

    Noise comes from ``noises`` (``variance_noise``) if given, else from a generator seeded 1234 where ``step``
    takes one.
    """
    scheduler.set_timesteps(steps, **set_kwargs)
    if begin:
        scheduler.set_begin_index(begin)
    sample = seeded_normal(shape, 0).to(dtype)
    generator = torch.Generator().manual_seed(1234)
    out = []
    for i, t in enumerate(scheduler.timesteps[begin:]):
        if noises is not None:
            kwargs = {"variance_noise": noises[i]}
        else:
            kwargs = {"generator": generator} if takes_generator(scheduler) else {}
        model_output = model(sample, i)
        sample = scheduler.step(model_output, t, scheduler.scale_model_input(sample, t), **kwargs).prev_sample
        out.append(sample)
    return out


def assert_same_schedule(ours: object, theirs: object) -> None:
    """After set_timesteps: the same timesteps (dtype and values) and the same initial noise scale as diffusers."""
    assert ours.timesteps.dtype == theirs.timesteps.dtype
    torch.testing.assert_close(ours.timesteps, theirs.timesteps)
    assert float(ours.init_noise_sigma) == pytest.approx(float(theirs.init_noise_sigma), rel=1e-6)


def assert_traces_close(ours: list, theirs: list, atol: float | None = None) -> None:
    """Same length, dtypes and values step by step: rtol 1e-5, ``atol`` or 1e-5 of the reference's magnitude."""
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        for x, y in zip(a, b, strict=True):
            assert x.dtype == y.dtype
            tolerance = 1e-5 * max(1.0, y.abs().max().item()) if atol is None else atol
            torch.testing.assert_close(x.float(), y.float(), rtol=1e-5, atol=tolerance)


def assert_samples_close(ours: list[torch.Tensor], theirs: list[torch.Tensor], rtol: float = 1e-5) -> None:
    """Same dtypes, and values equal within ``rtol`` of the reference's largest magnitude at every step."""
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a.dtype == b.dtype, f"step {i}: dtype {a.dtype} != {b.dtype}"
        error = (a.double() - b.double()).abs().max().item()
        assert error <= rtol * b.double().abs().max().item(), f"step {i}: max abs error {error:.3g}"


def assert_step_count_errors(scheduler: object) -> None:
    """0 and 1001 steps are refused with the message naming the class and the allowed range."""
    name = type(scheduler).__name__
    for steps in (0, 1001):
        with pytest.raises(ConfigError) as error:
            scheduler.set_timesteps(steps)
        assert str(error.value) == (
            f"{name}: num_inference_steps must be between 1 and 1000 (num_train_timesteps), got {steps}"
        )


def add_noise_both(ours: object, theirs: object, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both schedulers' ``add_noise`` of the same seeded x0 and noise, one sample per timestep."""
    shape = (len(timesteps), *SHAPE[1:])
    x0, noise = seeded_normal(shape, 1), seeded_normal(shape, 2)
    return ours.add_noise(x0, noise, timesteps), theirs.add_noise(x0, noise, timesteps)


def assert_position_add_noise_matches(ours: object, theirs: object) -> None:
    """For the solvers that look timesteps up in their schedule: ``add_noise`` equals diffusers' before
    ``set_timesteps`` (its training-schedule pairing of descending timesteps with ascending sigmas), after it, and
    after ``set_begin_index`` (img2img: the schedule position comes from begin_index)."""
    torch.testing.assert_close(*add_noise_both(ours, theirs, torch.tensor([999, 500, 3])))
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(12)
    t = theirs.timesteps[[0, 5, 11]]
    torch.testing.assert_close(*add_noise_both(ours, theirs, t))
    for scheduler in (ours, theirs):
        scheduler.set_begin_index(4)
    torch.testing.assert_close(*add_noise_both(ours, theirs, t))


def assert_prev_sample_only(scheduler: object) -> None:
    """``return_dict=False`` gives a 1-tuple, and the output has no x0 (diffusers returns none for these solvers)."""
    scheduler.set_timesteps(5)
    sample = torch.randn(1, 4, 8, 8)
    result = scheduler.step(torch.randn(1, 4, 8, 8), scheduler.timesteps[0], sample, return_dict=False)
    assert isinstance(result, tuple) and len(result) == 1 and result[0].shape == sample.shape
    output = scheduler.step(torch.randn(1, 4, 8, 8), scheduler.timesteps[1], result[0])
    assert output.pred_original_sample is None


def assert_same_dtypes(ours: list, theirs: list, expected: torch.dtype | None = None) -> None:
    """Every tensor of two traces has the reference's dtype (and ``expected``, if given)."""
    for a, b in zip(ours, theirs, strict=True):
        assert [x.dtype for x in a] == [y.dtype for y in b]
        if expected is not None:
            assert [x.dtype for x in a] == [expected] * len(a)


def assert_step_leaves_inputs_alone(scheduler: object, steps: int = 6, **step_kwargs: object) -> None:
    """A loop in which no ``scale_model_input`` or ``step`` changes a tensor it was given or returned before: the
    in-place arithmetic of a step writes only into tensors the step made itself."""
    scheduler.set_timesteps(steps)
    sample = seeded_normal(SHAPE, 0) * scheduler.init_noise_sigma
    if takes_generator(scheduler):
        step_kwargs = {**step_kwargs, "generator": torch.Generator().manual_seed(0)}
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # every tensor handed over so far, with a copy of it
    for index, t in enumerate(scheduler.timesteps):
        seen.append((sample, sample.clone()))
        model_input = scheduler.scale_model_input(sample, t)
        model_output = smooth_model(model_input, index)
        seen += [(model_input, model_input.clone()), (model_output, model_output.clone())]
        output = scheduler.step(model_output, t, sample, **step_kwargs)
        for tensor, copy in seen:
            assert torch.equal(tensor, copy), f"step {index} wrote into a tensor it did not make"
        if getattr(output, "pred_original_sample", None) is not None:
            seen.append((output.pred_original_sample, output.pred_original_sample.clone()))
        sample = output.prev_sample


def run_on_meta(
    scheduler: object,
    steps: int,
    shape: tuple[int, ...] = SHAPE,
    out_channels: int | None = None,
    **step_kwargs: object,
) -> torch.Tensor:
    """A whole loop on meta tensors, which hold no data: any .item(), nonzero() or data-dependent branch raises."""
    scheduler.set_timesteps(steps, device="meta")
    assert scheduler.timesteps.device.type == "meta"
    sample = torch.empty(shape, device="meta")
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, t)
        output = torch.empty((shape[0], out_channels or shape[1], *shape[2:]), device="meta")
        sample = scheduler.step(output, t, model_input, **step_kwargs).prev_sample
        assert sample.device.type == "meta" and sample.shape == shape
    return sample
