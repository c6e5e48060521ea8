"""The local diffusers-style core: schedulers, their config system, the pipelines and the model front door.
Knows nothing of the CLI. Names load on first use (PEP 562), so importing ``schedcmp.core.errors`` alone stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

# Every public name and the submodule that defines it.
_HOME = {
    "SCHEDULER_CLASSES": "schedulers",
    "ConfigError": "errors",
    "ConfigMixin": "configuration",
    "ConfigWarning": "errors",
    "DDIMScheduler": "schedulers",
    "DDPMScheduler": "schedulers",
    "DEISMultistepScheduler": "schedulers",
    "DPMSolverMultistepScheduler": "schedulers",
    "DPMSolverSDEScheduler": "schedulers",
    "DPMSolverSinglestepScheduler": "schedulers",
    "Conditioning": "conditioning",
    "DiffusionPipeline": "pipeline",
    "EDMEulerScheduler": "schedulers",
    "EulerAncestralDiscreteScheduler": "schedulers",
    "EulerDiscreteScheduler": "schedulers",
    "FrozenConfig": "configuration",
    "FrozenDict": "configuration",
    "HeunDiscreteScheduler": "schedulers",
    "KDPM2AncestralDiscreteScheduler": "schedulers",
    "KDPM2DiscreteScheduler": "schedulers",
    "LMSDiscreteScheduler": "schedulers",
    "PNDMScheduler": "schedulers",
    "PipelineOutput": "pipeline",
    "SchedcmpError": "errors",
    "SchedulerMixin": "schedulers",
    "SchedulerOutput": "schedulers",
    "ShapesPipeline": "builtin",
    "StableDiffusionPipeline": "stable_diffusion",
    "StableDiffusionXLPipeline": "stable_diffusion_xl",
    "UniPCMultistepScheduler": "schedulers",
    "UnknownSchedulerError": "errors",
    "load_pipeline": "load",
    "make_scheduler": "schedulers",
    "register_to_config": "configuration",
    "resolve_schedule": "schedulers",
    "resolve_scheduler": "schedulers",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` the first time it is asked for."""
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
