"""schedcmp's JAX backend (the optional extra ``jax``): diffusers' Flax scheduler API on jax alone, no flax.

Each ``Flax<Name>Scheduler`` keeps an immutable state pytree; ``set_timesteps`` runs on the host once per step
count and fills the state with the torch core's own per-step tables (so both backends share one schedule and
its parity with diffusers), and ``step`` is pure ``jax.numpy`` on them: no Python control flow on traced
values, usable under ``jax.jit``, ``lax.scan`` and ``lax.fori_loop``, and with tables padded to a fixed length
one compile serves every step count.
"""

from __future__ import annotations

try:
    import jax  # noqa: F401
except ImportError:  # pragma: no cover - the extra is installed in CI
    from ..errors import MissingExtraError

    raise MissingExtraError("schedcmp.core.flax needs jax: pip install 'schedcmp[jax]' (jax needs Python >= 3.11)"
                            ) from None

from .ddim import DDIMSchedulerState, FlaxDDIMScheduler
from .ddpm import DDPMSchedulerState, FlaxDDPMScheduler
from .dpmsolver_multistep import DPMSolverMultistepSchedulerState, FlaxDPMSolverMultistepScheduler
from .euler import EulerDiscreteSchedulerState, FlaxEulerAncestralDiscreteScheduler, FlaxEulerDiscreteScheduler
from .lms import FlaxLMSDiscreteScheduler, LMSDiscreteSchedulerState
from .pndm import FlaxPNDMScheduler, PNDMSchedulerState
from .scheduling import FlaxSchedulerMixin, FlaxSchedulerOutput

__all__ = [
    "DDIMSchedulerState",
    "DDPMSchedulerState",
    "DPMSolverMultistepSchedulerState",
    "EulerDiscreteSchedulerState",
    "FlaxDDIMScheduler",
    "FlaxDDPMScheduler",
    "FlaxDPMSolverMultistepScheduler",
    "FlaxEulerAncestralDiscreteScheduler",
    "FlaxEulerDiscreteScheduler",
    "FlaxLMSDiscreteScheduler",
    "FlaxPNDMScheduler",
    "FlaxSchedulerMixin",
    "FlaxSchedulerOutput",
    "LMSDiscreteSchedulerState",
    "PNDMSchedulerState",
]
