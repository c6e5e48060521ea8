"""The scheduler family and its registry: short aliases and A1111-style presets mapped to classes + options."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnknownSchedulerError
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
from .unipc import UniPCMultistepScheduler

# The family diffusers lists as compatible with Stable Diffusion (KarrasDiffusionSchedulers), in its order.
SCHEDULER_CLASSES: tuple[type[SchedulerMixin], ...] = (
    DDIMScheduler,
    DDPMScheduler,
    PNDMScheduler,
    LMSDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    EulerAncestralDiscreteScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    KDPM2DiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    DEISMultistepScheduler,
    UniPCMultistepScheduler,
    DPMSolverSDEScheduler,
    EDMEulerScheduler,
)


@dataclass(frozen=True)
class SchedulerPreset:
    """A name a user types, the class it builds and the config overrides it applies."""

    name: str
    cls: type[SchedulerMixin]
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def build(self, base_config: Mapping[str, Any] | None = None, **options: Any) -> SchedulerMixin:
        """The scheduler from ``base_config`` (e.g. a pipeline's), preset overrides, then ``options``."""
        return self.cls.from_config(dict(base_config or {}), **{**self.options, **options})


def _preset(name: str, cls: type[SchedulerMixin], description: str, **options: Any) -> SchedulerPreset:
    return SchedulerPreset(name, cls, dict(options), description)


# Short aliases: one per algorithm, with the class's own defaults.
ALIASES: tuple[SchedulerPreset, ...] = (
    _preset("ddim", DDIMScheduler, "DDIM (Song et al. 2020), deterministic with eta=0"),
    _preset("ddpm", DDPMScheduler, "DDPM ancestral sampling (Ho et al. 2020)"),
    _preset("pndm", PNDMScheduler, "PNDM / PLMS pseudo linear multistep (Liu et al. 2022)"),
    _preset("lms", LMSDiscreteScheduler, "linear multistep on sigmas (k-diffusion lms)"),
    _preset("euler", EulerDiscreteScheduler, "Euler on the probability-flow ODE (Karras et al. 2022)"),
    _preset("euler_a", EulerAncestralDiscreteScheduler, "Euler ancestral (k-diffusion)"),
    _preset("heun", HeunDiscreteScheduler, "Heun 2nd order (Karras et al. 2022 Alg. 1)"),
    _preset("dpm", DPMSolverMultistepScheduler, "DPM-Solver++ 2M (Lu et al. 2022)"),
    _preset("dpm_sde", DPMSolverSDEScheduler, "DPM-Solver++ SDE (k-diffusion dpmpp_sde)"),
    _preset("dpm_single", DPMSolverSinglestepScheduler, "DPM-Solver++ singlestep (Lu et al. 2022)"),
    _preset("kdpm2", KDPM2DiscreteScheduler, "DPM-Solver-2 on sigmas (k-diffusion dpm_2)"),
    _preset("kdpm2_a", KDPM2AncestralDiscreteScheduler, "DPM-Solver-2 ancestral (k-diffusion dpm_2_ancestral)"),
    _preset("deis", DEISMultistepScheduler, "DEIS multistep (Zhang & Chen 2022)"),
    _preset("unipc", UniPCMultistepScheduler, "UniPC predictor-corrector (Zhao et al. 2023)"),
    _preset("edm_euler", EDMEulerScheduler, "Euler in EDM parametrisation (Karras et al. 2022)"),
)

# The sampler names of the A1111 web UI, mapped as the diffusers documentation maps them.
A1111_PRESETS: tuple[SchedulerPreset, ...] = (
    _preset("DDIM", DDIMScheduler, "A1111 DDIM"),
    _preset("PLMS", PNDMScheduler, "A1111 PLMS", skip_prk_steps=True),
    _preset("LMS", LMSDiscreteScheduler, "A1111 LMS"),
    _preset("LMS Karras", LMSDiscreteScheduler, "A1111 LMS Karras", use_karras_sigmas=True),
    _preset("Euler", EulerDiscreteScheduler, "A1111 Euler"),
    _preset("Euler a", EulerAncestralDiscreteScheduler, "A1111 Euler a"),
    _preset("Heun", HeunDiscreteScheduler, "A1111 Heun"),
    _preset("DPM2", KDPM2DiscreteScheduler, "A1111 DPM2"),
    _preset("DPM2 Karras", KDPM2DiscreteScheduler, "A1111 DPM2 Karras", use_karras_sigmas=True),
    _preset("DPM2 a", KDPM2AncestralDiscreteScheduler, "A1111 DPM2 a"),
    _preset("DPM2 a Karras", KDPM2AncestralDiscreteScheduler, "A1111 DPM2 a Karras", use_karras_sigmas=True),
    _preset("DPM++ 2M", DPMSolverMultistepScheduler, "A1111 DPM++ 2M"),
    _preset("DPM++ 2M Karras", DPMSolverMultistepScheduler, "A1111 DPM++ 2M Karras", use_karras_sigmas=True),
    _preset("DPM++ 2M SDE", DPMSolverMultistepScheduler, "A1111 DPM++ 2M SDE", algorithm_type="sde-dpmsolver++"),
    _preset(
        "DPM++ 2M SDE Karras",
        DPMSolverMultistepScheduler,
        "A1111 DPM++ 2M SDE Karras",
        algorithm_type="sde-dpmsolver++",
        use_karras_sigmas=True,
    ),
    _preset(
        "DPM++ 3M SDE",
        DPMSolverMultistepScheduler,
        "A1111 DPM++ 3M SDE",
        algorithm_type="sde-dpmsolver++",
        solver_order=3,
    ),
    _preset(
        "DPM++ 3M SDE Karras",
        DPMSolverMultistepScheduler,
        "A1111 DPM++ 3M SDE Karras",
        algorithm_type="sde-dpmsolver++",
        solver_order=3,
        use_karras_sigmas=True,
    ),
    _preset("DPM++ SDE", DPMSolverSDEScheduler, "A1111 DPM++ SDE"),
    _preset("DPM++ SDE Karras", DPMSolverSDEScheduler, "A1111 DPM++ SDE Karras", use_karras_sigmas=True),
    _preset("DPM++ 2S", DPMSolverSinglestepScheduler, "singlestep DPM-Solver++(2S), non-ancestral", solver_order=2),
    _preset("DEIS", DEISMultistepScheduler, "DEIS"),
    _preset("UniPC", UniPCMultistepScheduler, "A1111 UniPC"),
    _preset("DDPM", DDPMScheduler, "DDPM"),
)


def normalize_name(name: str) -> str:
    """The lookup key of a scheduler name: lower case, with spaces, dashes, underscores and dots removed."""
    return re.sub(r"[\s_\-.]+", "", name.strip().lower())


def _build_index() -> dict[str, SchedulerPreset]:
    index: dict[str, SchedulerPreset] = {}
    class_presets = [SchedulerPreset(c.__name__, c, {}, f"{c.__name__} with its defaults") for c in SCHEDULER_CLASSES]
    for preset in (*ALIASES, *A1111_PRESETS, *class_presets):
        key = normalize_name(preset.name)
        known = index.get(key)
        if known is not None and (known.cls, dict(known.options)) != (preset.cls, dict(preset.options)):
            raise RuntimeError(f"scheduler names {known.name!r} and {preset.name!r} collide")
        index.setdefault(key, preset)
    return index


_INDEX = _build_index()


def known_scheduler_names() -> list[str]:
    """Every name ``resolve_scheduler`` accepts: aliases, A1111 presets, then class names."""
    return [p.name for p in (*ALIASES, *A1111_PRESETS)] + [c.__name__ for c in SCHEDULER_CLASSES]


def resolve_scheduler(name: str) -> SchedulerPreset:
    """Find an alias, preset or class name, ignoring case and separators; unknown names list the closest ones."""
    preset = _INDEX.get(normalize_name(name))
    if preset is not None:
        return preset
    by_key: dict[str, str] = {}
    for known in known_scheduler_names():
        by_key.setdefault(normalize_name(known), known)
    close = difflib.get_close_matches(normalize_name(name), list(by_key), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(by_key[k]) for k in close)}?" if close else "see `schedcmp list-compatible`"
    raise UnknownSchedulerError(f"unknown scheduler {name!r}; {hint}")


__all__ = [
    "A1111_PRESETS",
    "ALIASES",
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
    "normalize_name",
    "resolve_scheduler",
]
