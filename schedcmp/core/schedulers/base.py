"""What every scheduler shares: the output type, the step counter, noise drawing, loading and saving."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from ..configuration import ConfigMixin
from .schedules import check_num_inference_steps

SCHEDULER_CONFIG_NAME = "scheduler_config.json"

S = TypeVar("S", bound="SchedulerMixin")
Scalars = tuple[torch.Tensor, ...] | torch.Tensor  # per-step coefficients, indexed to 0-dim tensors (step_scalars)
EAGER_SCALARS = 512  # longest table step_scalars splits into 0-dim tensors up front


@dataclass
class SchedulerOutput:
    """The result of one ``step``: the next sample and, where the algorithm has one, its x0 estimate."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def to_tuple(self) -> tuple[torch.Tensor, ...]:
        """The fields that are set, in order (diffusers' ``return_dict=False`` form)."""
        return tuple(v for v in (self.prev_sample, self.pred_original_sample) if v is not None)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.to_tuple()[index]


def randn_tensor(
    shape: Sequence[int],
    generator: torch.Generator | list[torch.Generator] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal noise drawn exactly as diffusers draws it, so equal seeds give equal tensors.

    A CPU generator with a non-CPU target draws on the CPU and copies; a list of generators draws one sample
    of the batch from each.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    rand_device = device
    if generator is not None:
        generator_device = (generator[0] if isinstance(generator, list) else generator).device
        if generator_device.type != device.type:
            if generator_device.type != "cpu":
                raise ValueError(f"Cannot generate a {device} tensor from a generator of type {generator_device.type}.")
            rand_device = torch.device("cpu")
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, list):
        one = (1, *shape[1:])
        parts = [torch.randn(one, generator=g, device=rand_device, dtype=dtype) for g in generator[: shape[0]]]
        return torch.cat(parts, dim=0).to(device)
    noise = torch.randn(tuple(shape), generator=generator, device=rand_device, dtype=dtype)
    return noise if rand_device == device else noise.to(device)


def step_scalars(values: torch.Tensor | Sequence[float]) -> Scalars:
    """A per-step coefficient table whose entries are 0-dim float32 CPU tensors, the form ``step`` uses cheapest.

    A Python float is wrapped into a fresh tensor on every arithmetic call (~2 us each on a 64x64 latent); a
    0-dim CPU tensor is used as is and, like a Python scalar (and like diffusers' CPU sigmas), combines with
    tensors on any device and never promotes their dtype. The values are diffusers' float32 coefficients, so
    results are unchanged. Splitting costs ~0.4 us an entry, so a table longer than ``EAGER_SCALARS`` (the
    training schedule held before ``set_timesteps``, or hundreds of steps) stays one tensor, indexed per step.
    """
    table = torch.as_tensor(values, dtype=torch.float32)
    return table.unbind() if len(table) <= EAGER_SCALARS else table


def cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor.to(dtype)``, without the cost of the call (~1 us) when it already has that dtype."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


class SchedulerMixin(ConfigMixin):
    """Base of every scheduler: config file name, compatibles, and the step counter ``step`` advances.

    Our schedulers follow the schedule by counting: the first ``step`` after ``set_timesteps`` is step
    ``begin_index`` (0 unless ``set_begin_index`` was called), and each ``step`` advances by one. The
    ``timestep`` argument is accepted for diffusers' contract but never looked up, so ``step`` needs no
    host-device synchronisation.
    """

    config_name = SCHEDULER_CONFIG_NAME
    order = 1
    # What the engine asks of a scheduler beyond diffusers' contract (the k-samplers set them).
    brownian: ClassVar[bool] = False  # its noise comes from one Brownian path, not independent draws
    needs_uncond: ClassVar[bool] = False  # CFG++: ``step`` needs the unconditional prediction too
    dynamic_timesteps: ClassVar[bool] = False  # the calls are decided while sampling (adaptive step size)
    guidance_scale_multiplier: ClassVar[float] = 1.0  # the tool scales the CFG scale by this for this sampler
    _step_index: int | None = None
    _begin_index: int | None = None

    @classmethod
    def compatible_classes(cls) -> list[type[SchedulerMixin]]:
        """Every scheduler of the family, this class included (all share the same training schedule)."""
        from . import SCHEDULER_CLASSES

        return list(SCHEDULER_CLASSES)

    @property
    def compatibles(self) -> list[type[SchedulerMixin]]:
        """Scheduler classes that can be built from this scheduler's config with ``from_config``."""
        return self.compatible_classes()

    @classmethod
    def from_pretrained(
        cls: type[S],
        pretrained_model_name_or_path: str | Path,
        subfolder: str | None = None,
        return_unused_kwargs: bool = False,
        **kwargs: Any,
    ) -> S | tuple[S, dict[str, Any]]:
        """Build the scheduler from ``<folder>[/<subfolder>]/scheduler_config.json``, ``kwargs`` overriding it."""
        config = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder)
        return cls.from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write ``scheduler_config.json`` into ``save_directory``; returns the file written."""
        return self.save_config(save_directory)

    def draws_noise(self, step_options: Mapping[str, Any] | None = None) -> bool:
        """Whether a loop calling ``step`` with these extra arguments draws fresh noise: ``is_stochastic``, unless a
        step argument adds noise to a deterministic scheduler (DDIM's ``eta``, Euler's ``s_churn``)."""
        return self.is_stochastic

    @property
    def step_index(self) -> int | None:
        """Index of the next step in the schedule; None until the first ``scale_model_input`` or ``step``."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """First step index, set by a pipeline that starts part way (img2img); None means 0."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next loop at schedule index ``begin_index`` (call after ``set_timesteps``)."""
        self._begin_index = begin_index

    def _reset_step_counter(self) -> None:
        self._step_index = None
        self._begin_index = None

    def _current_step_index(self) -> int:
        """The step index in force, starting the counter at ``begin_index`` if no step was taken yet."""
        if self._step_index is None:
            self._step_index = self._begin_index or 0
        return self._step_index

    def _checked_steps(self, num_inference_steps: object, num_train_timesteps: int | None = None) -> int:
        """``num_inference_steps`` validated against the training steps in force (the config's unless given)."""
        maximum = num_train_timesteps or self.config.num_train_timesteps
        return check_num_inference_steps(type(self).__name__, num_inference_steps, maximum)

    def _finish_step(
        self,
        index: int,
        prev_sample: torch.Tensor,
        pred_original_sample: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """Advance the counter past step ``index``; diffusers' result: the output, or its set fields as a tuple."""
        self._step_index = index + 1
        if not return_dict:
            return (prev_sample,) if pred_original_sample is None else (prev_sample, pred_original_sample)
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def _add_noise_sigma(self, timesteps: torch.Tensor, like: torch.Tensor, missing_is_last: bool) -> torch.Tensor:
        """``self.sigmas`` at the schedule position of each of ``timesteps``, shaped [B, 1, ..., 1] like ``like``.

        diffusers' rule for ``add_noise``: after ``set_begin_index`` every sample sits at the step counter
        (inpainting, once a step was taken) or at ``begin_index`` (img2img); otherwise each timestep is looked up
        in ``self.timesteps``, its second match when it repeats. A timestep that is not there is the last
        position with ``missing_is_last`` (the VP solvers), an IndexError without (the k-diffusion ports).
        """
        sigmas = self.sigmas.to(device=like.device, dtype=like.dtype)
        timesteps = timesteps.to(like.device).reshape(-1)  # [B]
        if self.begin_index is not None:
            at = self.step_index if self.step_index is not None else self.begin_index
            indices = torch.full((timesteps.shape[0],), at, dtype=torch.long, device=like.device)
        else:
            schedule = self.timesteps.to(like.device)
            n = len(schedule)
            matches = schedule[None, :] == timesteps[:, None]  # [B, n]
            count = matches.sum(dim=1)  # [B]
            if not missing_is_last and bool((count == 0).any()):
                raise IndexError(
                    f"{type(self).__name__}.add_noise: a timestep of {timesteps.tolist()} is not in the "
                    "schedule; pass timesteps from scheduler.timesteps"
                )
            positions = torch.where(matches, torch.arange(n, device=like.device), n).sort(dim=1).values  # [B, n]
            second = positions[:, 1] if n > 1 else positions[:, 0]
            indices = torch.where(count > 1, second, torch.where(count == 1, positions[:, 0], n - 1))
        return sigmas[indices].reshape(-1, *([1] * (like.ndim - 1)))  # [B, 1, ..., 1]

    def __len__(self) -> int:
        return self.config.num_train_timesteps
