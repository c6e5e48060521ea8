"""Scheduler names as users type them: our short aliases, diffusers' classes, A1111's and ComfyUI's samplers,
and the schedule types, each resolved to a class plus the config that makes it behave as in its tool.

Which tool a name means (a few names are one word in several tools, with different meanings):

1. a prefix decides: ``a1111:DDIM``, ``comfy:ddim``, ``diffusers:DPM++ 2M Karras`` (the diffusers
   documentation's mapping of A1111 names onto diffusers classes);
2. else the exact spelling, looked up in this order: our aliases (``ddim``, ``euler``, ``dpm``: diffusers
   semantics), diffusers class names, A1111 1.10's labels (``DPM++ 2M``, ``Euler a``, ``DDIM``; also the pre-1.9
   labels with a schedule, ``DPM++ 2M Karras``), ComfyUI's sampler names (``dpmpp_2m``, ``uni_pc``);
3. else the same order ignoring case, spaces, dashes, underscores and dots.

Schedule names (A1111 labels, ComfyUI names, our ids) ignore case and separators; ``Beta`` and ``KL Optimal``
mean the sampler's tool's variant unless prefixed (``comfy:beta``).
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..configuration import init_keys
from ..errors import ConfigError, UnknownSchedulerError
from .base import SchedulerMixin
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
from .schedule_types import SCHEDULE_BY_ID, SCHEDULE_TYPES, ScheduleType
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
TOOLS = ("schedcmp", "diffusers", "a1111", "comfy")
TOOL_TITLES = {"schedcmp": "schedcmp", "diffusers": "diffusers", "a1111": "A1111", "comfy": "ComfyUI"}
# How each tool feeds a k-diffusion-style sampler: the UNet's timesteps, the initial noise scale and the
# arithmetic of its training sigmas.
TOOL_CONFIG = {
    "a1111": {"timestep_type": "continuous", "noise_scaling": "sigma", "training_arithmetic": "a1111"},
    "comfy": {"timestep_type": "discrete", "noise_scaling": "marginal", "training_arithmetic": "comfy"},
}
AUTOMATIC = "automatic"


@dataclass(frozen=True)
class SchedulerPreset:
    """A name a user types, the class it builds, the config overrides it applies and the tool it comes from.

    ``schedule`` is the schedule type the name means when none is given (A1111's "Automatic", ComfyUI's
    default; None: the class's own config); ``ignores_schedule`` marks A1111's timestep samplers (DDIM, PLMS,
    UniPC, ...), which build their own grid whatever the Schedule type says.
    """

    name: str
    target: type[SchedulerMixin] | str  # a class, or "module:Class" in ksamplers (imported on first use)
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    tool: str = "schedcmp"
    schedule: str | None = None
    ignores_schedule: bool = False

    @property
    def cls(self) -> type[SchedulerMixin]:
        """The scheduler class (a sampler module is imported the first time it is asked for)."""
        if isinstance(self.target, str):
            module, _, name = self.target.partition(":")
            return getattr(importlib.import_module(f".ksamplers.{module}", __package__), name)
        return self.target

    @property
    def is_k_sampler(self) -> bool:
        return isinstance(self.target, str)

    def build(self, base_config: Mapping[str, Any] | None = None, **options: Any) -> SchedulerMixin:
        """The scheduler from ``base_config`` (e.g. a pipeline's), the tool's and preset's overrides, then
        ``options``."""
        tool = TOOL_CONFIG.get(self.tool, {}) if self.is_k_sampler else {}
        schedule = {"schedule": self.schedule} if self.is_k_sampler and self.schedule else {}
        return self.cls.from_config(dict(base_config or {}), **{**tool, **schedule, **self.options, **options})


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


def _diffusers(name: str, cls: type[SchedulerMixin], **options: Any) -> SchedulerPreset:
    return SchedulerPreset(name, cls, dict(options), f"diffusers' documented stand-in for A1111's {name}",
                           "diffusers")


# A1111 names mapped onto diffusers classes as the diffusers documentation maps them (prefix "diffusers:").
DIFFUSERS_A1111_PRESETS: tuple[SchedulerPreset, ...] = (
    _diffusers("DDIM", DDIMScheduler),
    _diffusers("PLMS", PNDMScheduler, skip_prk_steps=True),
    _diffusers("LMS", LMSDiscreteScheduler),
    _diffusers("LMS Karras", LMSDiscreteScheduler, use_karras_sigmas=True),
    _diffusers("Euler", EulerDiscreteScheduler),
    _diffusers("Euler a", EulerAncestralDiscreteScheduler),
    _diffusers("Heun", HeunDiscreteScheduler),
    _diffusers("DPM2", KDPM2DiscreteScheduler),
    _diffusers("DPM2 Karras", KDPM2DiscreteScheduler, use_karras_sigmas=True),
    _diffusers("DPM2 a", KDPM2AncestralDiscreteScheduler),
    _diffusers("DPM2 a Karras", KDPM2AncestralDiscreteScheduler, use_karras_sigmas=True),
    _diffusers("DPM++ 2M", DPMSolverMultistepScheduler),
    _diffusers("DPM++ 2M Karras", DPMSolverMultistepScheduler, use_karras_sigmas=True),
    _diffusers("DPM++ 2M SDE", DPMSolverMultistepScheduler, algorithm_type="sde-dpmsolver++"),
    _diffusers("DPM++ 2M SDE Karras", DPMSolverMultistepScheduler, algorithm_type="sde-dpmsolver++",
               use_karras_sigmas=True),
    _diffusers("DPM++ 3M SDE", DPMSolverMultistepScheduler, algorithm_type="sde-dpmsolver++", solver_order=3),
    _diffusers("DPM++ 3M SDE Karras", DPMSolverMultistepScheduler, algorithm_type="sde-dpmsolver++",
               solver_order=3, use_karras_sigmas=True),
    _diffusers("DPM++ SDE", DPMSolverSDEScheduler),
    _diffusers("DPM++ SDE Karras", DPMSolverSDEScheduler, use_karras_sigmas=True),
    _diffusers("DPM++ 2S", DPMSolverSinglestepScheduler, solver_order=2),
    _diffusers("DEIS", DEISMultistepScheduler),
    _diffusers("UniPC", UniPCMultistepScheduler),
    _diffusers("DDPM", DDPMScheduler),
)


def _a1111(name: str, target: str, schedule: str, description: str, ignores_schedule: bool = False,
           **options: Any) -> SchedulerPreset:
    return SchedulerPreset(name, target, dict(options), description, "a1111", schedule, ignores_schedule)


# A1111 1.10's sampler list (modules/sd_samplers_kdiffusion.py, sd_samplers_timesteps.py, sd_samplers_lcm.py,
# sd_samplers_extra.py), each with the schedule type "Automatic" gives it and its discard_next_to_last_sigma.
A1111_SAMPLERS: tuple[SchedulerPreset, ...] = (
    _a1111("DPM++ 2M", "dpmpp_2m:DPMPP2MSampler", "karras", "DPM-Solver++(2M), Lu et al. 2022"),
    _a1111("DPM++ SDE", "dpmpp_sde:DPMPPSDESampler", "karras", "stochastic DPM-Solver++ (k-diffusion), Brownian"),
    _a1111("DPM++ 2M SDE", "dpmpp_2m_sde:DPMPP2MSDESampler", "exponential", "SDE-DPM-Solver++(2M), Brownian"),
    _a1111("DPM++ 2M SDE Heun", "dpmpp_2m_sde:DPMPP2MSDESampler", "exponential",
           "SDE-DPM-Solver++(2M), Heun-type second order", solver_type="heun"),
    _a1111("DPM++ 2S a", "dpmpp_2s_ancestral:DPMPP2SAncestralSampler", "karras", "DPM-Solver++(2S) ancestral"),
    _a1111("DPM++ 3M SDE", "dpmpp_3m_sde:DPMPP3MSDESampler", "exponential", "k-diffusion's 3M SDE, Brownian",
           discard_penultimate_sigma=True),
    _a1111("Euler a", "euler_ancestral:EulerAncestralSampler", "uniform", "Euler ancestral (k-diffusion)"),
    _a1111("Euler", "euler:EulerSampler", "uniform", "Euler, Karras et al. 2022 Alg. 2"),
    _a1111("LMS", "lms:LMSSampler", "uniform", "4th-order linear multistep (k-diffusion)"),
    _a1111("Heun", "heun:HeunSampler", "uniform", "Heun, Karras et al. 2022 Alg. 1"),
    _a1111("DPM2", "dpm2:DPM2Sampler", "karras", "DPM-Solver-2 in sigma (k-diffusion)",
           discard_penultimate_sigma=True),
    _a1111("DPM2 a", "dpm2_ancestral:DPM2AncestralSampler", "karras", "DPM-Solver-2 ancestral",
           discard_penultimate_sigma=True),
    # A1111 hands DPM fast / adaptive the model's sigma range and its ancestral eta (default 1), whatever the
    # schedule type; the schedule type still sets the initial noise, z * sigmas[0] (and DPM fast's n = steps is
    # the grid's step count, except on DDIM's grid when the steps do not divide 1000).
    _a1111("DPM fast", "dpm_fast:DPMFastSampler", "uniform", "DPM-Solver fast (k-diffusion)", eta=1.0,
           sigma_range="model"),
    _a1111("DPM adaptive", "dpm_adaptive:DPMAdaptiveSampler", "uniform", "adaptive DPM-Solver (k-diffusion)",
           eta=1.0, sigma_range="model"),
    _a1111("Restart", "restart:RestartSampler", "karras", "Restart sampling, Xu et al. 2023"),
    _a1111("DDIM", "a1111_ddim:A1111DDIMSampler", "uniform", "A1111's DDIM on its own timesteps", True),
    _a1111("DDIM CFG++", "a1111_ddim_cfgpp:A1111DDIMCFGPPSampler", "uniform", "DDIM with CFG++, Chung et al. 2024",
           True),
    _a1111("PLMS", "a1111_plms:A1111PLMSSampler", "uniform", "A1111's PLMS on its own timesteps", True),
    _a1111("UniPC", "a1111_unipc:A1111UniPCSampler", "uniform", "UniPC bh1 order 3, A1111's options", True),
    _a1111("LCM", "a1111_lcm:A1111LCMSampler", "uniform", "A1111's LCM (Luo et al. 2023)"),
)


def _comfy(name: str, target: str, description: str, **options: Any) -> SchedulerPreset:
    return SchedulerPreset(name, target, dict(options), description, "comfy", "simple")


_DISCARD = {"discard_penultimate_sigma": True}  # ComfyUI's DISCARD_PENULTIMATE_SIGMA_SAMPLERS
# ComfyUI's SAMPLER_NAMES (comfy/samplers.py), each at the KSampler node's default scheduler, "simple".
COMFY_SAMPLERS: tuple[SchedulerPreset, ...] = (
    _comfy("euler", "euler:EulerSampler", "Euler", churn_draws="churn_steps"),
    _comfy("euler_cfg_pp", "cfg_pp:EulerCFGPPSampler", "Euler with CFG++"),
    _comfy("euler_ancestral", "euler_ancestral:EulerAncestralSampler", "Euler ancestral"),
    _comfy("euler_ancestral_cfg_pp", "cfg_pp:EulerAncestralCFGPPSampler", "Euler ancestral with CFG++"),
    _comfy("heun", "heun:HeunSampler", "Heun", churn_draws="churn_steps"),
    _comfy("heunpp2", "heunpp2:HeunPP2Sampler", "Heun++ (3-point weighted Heun)"),
    _comfy("exp_heun_2_x0", "exp_heun_2_x0:ExpHeun2X0Sampler", "exponential Heun in x0"),
    _comfy("exp_heun_2_x0_sde", "exp_heun_2_x0:ExpHeun2X0SDESampler", "exponential Heun in x0, SDE"),
    _comfy("dpm_2", "dpm2:DPM2Sampler", "DPM-Solver-2", churn_draws="churn_steps", **_DISCARD),
    _comfy("dpm_2_ancestral", "dpm2_ancestral:DPM2AncestralSampler", "DPM-Solver-2 ancestral", **_DISCARD),
    _comfy("lms", "lms:LMSSampler", "linear multistep, ComfyUI's last step", last_step="denoised"),
    _comfy("dpm_fast", "dpm_fast:DPMFastSampler", "DPM-Solver fast"),
    _comfy("dpm_adaptive", "dpm_adaptive:DPMAdaptiveSampler", "adaptive DPM-Solver"),
    _comfy("dpmpp_2s_ancestral", "dpmpp_2s_ancestral:DPMPP2SAncestralSampler", "DPM-Solver++(2S) ancestral"),
    _comfy("dpmpp_2s_ancestral_cfg_pp", "cfg_pp:DPMPP2SAncestralCFGPPSampler", "DPM++ 2S ancestral with CFG++"),
    _comfy("dpmpp_sde", "dpmpp_sde:DPMPPSDESampler", "stochastic DPM-Solver++, Brownian"),
    _comfy("dpmpp_sde_gpu", "dpmpp_sde:DPMPPSDESampler", "dpmpp_sde (ComfyUI keeps its tree on the GPU)"),
    _comfy("dpmpp_2m", "dpmpp_2m:DPMPP2MSampler", "DPM-Solver++(2M)"),
    _comfy("dpmpp_2m_cfg_pp", "cfg_pp:DPMPP2MCFGPPSampler", "DPM-Solver++(2M) with CFG++"),
    _comfy("dpmpp_2m_sde", "dpmpp_2m_sde:DPMPP2MSDESampler", "SDE-DPM-Solver++(2M), Brownian"),
    _comfy("dpmpp_2m_sde_gpu", "dpmpp_2m_sde:DPMPP2MSDESampler", "dpmpp_2m_sde (tree on the GPU)"),
    _comfy("dpmpp_2m_sde_heun", "dpmpp_2m_sde:DPMPP2MSDESampler", "SDE-DPM-Solver++(2M), Heun type",
           solver_type="heun"),
    _comfy("dpmpp_2m_sde_heun_gpu", "dpmpp_2m_sde:DPMPP2MSDESampler", "dpmpp_2m_sde_heun (tree on the GPU)",
           solver_type="heun"),
    _comfy("dpmpp_3m_sde", "dpmpp_3m_sde:DPMPP3MSDESampler", "k-diffusion's 3M SDE, Brownian"),
    _comfy("dpmpp_3m_sde_gpu", "dpmpp_3m_sde:DPMPP3MSDESampler", "dpmpp_3m_sde (tree on the GPU)"),
    _comfy("ddpm", "ddpm:DDPMSampler", "DDPM ancestral step in sigma form"),
    _comfy("lcm", "lcm:LCMSampler", "LCM: denoise, then re-noise"),
    _comfy("ipndm", "ipndm:IPNDMSampler", "improved PNDM, Zhang & Chen 2022"),
    _comfy("ipndm_v", "ipndm_v:IPNDMVSampler", "variable-step iPNDM, Zhou et al. 2024"),
    _comfy("deis", "deis:DEISSampler", "DEIS tAB, Zhang & Chen 2022"),
    _comfy("res_multistep", "res_multistep:ResMultistepSampler", "RES multistep, Zhang et al. 2023"),
    _comfy("res_multistep_cfg_pp", "cfg_pp:ResMultistepCFGPPSampler", "RES multistep with CFG++"),
    _comfy("res_multistep_ancestral", "res_multistep:ResMultistepAncestralSampler", "RES multistep ancestral"),
    _comfy("res_multistep_ancestral_cfg_pp", "cfg_pp:ResMultistepAncestralCFGPPSampler",
           "RES multistep ancestral with CFG++"),
    _comfy("gradient_estimation", "gradient_estimation:GradientEstimationSampler",
           "gradient estimation, Permenter & Yuan 2024"),
    _comfy("gradient_estimation_cfg_pp", "cfg_pp:GradientEstimationCFGPPSampler", "gradient estimation, CFG++"),
    _comfy("er_sde", "er_sde:ERSDESampler", "ER-SDE-Solver-3, Cui et al. 2023"),
    _comfy("seeds_2", "seeds:SEEDS2Sampler", "SEEDS-2, Gonzalez et al. 2023"),
    _comfy("seeds_3", "seeds:SEEDS3Sampler", "SEEDS-3, Gonzalez et al. 2023"),
    _comfy("sa_solver", "sa_solver:SASolverSampler", "SA-Solver, Xue et al. 2023"),
    _comfy("sa_solver_pece", "sa_solver:SASolverPECESampler", "SA-Solver, PECE mode"),
    _comfy("ddim", "euler:EulerSampler", "ComfyUI's ddim: Euler (its random-noise inpainting aside)",
           churn_draws="churn_steps"),
    _comfy("uni_pc", "comfy_unipc:ComfyUniPCSampler", "UniPC bh1", **_DISCARD),
    _comfy("uni_pc_bh2", "comfy_unipc:ComfyUniPCSampler", "UniPC bh2", variant="bh2", **_DISCARD),
)
# ComfyUI names we know and do not provide, with the reason.
COMFY_MISSING: Mapping[str, str] = {
    "cfgpp_ud10_ab": "ComfyUI PR #15951 (2026-08, an experiment tuned on one model); its source is not public "
                     "in a form we could check against",
}


def normalize_name(name: str) -> str:
    """The loose lookup key of a name: lower case, with spaces, dashes, underscores and dots removed."""
    return re.sub(r"[\s_\-.]+", "", name.strip().lower())


def _class_presets() -> tuple[SchedulerPreset, ...]:
    return tuple(SchedulerPreset(c.__name__, c, {}, f"{c.__name__} with its defaults", "diffusers")
                 for c in SCHEDULER_CLASSES)


def _k_sampler_class_presets() -> tuple[SchedulerPreset, ...]:
    """Our sampler classes by their class names (a saved config's ``_class_name``), with their own defaults."""
    targets = dict.fromkeys(p.target for p in (*A1111_SAMPLERS, *COMFY_SAMPLERS))
    return tuple(SchedulerPreset(t.partition(":")[2], t, {}, f"{t.partition(':')[2]} with its defaults")
                 for t in targets)


def _with_schedule(preset: SchedulerPreset, schedule: ScheduleType) -> SchedulerPreset:
    """A pre-1.9 A1111 label such as "DPM++ 2M Karras": the sampler with that schedule type."""
    return SchedulerPreset(f"{preset.name} {schedule.a1111}", preset.target, preset.options,
                           f"{preset.description}, {schedule.a1111} schedule", preset.tool, schedule.id,
                           preset.ignores_schedule)


def _a1111_with_schedules() -> tuple[SchedulerPreset, ...]:
    return tuple(_with_schedule(p, s) for p in A1111_SAMPLERS if not p.ignores_schedule
                 for s in SCHEDULE_TYPES if s.a1111 in ("Karras", "Exponential"))


# Lookup order for names without a prefix, and the tables a prefix selects.
_UNPREFIXED = ("schedcmp", "classes", "a1111", "a1111_scheduled", "comfy")
_TABLES: dict[str, tuple[SchedulerPreset, ...]] = {
    "schedcmp": ALIASES,
    "classes": (*_class_presets(), *_k_sampler_class_presets()),
    "a1111": A1111_SAMPLERS,
    "a1111_scheduled": _a1111_with_schedules(),
    "comfy": COMFY_SAMPLERS,
    "diffusers": (*_class_presets(), *DIFFUSERS_A1111_PRESETS),
}
_PREFIXES = {"a1111": ("a1111", "a1111_scheduled"), "comfy": ("comfy",), "comfyui": ("comfy",),
             "diffusers": ("diffusers",)}


def known_scheduler_names() -> list[str]:
    """Every name ``resolve_scheduler`` accepts without a prefix, in lookup order (then the diffusers: ones)."""
    names = [p.name for table in _UNPREFIXED for p in _TABLES[table]]
    return names + [f"diffusers:{p.name}" for p in DIFFUSERS_A1111_PRESETS]


def _lookup(name: str, tables: tuple[str, ...]) -> SchedulerPreset | None:
    stripped = name.strip()
    for exact in (True, False):
        for table in tables:
            for preset in _TABLES[table]:
                if (preset.name == stripped) if exact else (normalize_name(preset.name) == normalize_name(stripped)):
                    return preset
    return None


def resolve_scheduler(name: str) -> SchedulerPreset:
    """The preset a sampler name means (see the module docstring for the rules); unknown names list the closest."""
    prefix, colon, rest = name.partition(":")
    tables = _PREFIXES.get(normalize_name(prefix)) if colon else None
    preset = _lookup(rest, tables) if tables else _lookup(name, _UNPREFIXED)
    if preset is not None:
        return preset
    missing = {normalize_name(k): k for k in COMFY_MISSING}.get(normalize_name(rest if tables else name))
    if missing is not None and (tables is None or "comfy" in tables):
        raise UnknownSchedulerError(f"ComfyUI's {missing} is not available: {COMFY_MISSING[missing]}")
    candidates = known_scheduler_names() if tables is None else [
        f"{prefix.strip()}:{p.name}" for table in tables for p in _TABLES[table]]
    by_key: dict[str, str] = {}
    for known in candidates:
        by_key.setdefault(normalize_name(known), known)
    close = difflib.get_close_matches(normalize_name(name), list(by_key), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(by_key[k]) for k in close)}?" if close else "see `schedcmp list-compatible`"
    raise UnknownSchedulerError(f"unknown scheduler {name!r}; {hint}")


# --- schedule types -------------------------------------------------------------------------------------------

# What a schedule means for a diffusers class: the flags (or spacing) that reproduce the tools' grid exactly.
_DIFFUSERS_SCHEDULES: dict[str, dict[str, Any]] = {
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "simple": {"timestep_spacing": "trailing"},
    "ddim_uniform": {"timestep_spacing": "leading"},
}


def _schedule_keys(schedule: ScheduleType) -> set[str]:
    return {normalize_name(n) for n in (schedule.id, schedule.a1111, schedule.comfy) if n}


def schedule_names() -> list[str]:
    """Every schedule name: "Automatic", A1111's labels, then ComfyUI's names (in ComfyUI's order)."""
    comfy_order = ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                   "linear_quadratic", "kl_optimal")
    return ["Automatic", *(s.a1111 for s in SCHEDULE_TYPES if s.a1111), *comfy_order]


def _unknown_schedule(name: str) -> UnknownSchedulerError:
    names = schedule_names()
    by_key: dict[str, str] = {}
    for known in names:
        by_key.setdefault(normalize_name(known), known)
    close = difflib.get_close_matches(normalize_name(name), list(by_key), n=2, cutoff=0.6)
    hint = f"did you mean {', '.join(repr(by_key[c]) for c in close)}? " if close else ""
    a1111, comfy = names[: -9], names[-9:]
    return UnknownSchedulerError(f"unknown schedule {name.strip()!r}; {hint}A1111 schedule types: "
                                 f"{', '.join(a1111)}; ComfyUI schedulers: {', '.join(comfy)}")


def resolve_schedule(name: str, tool: str = "a1111") -> str:
    """The schedule id ``name`` means for a sampler of ``tool`` ("automatic" for the sampler's own default)."""
    prefix, colon, rest = name.partition(":")
    if colon and normalize_name(prefix) in ("a1111", "comfy", "comfyui"):
        tool, name = ("a1111" if normalize_name(prefix) == "a1111" else "comfy"), rest
    key = normalize_name(name)
    if key in ("automatic", "auto", "default"):
        return AUTOMATIC
    matches = [s for s in SCHEDULE_TYPES if key in _schedule_keys(s)]
    if not matches:
        raise _unknown_schedule(name)
    if len(matches) > 1:  # Beta / KL Optimal: the sampler's tool's variant
        if tool == "comfy":
            preferred = [s for s in matches if s.comfy and normalize_name(s.comfy) == key]
        else:
            preferred = [s for s in matches if key in {normalize_name(s.id), normalize_name(s.a1111 or "")}]
        matches = preferred or matches
    return matches[0].id


def schedule_overrides(preset: SchedulerPreset, schedule: str | None) -> dict[str, Any]:
    """The config overrides that give ``preset`` the schedule ``schedule`` (a user's name; None: its own), or a
    ConfigError saying why it cannot take it."""
    if schedule is None:
        return {}
    tool = preset.tool if preset.tool in TOOL_CONFIG else "a1111"
    schedule_id = resolve_schedule(schedule, tool)
    if schedule_id == AUTOMATIC:
        return {}
    if preset.ignores_schedule:
        return {}
    if preset.is_k_sampler:
        return {"schedule": schedule_id}
    overrides = _DIFFUSERS_SCHEDULES.get(schedule_id)
    label = SCHEDULE_BY_ID[schedule_id].a1111 or SCHEDULE_BY_ID[schedule_id].comfy
    if overrides is None or not set(overrides) <= init_keys(preset.cls):
        raise ConfigError(f"{preset.name} ({preset.cls.__name__}, diffusers semantics) has no {label} schedule; "
                          f"use an A1111 or ComfyUI sampler name for it (e.g. a1111:Euler, comfy:dpmpp_2m)")
    return dict(overrides)


def make_scheduler(name: str, schedule: str | None = None, config: Mapping[str, Any] | None = None,
                   **options: Any) -> SchedulerMixin:
    """The scheduler a tool's name means, e.g. ``make_scheduler("DPM++ 2M", schedule="Karras",
    config=pipe.scheduler.config)`` for A1111's DPM++ 2M Karras; ``options`` override config keys."""
    preset = resolve_scheduler(name)
    return preset.build(config, **{**schedule_overrides(preset, schedule), **options})
