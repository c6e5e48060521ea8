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
from .core.conditioning import Conditioning
from .core.errors import ConfigError, NonFiniteError, SchedcmpError
from .core.pipeline import DiffusionPipeline, NearestImage
from .core.schedulers import EDMEulerScheduler, SchedulerMixin, resolve_schedule, schedule_overrides
from .core.schedulers.base import randn_tensor
from .core.schedulers.registry import TOOL_TITLES
from .core.schedulers.sigma_space import narrowed_grid_note
from .errors import PlanError
from .memory import free_memory_bytes, lanes_that_fit, peak_call_bytes
from .plan import Plan, ReferenceSpec, RunSpec

ProgressCallback = Callable[[int], None]
FinishedCallback = Callable[["RunResult"], None]
_NEVER = 2**62  # the "first non-finite model call" of a lane whose latents stayed finite


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
    rank: int = 0  # the torch.distributed rank that ran it (0 in a single process)
    device: str = "cpu"  # the device it ran on

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
    nearest: NearestImage | None = None

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
    ranks: dict[str, Any] | None = None  # over torch.distributed ranks: each rank's load and the speed-up


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
    first_bad: torch.Tensor  # device scalar: index of the first model call after which latents were not finite
    engine: Engine
    position: int = 0

    @property
    def done(self) -> bool:
        return self.position >= len(self.timesteps)


class Engine:
    """Runs every RunSpec of a plan against one pipeline, with the prompt encoded once for all of them."""

    def __init__(self, pipeline: DiffusionPipeline, plan: Plan,
                 encoded: dict[tuple[str, str], tuple[Conditioning, Conditioning]] | None = None,
                 whole_page: Plan | None = None):
        """``encoded``: prompts already encoded by other engines on this pipeline (a sweep's pages), shared and
        filled in, so each prompt is encoded once. ``whole_page``: the page these runs are part of, when they are
        some of its runs (a resumed page, a rank's share); its runs decide whether the unconditional pass runs, so
        every run computes what it would on the whole page."""
        self.pipeline = pipeline
        plan = self.plan = plan.with_model_defaults(pipeline)
        self.device = pipeline.device
        self.generator_device = torch.device(plan.generator_device) if plan.generator_device else self.device
        width, height = plan.size or pipeline.default_size
        self.latent_shape = (1, *pipeline.latent_shape(width, height))
        self.results = [self._prepare(i, spec) for i, spec in enumerate(plan.runs)]
        # The unconditional pass runs under guidance (scale > 1, diffusers' rule) and whenever a CFG++ sampler,
        # which needs the unconditional prediction at any scale, is in the plan.
        page_runs = (whole_page or plan).runs
        self.guided = plan.guidance > 1.0 or any(spec.preset.cls.needs_uncond for spec in page_runs)
        encoded = {} if encoded is None else encoded
        key = (plan.prompt, plan.negative_prompt)
        if key not in encoded:
            encoded[key] = pipeline.encode_prompt(*key)
        self.cond, self.uncond = encoded[key]
        self._conditioning_batches: dict[int, Conditioning] = {}
        self.single_lane_conditioning = self._conditioning(1)
        self.max_batch = plan.max_batch
        self.max_batch_reason = "set by the plan" if plan.max_batch else None
        self.reference = self._prepare_reference(plan.reference)
        self._advance_progress: ProgressCallback = lambda _n: None
        self._on_finished: FinishedCallback = lambda _result: None

    def _prepare(self, index: int, spec: RunSpec) -> RunResult:
        """Build the run's scheduler from the model's config and check its step count, before anything runs
        (``index`` -1 is the reference run)."""
        name = f"run {index + 1}" if index >= 0 else "reference"
        options = dict(spec.config_options)
        if options.get("schedule") == "align_your_steps" and "ays_model" not in options:
            options["ays_model"] = self.pipeline.ays_model
        try:
            scheduler = spec.preset.build(self.pipeline.scheduler.config, **options)
            self._set_timesteps(scheduler, spec)
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
        if spec.schedule is not None and spec.preset.ignores_schedule and schedule_overrides(
                spec.preset, spec.schedule) == {} and resolve_schedule(spec.schedule) != "automatic":
            warnings.warn(f"{name} ({spec.label}): {spec.preset.name} builds its own grid and ignores the schedule "
                          f"type {spec.schedule!r}, as in {TOOL_TITLES[spec.preset.tool]}", UserWarning, stacklevel=2)
        narrowed = narrowed_grid_note(scheduler)
        if narrowed is not None:
            warnings.warn(f"{name} ({spec.label}, {spec.steps} steps): {narrowed}", UserWarning, stacklevel=2)
        return RunResult(index, spec, scheduler, device=str(self.device))

    def _set_timesteps(self, scheduler: SchedulerMixin, spec: RunSpec) -> None:
        """The run's schedule: its step count, or its custom sigmas / timesteps."""
        custom = {key: list(value) for key, value in (("sigmas", spec.sigmas), ("timesteps", spec.timesteps))
                  if value is not None}
        scheduler.set_timesteps(None if custom else spec.steps, device=self.device, **custom)

    def _prepare_reference(self, spec: ReferenceSpec | None) -> ReferenceResult | None:
        """Check the reference can be computed here, before anything runs."""
        if spec is None:
            return None
        if spec.run is None:
            if type(self.pipeline).exact_solution is DiffusionPipeline.exact_solution:
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
            self._set_timesteps(scheduler, result.spec)
        generator = torch.Generator(self.generator_device).manual_seed(self.plan.seed)
        latents = randn_tensor(self.latent_shape, generator, self.device, self.pipeline.dtype)
        latents = latents * scheduler.init_noise_sigma
        step_kwargs = dict(result.spec.step_options)
        if _takes_generator(scheduler):
            step_kwargs["generator"] = generator
        first_bad = torch.full((), _NEVER, dtype=torch.int64, device=latents.device)
        return _Lane(result, generator, latents, list(scheduler.timesteps), step_kwargs, first_bad, self)

    def _conditioning(self, lanes: int) -> Conditioning:
        """Conditioning for ``lanes`` lanes: [uncond, cond] per lane under guidance, else cond alone (built once)."""
        if lanes not in self._conditioning_batches:
            pair = Conditioning.concat([self.uncond, self.cond]) if self.guided else self.cond  # [2 or 1, ...]
            self._conditioning_batches[lanes] = pair.repeat(lanes)  # [lanes * (2|1), ...]
        return self._conditioning_batches[lanes]

    def _guide(self, output: torch.Tensor, scheduler: SchedulerMixin) -> torch.Tensor:
        """Classifier-free guidance (Ho & Salimans 2022 eq. 6) on one lane's [uncond, cond] outputs, at the
        plan's scale times the sampler's multiplier (A1111's DDIM CFG++ takes 1/12.5 of it)."""
        if not self.guided:
            return output
        uncond, cond = output.chunk(2)
        if self.plan.guidance <= 1.0 and not scheduler.needs_uncond:  # no guidance: the conditional prediction
            return cond
        scale = self.plan.guidance * scheduler.guidance_scale_multiplier
        return uncond + scale * (cond - uncond)

    def _model_inputs(self, lane: _Lane) -> tuple[torch.Tensor, torch.Tensor]:
        """The lane's scaled model input [2 or 1, ...] and its timestep vector."""
        t = lane.timesteps[lane.position]
        latents = torch.cat([lane.latents] * 2) if self.guided else lane.latents
        start = time.perf_counter()
        scaled = lane.result.scheduler.scale_model_input(latents, t)
        lane.result.scheduler_seconds += time.perf_counter() - start
        return scaled, t.to(torch.float32).expand(scaled.shape[0])

    def _advance(self, lane: _Lane, output: torch.Tensor) -> None:
        """Guide the lane's model output and take its scheduler step (only the step counts as scheduler time);
        a CFG++ sampler also gets the unconditional prediction, a dynamic one its new calls."""
        t = lane.timesteps[lane.position]
        scheduler = lane.result.scheduler
        guided = self._guide(output, scheduler)
        extra = {}
        if scheduler.needs_uncond:
            extra["uncond_output"] = output.chunk(2)[0]
        start = time.perf_counter()
        step = scheduler.step(guided, t, lane.latents, **lane.step_kwargs, **extra)
        lane.result.scheduler_seconds += time.perf_counter() - start
        lane.latents = step.prev_sample
        if scheduler.dynamic_timesteps:
            lane.timesteps = list(scheduler.timesteps)
        # Remember where the latents first stopped being finite, on the device: no host sync per step.
        went_bad = torch.where(torch.isfinite(lane.latents).all(), _NEVER, lane.position)
        lane.first_bad = torch.minimum(lane.first_bad, went_bad)
        lane.position += 1
        lane.result.model_calls += 1

    def _one_lane_call(self) -> torch.Tensor:
        """One lane's model call on zeros at the first run's first timestep."""
        first = self.results[0].scheduler
        latents = torch.zeros(self.latent_shape, device=self.device, dtype=self.pipeline.dtype)
        inputs = torch.cat([latents] * 2) if self.guided else latents
        timesteps = first.timesteps[:1].to(torch.float32).expand(inputs.shape[0])
        return self.pipeline.denoise(inputs, timesteps, self.single_lane_conditioning)

    def warm_up(self) -> None:
        """One model call on zeros so the first timed run does not pay for lazy initialisation."""
        with torch.inference_mode():
            self._one_lane_call()
        synchronize(self.device)

    def choose_max_batch(self, lanes: int | None = None) -> int:
        """Lanes per batched call when the plan says 'auto': one lane's measured activation peak against free
        memory (CUDA allocator statistics on a GPU, live tensor bytes and MemAvailable on the CPU), at most
        ``lanes`` (this plan's runs unless given)."""
        with torch.inference_mode():
            per_lane = peak_call_bytes(self._one_lane_call, self.device)
        free = free_memory_bytes(self.device)
        lanes = lanes_that_fit(per_lane, free, lanes or len(self.results))
        self.max_batch_reason = (f"auto: {per_lane / 2**20:.1f} MiB of activations per lane, "
                                 f"{free / 2**30:.1f} GiB free on {self.device.type}")
        return lanes

    def run(self, progress: ProgressCallback | None = None,
            finished: FinishedCallback | None = None) -> EngineReport:
        """Run every run of the plan in the plan's mode; ``finished`` gets each run as soon as it ends (measured
        against the reference). Ctrl-C (or SIGTERM / SIGHUP, raised as KeyboardInterrupt) stops early and keeps
        what finished."""
        self._advance_progress = progress or (lambda _n: None)
        self._on_finished = finished or (lambda _result: None)
        start = time.perf_counter()
        interrupted = False
        try:
            with cpu_threads(self.pipeline.cpu_threads, self.device):
                self._run_all()
        except KeyboardInterrupt:
            interrupted = True
        wall = time.perf_counter() - start
        return EngineReport(self.results, self.plan.mode, wall, interrupted, max_batch=self.max_batch,
                            max_batch_reason=self.max_batch_reason, reference=self.reference)

    def _run_reference(self) -> None:
        """The reference from the plan's seed: the exact solution of the same initial noise, or the run (unless it
        was computed already, by another rank)."""
        reference = self.reference
        if reference is None or reference.status != "not run":
            return
        if reference.run is not None:
            self._run_one(reference.run, report=False)
            run = reference.run
            reference.status, reference.error, reference.seconds = run.status, run.error, run.seconds
            reference.latents, reference.image = run.latents, run.image
        else:
            start = time.perf_counter()
            try:
                generator = torch.Generator(self.generator_device).manual_seed(self.plan.seed)
                noise = randn_tensor(self.latent_shape, generator, self.device, self.pipeline.dtype)
                latents = self.pipeline.exact_solution(noise, self.cond, self.uncond, self.plan.guidance)
                if not bool(torch.isfinite(latents).all()):
                    raise NonFiniteError("the exact solution is not finite")
                reference.latents = latents
                reference.image = self.pipeline.decode(latents)[0]
                reference.status = "ok"
            except Exception as err:  # the runs still run; they just get no accuracy
                reference.status, reference.error = "failed", describe_error(err)
            reference.seconds = time.perf_counter() - start
        if reference.status == "ok":
            reference.nearest = self.pipeline.nearest_training_image(reference.latents)

    def _report(self, result: RunResult) -> None:
        """A run has ended: measure it against the reference (when it has an image and there is one), pass it on."""
        reference = self.reference
        if result.status == "ok" and reference is not None and reference.status == "ok":
            nearest = self.pipeline.nearest_training_image(result.latents)
            adheres = None if nearest is None else self.pipeline.matches_prompt(self.plan.prompt, nearest.index)
            result.accuracy = measure(result.latents, result.image, reference.latents, reference.image,
                                      result.stochastic, nearest, reference.nearest, adheres)
        self._on_finished(result)

    def _run_all(self) -> None:
        """Warm up, then every run in the plan's mode."""
        self.warm_up()
        if self.plan.mode == "batched" and self.max_batch is None:
            self.max_batch = self.choose_max_batch()
        with torch.inference_mode():
            self._run_reference()
            if self.plan.mode == "batched":
                self._run_batched()
            else:
                for result in self.results:
                    self._run_one(result)

    def _run_one(self, result: RunResult, report: bool = True) -> None:
        """Sequential mode: the run alone, device synchronised around its clock."""
        synchronize(self.device)
        start = time.perf_counter()
        try:
            lane = self._new_lane(result)
            while not lane.done:
                scaled, timesteps = self._model_inputs(lane)
                output = self.pipeline.denoise(scaled, timesteps, self.single_lane_conditioning)
                self._advance(lane, output)
                self._advance_progress(1)
            self._finish([lane])
            synchronize(self.device)
        except KeyboardInterrupt:
            result.status, result.error = "not run", "interrupted"
            raise
        except Exception as err:
            result.status, result.error = "failed", describe_error(err)
        result.seconds = time.perf_counter() - start
        if report:
            self._report(result)

    def _finish(self, lanes: list[_Lane]) -> None:
        """Lanes at the end of their schedules: a lane whose latents went non-finite fails with the model call
        where it happened (one host read per run); the others are decoded together (one by one if that fails)."""
        first_bad = torch.stack([lane.first_bad for lane in lanes]).tolist()
        finite = []
        for lane, bad in zip(lanes, first_bad, strict=True):
            if bad < _NEVER:
                self._fail(lane, NonFiniteError(f"latents became NaN or infinite at model call {bad + 1} of "
                                                f"{len(lane.timesteps)}"))
            else:
                finite.append(lane)
        if not finite:
            return
        try:
            images = self.pipeline.decode(torch.cat([lane.latents for lane in finite]))
        except Exception as err:
            if len(finite) == 1:
                self._fail(finite[0], err)
            else:  # find which lane's decode fails; the others keep their images
                for lane in finite:
                    self._finish([lane])
            return
        for lane, image in zip(finite, images, strict=True):
            lane.result.latents, lane.result.image, lane.result.status = lane.latents, image, "ok"

    @staticmethod
    def _fail(lane: _Lane, err: Exception) -> None:
        lane.result.status, lane.result.error = "failed", describe_error(err)

    def _run_batched(self) -> None:
        """Continuous batching over this plan's runs (see ``run_batched``)."""
        run_batched([self], self.max_batch)


def run_engines_batched(engines: list[Engine], progress: ProgressCallback | None = None,
                        finished: Callable[[Engine, RunResult], None] | None = None,
                        max_batch: int | None = None) -> list[EngineReport]:
    """Several plans on one pipeline in one continuous batch (a sweep's pages: other seeds, scales, prompts): each
    engine's reference first, then every tick calls the model once for lanes of all of them, each lane with its
    own conditioning, guidance and generator, so every image is the one its page gives alone. Ctrl-C stops all
    and keeps what finished; one report per engine."""
    first = engines[0]
    advance = progress or (lambda _n: None)
    for engine in engines:
        engine._advance_progress = advance
        engine._on_finished = (lambda result, engine=engine: finished(engine, result)) if finished else (
            lambda _result: None)
    start = time.perf_counter()
    interrupted = False
    try:
        with cpu_threads(first.pipeline.cpu_threads, first.device):
            first.warm_up()
            limit = max_batch or first.choose_max_batch(sum(len(e.results) for e in engines))
            for engine in engines:
                engine.max_batch = limit
            with torch.inference_mode():
                for engine in engines:
                    engine._run_reference()
                run_batched(engines, limit)
    except KeyboardInterrupt:
        interrupted = True
    wall = time.perf_counter() - start
    return [EngineReport(e.results, "batched", wall, interrupted, max_batch=e.max_batch,
                         max_batch_reason=e.max_batch_reason, reference=e.reference) for e in engines]


def _lane_conditioning(active: list[_Lane]) -> Conditioning:
    """The conditioning of a tick: one engine's cached batch, or each lane's own pair, concatenated in order."""
    engines = {id(lane.engine) for lane in active}
    if len(engines) == 1:
        return active[0].engine._conditioning(len(active))
    return Conditioning.concat([lane.engine._conditioning(1) for lane in active])  # [sum of lane batches, ...]


def run_batched(engines: list[Engine], max_batch: int | None) -> None:
    """Continuous batching: each tick calls the model once for all active lanes (of any of ``engines``, which share
    one pipeline), then steps each lane with its own engine."""
    waiting = [(engine, result) for engine in engines for result in engine.results]
    max_batch = max_batch or len(waiting)
    pipeline, device = engines[0].pipeline, engines[0].device
    active: list[_Lane] = []
    try:
        while waiting or active:
            while waiting and len(active) < max_batch:
                engine, result = waiting.pop(0)
                active.append(engine._new_lane(result))
            synchronize(device)
            tick_start = time.perf_counter()
            inputs = [lane.engine._model_inputs(lane) for lane in active]
            latents = torch.cat([x for x, _ in inputs])  # [sum of lane batches, ...]
            timesteps = torch.cat([t for _, t in inputs])  # [sum of lane batches]
            try:
                outputs = pipeline.denoise(latents, timesteps, _lane_conditioning(active))
            except Exception as err:  # a failed call fails the lanes in it, not the plan
                for lane in active:
                    Engine._fail(lane, err)
                    lane.engine._report(lane.result)
                active = []
                continue
            per_lane = outputs.split([x.shape[0] for x, _ in inputs])
            for lane, output in zip(active, per_lane, strict=True):
                try:
                    lane.engine._advance(lane, output)
                except Exception as err:  # one failing lane must not lose the others
                    Engine._fail(lane, err)
            stepped = [lane for lane in active if lane.result.status != "failed"]
            finished = [lane for lane in stepped if lane.done]
            if finished:
                engines[0]._finish(finished)  # decoding needs only the pipeline they share
            synchronize(device)
            share = (time.perf_counter() - tick_start) / len(active)
            for lane in active:
                lane.result.seconds += share
            engines[0]._advance_progress(len(stepped))
            for lane in active:
                if lane.done or lane.result.status == "failed":
                    lane.engine._report(lane.result)
            active = [lane for lane in stepped if not lane.done]
    except KeyboardInterrupt:
        for lane in active:
            if lane.result.status not in ("ok", "failed"):
                lane.result.status, lane.result.error = "not run", "interrupted"
        raise


def describe_error(err: BaseException) -> str:
    """One line for a run's error: our own errors by their message, others as 'Type: message'."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, SchedcmpError) else f"{type(err).__name__}: {text}"
