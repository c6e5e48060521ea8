"""Executes a Plan on a loaded pipeline: sequential runs timed alone, or batched lanes sharing model calls."""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from .accuracy import Accuracy, measure
from .core.errors import ConfigError
from .core.pipeline import DenoisingPipeline
from .core.schedulers import EDMEulerScheduler, SchedulerMixin
from .core.schedulers.base import randn_tensor
from .errors import PlanError
from .memory import free_memory_bytes, lanes_that_fit, peak_call_bytes
from .plan import Plan, ReferenceSpec, RunSpec

ProgressCallback = Callable[[int], None]


@dataclass
class RunResult:
    """What one run produced and cost. ``status`` is 'ok', 'failed' or 'not run' (interrupted before it)."""

    index: int
    spec: RunSpec
    scheduler: SchedulerMixin
    status: str = "not run"
    image: Image.Image | None = None
    latents: torch.Tensor | None = None
    model_calls: int = 0
    seconds: float = 0.0
    scheduler_seconds: float = 0.0
    error: str | None = None
    accuracy: Accuracy | None = None

    @property
    def seconds_per_call(self) -> float:
        return self.seconds / self.model_calls if self.model_calls else 0.0

    @property
    def stochastic(self) -> bool:
        """Whether the run draws fresh noise (its scheduler with its step options)."""
        return self.scheduler.draws_noise(self.spec.step_options)


@dataclass
class ReferenceResult:
    """The answer every run is measured against: the exact solution, or a many-step run (``run``)."""

    spec: ReferenceSpec
    run: RunResult | None = None
    status: str = "not run"
    latents: torch.Tensor | None = None
    image: Image.Image | None = None
    seconds: float = 0.0
    error: str | None = None
    nearest: tuple[float, str] | None = None

    @property
    def model_calls(self) -> int:
        return self.run.model_calls if self.run else 0


@dataclass
class EngineReport:
    """All runs' results plus how the plan as a whole went."""

    results: list[RunResult]
    mode: str
    wall_seconds: float
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)
    max_batch: int | None = None
    max_batch_reason: str | None = None
    reference: ReferenceResult | None = None


def synchronize(device: torch.device) -> None:
    """Wait for queued device work so wall clocks measure it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@contextmanager
def cpu_threads(count: int | None, device: torch.device) -> Iterator[None]:
    """Run the block with ``count`` torch CPU threads (when on the CPU and a count is given), then restore."""
    if count is None or device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _takes_generator(scheduler: SchedulerMixin) -> bool:
    return "generator" in inspect.signature(scheduler.step).parameters


@dataclass
class _Lane:
    """One run in flight: its scheduler, generator, current latents and position in its schedule."""

    result: RunResult
    generator: torch.Generator
    latents: torch.Tensor
    timesteps: list[torch.Tensor]
    step_kwargs: dict[str, Any]
    position: int = 0

    @property
    def done(self) -> bool:
        return self.position >= len(self.timesteps)


class Engine:
    """Runs every RunSpec of a plan against one pipeline, with the prompt encoded once for all of them."""

    def __init__(self, pipeline: DenoisingPipeline, plan: Plan):
        self.pipeline = pipeline
        self.plan = plan
        self.device = pipeline.device
        self.generator_device = torch.device(plan.generator_device) if plan.generator_device else self.device
        width, height = plan.size or pipeline.default_size
        self.latent_shape = (1, *pipeline.latent_shape(width, height))
        self.guided = plan.guidance > 1.0
        self.results = [self._prepare(i, spec) for i, spec in enumerate(plan.runs)]
        self.cond, self.uncond = pipeline.encode_prompt(plan.prompt, plan.negative_prompt)
        self._embedding_batches: dict[int, torch.Tensor] = {}
        self.single_lane_embeddings = self._embeddings(1)
        self.max_batch = plan.max_batch
        self.max_batch_reason = "set by the plan" if plan.max_batch else None
        self.reference = self._prepare_reference(plan.reference)

    def _prepare(self, index: int, spec: RunSpec) -> RunResult:
        """Build the run's scheduler from the model's config and check its step count, before anything runs
        (``index`` -1 is the reference run)."""
        name = f"run {index + 1}" if index >= 0 else "reference"
        try:
            scheduler = spec.preset.build(self.pipeline.scheduler.config, **spec.config_options)
            scheduler.set_timesteps(spec.steps, device=self.device)
        except ConfigError as err:
            raise PlanError(f"{name} ({spec.label}, {spec.steps} steps): {err}") from None
        if isinstance(scheduler, EDMEulerScheduler):
            warnings.warn(
                f"{name} ({spec.label}): EDMEulerScheduler feeds the model EDM-preconditioned inputs and "
                f"noise levels (Karras et al. 2022); {self.pipeline.name} was trained as a DDPM model, so expect "
                "noise rather than an image",
                UserWarning,
                stacklevel=2,
            )
        return RunResult(index, spec, scheduler)

    def _prepare_reference(self, spec: ReferenceSpec | None) -> ReferenceResult | None:
        """Check the reference can be computed here, before anything runs."""
        if spec is None:
            return None
        if spec.run is None:
            if type(self.pipeline).exact_solution is DenoisingPipeline.exact_solution:
                raise PlanError(
                    f"reference 'exact' needs a model with a closed-form solution (builtin:shapes); "
                    f"{self.pipeline.name} has none: name a reference run instead, e.g. --reference dpm:200"
                )
            return ReferenceResult(spec)
        run = self._prepare(-1, spec.run)
        if run.stochastic:
            raise PlanError(f"reference: {spec.label} is stochastic (it draws fresh noise every step), so it is no "
                            "converged answer; choose a deterministic scheduler, e.g. --reference dpm:200")
        return ReferenceResult(spec, run)

    @property
    def total_model_calls(self) -> int:
        """Model calls the whole plan will make (progress bar total)."""
        reference = self.reference.run if self.reference and self.reference.run else None
        return sum(len(r.scheduler.timesteps) for r in [*self.results, *([reference] if reference else [])])

    def _new_lane(self, result: RunResult) -> _Lane:
        """Fresh generator from the seed, initial latents drawn from it and scaled by init_noise_sigma."""
        scheduler = result.scheduler
        if scheduler.step_index is not None:  # stepped since _prepare's set_timesteps: start the schedule over
            scheduler.set_timesteps(result.spec.steps, device=self.device)
        generator = torch.Generator(self.generator_device).manual_seed(self.plan.seed)
        latents = randn_tensor(self.latent_shape, generator, self.device, self.pipeline.dtype)
        latents = latents * scheduler.init_noise_sigma
        step_kwargs = dict(result.spec.step_options)
        if _takes_generator(scheduler):
            step_kwargs["generator"] = generator
        return _Lane(result, generator, latents, list(scheduler.timesteps), step_kwargs)

    def _embeddings(self, lanes: int) -> torch.Tensor:
        """Embeddings for ``lanes`` lanes: [uncond, cond] per lane under guidance, else cond alone (built once)."""
        if lanes not in self._embedding_batches:
            pair = torch.cat([self.uncond, self.cond]) if self.guided else self.cond  # [2 or 1, ...]
            self._embedding_batches[lanes] = pair.repeat(lanes, *([1] * (pair.dim() - 1)))  # [lanes * (2|1), ...]
        return self._embedding_batches[lanes]

    def _guide(self, output: torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance (Ho & Salimans 2022 eq. 6) on one lane's [uncond, cond] outputs."""
        if not self.guided:
            return output
        uncond, cond = output.chunk(2)
        return uncond + self.plan.guidance * (cond - uncond)

    def _model_inputs(self, lane: _Lane) -> tuple[torch.Tensor, torch.Tensor]:
        """The lane's scaled model input [2 or 1, ...] and its timestep vector."""
        t = lane.timesteps[lane.position]
        latents = torch.cat([lane.latents] * 2) if self.guided else lane.latents
        start = time.perf_counter()
        scaled = lane.result.scheduler.scale_model_input(latents, t)
        lane.result.scheduler_seconds += time.perf_counter() - start
        return scaled, t.to(torch.float32).expand(scaled.shape[0])

    def _advance(self, lane: _Lane, output: torch.Tensor) -> None:
        """Guide the lane's model output and take its scheduler step (only the step counts as scheduler time)."""
        t = lane.timesteps[lane.position]
        guided = self._guide(output)
        start = time.perf_counter()
        step = lane.result.scheduler.step(guided, t, lane.latents, **lane.step_kwargs)
        lane.result.scheduler_seconds += time.perf_counter() - start
        lane.latents = step.prev_sample
        lane.position += 1
        lane.result.model_calls += 1

    def _one_lane_call(self) -> torch.Tensor:
        """One lane's model call on zeros at the first run's first timestep."""
        first = self.results[0].scheduler
        latents = torch.zeros(self.latent_shape, device=self.device, dtype=self.pipeline.dtype)
        inputs = torch.cat([latents] * 2) if self.guided else latents
        timesteps = first.timesteps[:1].to(torch.float32).expand(inputs.shape[0])
        return self.pipeline.denoise(inputs, timesteps, self.single_lane_embeddings)

    def warm_up(self) -> None:
        """One model call on zeros so the first timed run does not pay for lazy initialisation."""
        with torch.inference_mode():
            self._one_lane_call()
        synchronize(self.device)

    def choose_max_batch(self) -> int:
        """Lanes per batched call when the plan says 'auto': one lane's measured activation peak against free
        memory (CUDA allocator statistics on a GPU, live tensor bytes and MemAvailable on the CPU)."""
        with torch.inference_mode():
            per_lane = peak_call_bytes(self._one_lane_call, self.device)
        free = free_memory_bytes(self.device)
        lanes = lanes_that_fit(per_lane, free, len(self.results))
        self.max_batch_reason = (f"auto: {per_lane / 2**20:.1f} MiB of activations per lane, "
                                 f"{free / 2**30:.1f} GiB free on {self.device.type}")
        return lanes

    def run(self, progress: ProgressCallback | None = None) -> EngineReport:
        """Run every run of the plan in the plan's mode; Ctrl-C stops early and keeps what finished."""
        advance = progress or (lambda _n: None)
        start = time.perf_counter()
        interrupted = False
        try:
            with cpu_threads(self.pipeline.cpu_threads, self.device):
                self._run_all(advance)
        except KeyboardInterrupt:
            interrupted = True
        wall = time.perf_counter() - start
        self._measure_accuracy()
        return EngineReport(self.results, self.plan.mode, wall, interrupted, max_batch=self.max_batch,
                            max_batch_reason=self.max_batch_reason, reference=self.reference)

    def _run_reference(self, advance: ProgressCallback) -> None:
        """The reference from the plan's seed: the exact solution of the same initial noise, or the run."""
        reference = self.reference
        if reference is None:
            return
        if reference.run is not None:
            self._run_one(reference.run, advance)
            run = reference.run
            reference.status, reference.error, reference.seconds = run.status, run.error, run.seconds
            reference.latents, reference.image = run.latents, run.image
            return
        start = time.perf_counter()
        try:
            generator = torch.Generator(self.generator_device).manual_seed(self.plan.seed)
            noise = randn_tensor(self.latent_shape, generator, self.device, self.pipeline.dtype)
            reference.latents = self.pipeline.exact_solution(noise, self.cond, self.uncond, self.plan.guidance)
            reference.image = self.pipeline.decode(reference.latents)[0]
            reference.status = "ok"
        except Exception as err:  # the runs still run; they just get no accuracy
            reference.status, reference.error = "failed", f"{type(err).__name__}: {err}"
        reference.seconds = time.perf_counter() - start

    def _measure_accuracy(self) -> None:
        """Each finished run against the reference; on a model with a known data set, also its nearest image."""
        reference = self.reference
        if reference is None or reference.status != "ok":
            return
        reference.nearest = self.pipeline.nearest_training_image(reference.latents)
        for result in self.results:
            if result.status == "ok":
                result.accuracy = measure(result.latents, result.image, reference.latents, reference.image,
                                          result.stochastic,
                                          self.pipeline.nearest_training_image(result.latents))

    def _run_all(self, advance: ProgressCallback) -> None:
        """Warm up, then every run in the plan's mode."""
        self.warm_up()
        if self.plan.mode == "batched" and self.max_batch is None:
            self.max_batch = self.choose_max_batch()
        with torch.inference_mode():
            self._run_reference(advance)
            if self.plan.mode == "batched":
                self._run_batched(advance)
            else:
                for result in self.results:
                    self._run_one(result, advance)

    def _run_one(self, result: RunResult, advance: ProgressCallback) -> None:
        """Sequential mode: the run alone, device synchronised around its clock."""
        synchronize(self.device)
        start = time.perf_counter()
        try:
            lane = self._new_lane(result)
            while not lane.done:
                scaled, timesteps = self._model_inputs(lane)
                output = self.pipeline.denoise(scaled, timesteps, self.single_lane_embeddings)
                self._advance(lane, output)
                advance(1)
            result.latents = lane.latents
            result.image = self.pipeline.decode(lane.latents)[0]
            synchronize(self.device)
            result.status = "ok"
        except KeyboardInterrupt:
            result.status, result.error = "not run", "interrupted"
            raise
        except Exception as err:
            result.status, result.error = "failed", f"{type(err).__name__}: {err}"
        result.seconds = time.perf_counter() - start

    @staticmethod
    def _fail(lane: _Lane, err: Exception) -> None:
        lane.result.status, lane.result.error = "failed", f"{type(err).__name__}: {err}"

    def _run_batched(self, advance: ProgressCallback) -> None:
        """Continuous batching: each tick calls the model once for all active lanes, then steps each lane."""
        waiting = list(self.results)
        max_batch = self.max_batch or len(waiting)
        active: list[_Lane] = []
        try:
            while waiting or active:
                while waiting and len(active) < max_batch:
                    active.append(self._new_lane(waiting.pop(0)))
                synchronize(self.device)
                tick_start = time.perf_counter()
                inputs = [self._model_inputs(lane) for lane in active]
                latents = torch.cat([x for x, _ in inputs])  # [sum of lane batches, ...]
                timesteps = torch.cat([t for _, t in inputs])  # [sum of lane batches]
                try:
                    outputs = self.pipeline.denoise(latents, timesteps, self._embeddings(len(active)))
                except Exception as err:  # a failed call fails the lanes in it, not the plan
                    for lane in active:
                        self._fail(lane, err)
                    active = []
                    continue
                per_lane = outputs.split([x.shape[0] for x, _ in inputs])
                for lane, output in zip(active, per_lane, strict=True):
                    try:
                        self._advance(lane, output)
                    except Exception as err:  # one failing lane must not lose the others
                        self._fail(lane, err)
                active = [lane for lane in active if lane.result.status != "failed"]
                if not active:
                    continue
                finished = [lane for lane in active if lane.done]
                if finished:
                    images = self.pipeline.decode(torch.cat([lane.latents for lane in finished]))
                    for lane, image in zip(finished, images, strict=True):
                        lane.result.latents, lane.result.image, lane.result.status = lane.latents, image, "ok"
                synchronize(self.device)
                share = (time.perf_counter() - tick_start) / len(active)
                for lane in active:
                    lane.result.seconds += share
                advance(len(active))
                active = [lane for lane in active if not lane.done]
        except KeyboardInterrupt:
            for lane in active:
                lane.result.status, lane.result.error = "not run", "interrupted"
            raise
