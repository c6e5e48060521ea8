"""The local diffusers-style core: schedulers, their config system, the pipelines and the model front door.
Knows nothing of the CLI."""

from .builtin import ShapesPipeline
from .configuration import ConfigMixin, FrozenConfig, register_to_config
from .errors import ConfigError, ConfigWarning, SchedcmpError, UnknownSchedulerError
from .load import load_pipeline
from .pipeline import DenoisingPipeline, StableDiffusionPipeline
from .schedulers import (
    SCHEDULER_CLASSES,
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    DPMSolverSinglestepScheduler,
    EDMEulerScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    SchedulerMixin,
    SchedulerOutput,
    UniPCMultistepScheduler,
    resolve_scheduler,
)

__all__ = [
    "SCHEDULER_CLASSES",
    "ConfigError",
    "ConfigMixin",
    "ConfigWarning",
    "DDIMScheduler",
    "DDPMScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSDEScheduler",
    "DPMSolverSinglestepScheduler",
    "DenoisingPipeline",
    "EDMEulerScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FrozenConfig",
    "HeunDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "LMSDiscreteScheduler",
    "PNDMScheduler",
    "SchedcmpError",
    "SchedulerMixin",
    "SchedulerOutput",
    "ShapesPipeline",
    "StableDiffusionPipeline",
    "UniPCMultistepScheduler",
    "UnknownSchedulerError",
    "load_pipeline",
    "register_to_config",
    "resolve_scheduler",
]
