"""The scheduler family and its registry: aliases, diffusers classes, A1111 and ComfyUI samplers, schedule types."""

from __future__ import annotations

from .base import SchedulerMixin, SchedulerOutput
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .deis import DEISMultistepScheduler
from .dpmsolver_multistep import DPMSolverMultistepScheduler
from .dpmsolver_sde import DPMSolverSDEScheduler
from .dpmsolver_singlestep import DPMSolverSinglestepScheduler
from .edm_euler import EDMEulerScheduler
from .euler import EulerDiscreteScheduler
from .euler_ancestral import EulerAncestralDiscreteScheduler
from .heun import HeunDiscreteScheduler
from .kdpm2 import KDPM2DiscreteScheduler
from .kdpm2_ancestral import KDPM2AncestralDiscreteScheduler
from .lms import LMSDiscreteScheduler
from .pndm import PNDMScheduler
from .registry import (
    A1111_SAMPLERS,
    ALIASES,
    COMFY_SAMPLERS,
    DIFFUSERS_A1111_PRESETS,
    SCHEDULER_CLASSES,
    SchedulerPreset,
    known_scheduler_names,
    make_scheduler,
    normalize_name,
    resolve_schedule,
    resolve_scheduler,
    schedule_names,
    schedule_overrides,
)
from .unipc import UniPCMultistepScheduler

__all__ = [
    "A1111_SAMPLERS",
    "ALIASES",
    "COMFY_SAMPLERS",
    "DIFFUSERS_A1111_PRESETS",
    "SCHEDULER_CLASSES",
    "DDIMScheduler",
    "DDPMScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSDEScheduler",
    "DPMSolverSinglestepScheduler",
    "EDMEulerScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "LMSDiscreteScheduler",
    "PNDMScheduler",
    "SchedulerMixin",
    "SchedulerOutput",
    "SchedulerPreset",
    "UniPCMultistepScheduler",
    "known_scheduler_names",
    "make_scheduler",
    "normalize_name",
    "resolve_schedule",
    "resolve_scheduler",
    "schedule_names",
    "schedule_overrides",
]
