"""What every Flax scheduler shares: diffusers' Flax API (``from_pretrained -> (scheduler, state)``,
``create_state``, ``set_timesteps(state, n, shape)``, ``step(state, ...) -> FlaxSchedulerOutput``) around the torch
class of the same algorithm, whose config checks and per-step tables it reuses."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ConfigError
from ..schedulers.base import SchedulerMixin


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class FlaxSchedulerOutput:
    """One step's result: the sample at the next noise level, and the state to take the step after it with."""

    prev_sample: jax.Array
    state: Any


def padded(values: Any, length: int, dtype: Any, fill: float = 0.0) -> jax.Array:
    """``values`` (one row per step) as a float32 / int32 table of ``length`` rows, the rest ``fill``."""
    table = np.asarray(values, dtype=np.float64 if np.dtype(dtype).kind == "f" else np.int64)
    if len(table) > length:
        raise ConfigError(f"{len(table)} steps do not fit the {length} a state's tables were padded to")
    rows = np.full((length, *table.shape[1:]), fill, dtype=table.dtype)
    rows[:len(table)] = table
    return jnp.asarray(rows, dtype=dtype)


class FlaxSchedulerMixin:
    """A Flax scheduler: the config and tables of ``torch_class``, the state and step in jax.numpy."""

    torch_class: ClassVar[type[SchedulerMixin]]
    # Config values the jnp step does not implement: {key: the values refused}.
    refused: ClassVar[Mapping[str, tuple[Any, ...]]] = {}

    def __init__(self, dtype: Any = jnp.float32, **config: Any):
        """The config as the torch class takes it (checked by it); ``dtype``: the sample's dtype."""
        self._build(self.torch_class(**config), dtype)

    def _build(self, torch_scheduler: SchedulerMixin, dtype: Any) -> None:
        name = type(self).__name__
        for key, values in self.refused.items():
            if torch_scheduler.config.get(key) in values:
                raise ConfigError(f"{name}: {key}={torch_scheduler.config[key]!r} is not available in the JAX "
                                  f"backend; use the torch class {type(torch_scheduler).__name__}")
        self._torch, self.dtype = torch_scheduler, dtype

    @property
    def config(self) -> Mapping[str, Any]:
        """The scheduler config, read-only (the torch class's)."""
        return self._torch.config

    @property
    def has_state(self) -> bool:
        return True

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, dtype: Any = jnp.float32, **kwargs: Any):
        """A scheduler from a config mapping (ours or diffusers', Flax or torch), ``kwargs`` overriding it."""
        scheduler = cls.__new__(cls)
        scheduler._build(cls.torch_class.from_config(dict(config or {}), **kwargs), dtype)
        return scheduler

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, subfolder: str | None = None,
                        dtype: Any = jnp.float32, **kwargs: Any) -> tuple[Any, Any]:
        """``(scheduler, state)`` from ``<folder>[/<subfolder>]/scheduler_config.json``, as diffusers' Flax did."""
        config = cls.torch_class.load_config(pretrained_model_name_or_path, subfolder=subfolder)
        scheduler = cls.from_config(config, dtype=dtype, **kwargs)
        return scheduler, scheduler.create_state()

    def _host_schedule(self, num_inference_steps: int) -> SchedulerMixin:
        """The torch scheduler with its timesteps and tables set for ``num_inference_steps`` (on the host)."""
        if isinstance(num_inference_steps, jax.core.Tracer):
            raise ConfigError(f"{type(self).__name__}.set_timesteps: num_inference_steps must be a Python int (mark it "
                              "static under jax.jit); pad_to= lets one compiled loop serve every step count")
        self._torch.set_timesteps(int(num_inference_steps))
        return self._torch

    def scale_model_input(self, state: Any, sample: jax.Array, timestep: Any = None) -> jax.Array:
        """The model input at this step (the sample itself unless the class scales it)."""
        return sample

    @staticmethod
    def _output(prev_sample: jax.Array, state: Any, return_dict: bool) -> Any:
        return FlaxSchedulerOutput(prev_sample, state) if return_dict else (prev_sample, state)

    @staticmethod
    def replace(state: Any, **changes: Any) -> Any:
        """A copy of ``state`` with ``changes`` (states are immutable)."""
        return dataclasses.replace(state, **changes)

    def add_noise(self, state: Any, original_samples: jax.Array, noise: jax.Array,
                  timesteps: jax.Array) -> jax.Array:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4), per sample's training timestep."""
        abar = state.alphas_cumprod[jnp.asarray(timesteps, jnp.int32)]  # [B]
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        return (jnp.sqrt(abar).reshape(shape) * original_samples
                + jnp.sqrt(1 - abar).reshape(shape) * noise).astype(original_samples.dtype)
