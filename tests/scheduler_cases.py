"""The parity table: every scheduler class x model family x option x step count compared with diffusers.

Options are varied one (or one coupled group) at a time from each family's real scheduler config; a case applies
to a class only where diffusers' ``__init__`` takes the option, so the table follows the oracle's signatures.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers

FIXTURES = Path(__file__).parent / "fixtures"
BASE_CONFIGS: dict[str, dict[str, Any]] = {
    k: v for k, v in json.loads((FIXTURES / "scheduler_configs.json").read_text()).items() if not k.startswith("_")
}

CLASS_NAMES = (
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler",
    "EDMEulerScheduler",
)

LINEAR_TRAINED_BETAS = [0.0001 + i * (0.02 - 0.0001) / 999 for i in range(1000)]

# Option groups varied one at a time. Each group applies to a class when diffusers' __init__ takes all its keys.
OPTION_GROUPS: tuple[dict[str, Any], ...] = (
    {"prediction_type": "v_prediction"},
    {"prediction_type": "sample"},
    {"timestep_spacing": "leading"},
    {"timestep_spacing": "leading", "steps_offset": 0},
    {"timestep_spacing": "trailing"},
    {"timestep_spacing": "linspace"},
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"trained_betas": LINEAR_TRAINED_BETAS},
    {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    {"use_karras_sigmas": True},
    {"use_exponential_sigmas": True},
    {"use_beta_sigmas": True},
    {"final_sigmas_type": "sigma_min"},
    {"clip_sample": True},
    {"set_alpha_to_one": True},
    {"thresholding": True, "prediction_type": "sample"},
    {"thresholding": True},
    {"skip_prk_steps": False},
    {"variance_type": "fixed_large"},
    {"variance_type": "fixed_small_log"},
    {"variance_type": "fixed_large_log"},
    {"variance_type": "learned"},
    {"variance_type": "learned_range"},
    {"interpolation_type": "log_linear"},
    {"timestep_type": "continuous", "prediction_type": "v_prediction"},
    {"sigma_min": 0.1, "sigma_max": 10.0, "use_karras_sigmas": True},
    {"solver_order": 1},
    {"solver_order": 3},
    {"solver_type": "heun"},
    {"lower_order_final": False},
    {"euler_at_final": True},
    {"use_lu_lambdas": True},
    {"lambda_min_clipped": -5.1},
    {"predict_x0": False},
    {"solver_type": "bh1"},
    {"disable_corrector": [0]},
    {"rho": 5.0},
    {"sigma_schedule": "exponential"},
    {"sigma_data": 1.0},
)

# Coupled options that only exist for one class (algorithm variants and their orders).
CLASS_OPTION_GROUPS: dict[str, tuple[dict[str, Any], ...]] = {
    "DPMSolverMultistepScheduler": (
        {"algorithm_type": "dpmsolver"},
        {"algorithm_type": "sde-dpmsolver"},
        {"algorithm_type": "sde-dpmsolver++"},
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
        {"algorithm_type": "dpmsolver", "solver_order": 3},
        {"algorithm_type": "dpmsolver++", "solver_type": "heun", "solver_order": 3},
        {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"},
        {"use_lu_lambdas": True, "euler_at_final": True},
    ),
    "DPMSolverSinglestepScheduler": (
        {"algorithm_type": "dpmsolver"},
        {"algorithm_type": "dpmsolver", "solver_order": 3},
        {"algorithm_type": "sde-dpmsolver++"},
        {"lower_order_final": True},
        {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"},
    ),
    "DEISMultistepScheduler": ({"solver_order": 3, "lower_order_final": False},),
    "UniPCMultistepScheduler": (
        {"solver_order": 3, "solver_type": "bh1"},
        {"predict_x0": False, "solver_type": "bh1"},
        {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"},
    ),
    "DDIMScheduler": ({"clip_sample": True, "clip_sample_range": 0.5},),
    "DDPMScheduler": ({"clip_sample": True, "variance_type": "fixed_large"},),
}

# Extra keyword arguments to ``step`` that change the result.
STEP_KWARG_GROUPS: dict[str, tuple[dict[str, Any], ...]] = {
    "DDIMScheduler": ({"eta": 1.0}, {"eta": 0.5, "use_clipped_model_output": True}),
    "EulerDiscreteScheduler": ({"s_churn": 2.0}, {"s_churn": 1.0, "s_tmin": 0.5, "s_tmax": 5.0, "s_noise": 1.003}),
    "EDMEulerScheduler": ({"s_churn": 2.0},),
}

OPTION_STEP_COUNTS = (1, 2, 3, 7, 25)
BASE_STEP_COUNTS = (1, 2, 3, 4, 7, 10, 20, 25, 50, 1000)
FAMILY_STEP_COUNTS = (3, 15, 30)


@dataclass(frozen=True)
class Case:
    """One parity loop: a class, a base config, option overrides, a step count, a model and step kwargs."""

    class_name: str
    family: str
    options: tuple[tuple[str, Any], ...]
    steps: int
    model: str = "closed_form"
    step_kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def config(self) -> dict[str, Any]:
        """The config dict both libraries build from."""
        return {**BASE_CONFIGS[self.family], **dict(self.options)}

    @property
    def id(self) -> str:
        def show(v: Any) -> str:
            return "trained" if isinstance(v, list) and len(v) > 10 else str(v)

        opts = ",".join(f"{k}={show(v)}" for k, v in (*self.options, *self.step_kwargs)) or "base"
        return f"{self.class_name}-{self.family}-{opts}-{self.steps}-{self.model}"


def diffusers_init_keys(class_name: str) -> set[str]:
    """The keys diffusers' ``__init__`` of ``class_name`` takes."""
    return set(inspect.signature(getattr(diffusers, class_name).__init__).parameters) - {"self", "kwargs"}


def cases_for(class_name: str) -> list[Case]:
    """Every parity case of one class."""
    keys = diffusers_init_keys(class_name)
    cases = [Case(class_name, "sd15", (), n, model) for n in BASE_STEP_COUNTS for model in ("closed_form", "random")]
    cases += [Case(class_name, fam, (), n, "random") for fam in ("sd2v", "sdxl") for n in FAMILY_STEP_COUNTS]
    groups = [g for g in OPTION_GROUPS if set(g) <= keys] + list(CLASS_OPTION_GROUPS.get(class_name, ()))
    for group in groups:
        cases += [Case(class_name, "sd15", tuple(group.items()), n) for n in OPTION_STEP_COUNTS]
    for kwargs in STEP_KWARG_GROUPS.get(class_name, ()):
        cases += [Case(class_name, "sd15", (), n, "random", tuple(kwargs.items())) for n in OPTION_STEP_COUNTS]
    return cases


ALL_CASES: list[Case] = [case for name in CLASS_NAMES for case in cases_for(name)]
