"""Every A1111 1.10 sampler x Schedule type pair (20 x 12 = 240) and every ComfyUI sampler x scheduler pair
(45 x 9 = 405) equals its tool: ours is what the registry builds for the tool's names (``make_scheduler("a1111:DPM++
2M", schedule="Karras")``), driven by diffusers' loop; the oracle is the tool's own pipeline (tests/tool_pairs.py:
its grid, initial noise, UNet timesteps and sampler code) on the same model, latents and noise.

Both make the same model calls at the same UNet timesteps, and their results agree to ``relative_error`` below
1e-5, except where the sampler's own parity test needed more (``tolerance``) and where the tool's own float32 result
is as far from its float64 run (``ROUNDING_SENSITIVE``: there the bound is ``SPREADS`` times that spread). Pairs we cannot
support are strict xfails with the reason (``UNSUPPORTED``); pairs the tool itself cannot run are refused by ours
with a ConfigError.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from ksampler_harness import SD_CONFIG, SHAPE, relative_error, run_ours
from test_ksampler_ode import run_dynamic
from tool_pairs import (
    A1111_CFG,
    A1111_SAMPLERS,
    A1111_SCHEDULE_TYPES,
    ANALYTIC,
    COMFY_CFG,
    COMFY_SAMPLERS,
    COMFY_SCHEDULERS,
    SEED,
    Model,
    a1111_pipeline,
    comfy_calculate_sigmas,
    comfy_model_sampling,
    comfy_pipeline,
)

from schedcmp.core.errors import ConfigError
from schedcmp.core.schedulers.k_sampler import KSampler
from schedcmp.core.schedulers.registry import make_scheduler, resolve_scheduler

# k-diffusion's dpm_fast / dpm_adaptive wrap their float sigma range with torch.tensor(tensor)
pytestmark = pytest.mark.filterwarnings("ignore:To copy construct from a tensor:UserWarning")

STEPS = 10
TOLERANCE = 1e-5
# Fresh noise puts some elements near the test data's decision boundary at small sigma, where dD/dx reaches ~15 and
# float32 rounding on both sides is amplified (k-diffusion in float32 is itself up to 1e-5 from its float64 run):
# the ancestral, Brownian and DDPM samplers' parity tests need 5e-5 (tests/test_ksampler_stochastic.py): every
# sampler that draws noise gets it.
NOISY_TOLERANCE = 5e-5
# DPM fast with eta (A1111 gives it eta 1) jumps up to h = 6 in lambda, where expm1(h) / h amplifies float32
# rounding: without eta ours equals k-diffusion to 1e-6 (tests/test_ksampler_ode.py), with A1111's eta 1 ours is
# 2e-4 to 7e-4 from the tool's float32 run and 6e-4 from its float64 run, whose own spread is 1.5e-4 to 2e-4: 1e-3.
FLOAT32_SENSITIVE = 1e-3
# DPM adaptive steers its step size by float32 error estimates (rounding noise at first), so its tries land at
# slightly other sigmas and, with rtol 0.05, the result moves: 5e-4 in tests/test_ksampler_ode.py on sigma-scaled
# noise, but the tools' own float32 and float64 runs of these pairs differ by 2e-5 to 2.5e-2 (median 1.9e-3): 2e-3,
# or SPREADS times the pair's own spread where that is larger (ROUNDING_SENSITIVE). Their calls must still agree.
ADAPTIVE_TOLERANCE = 2e-3
ADAPTIVE = {"a1111": {"DPM adaptive"}, "comfy": {"dpm_adaptive"}}
# A rounding-sensitive pair's bound in units of the tool's own float32-vs-float64 spread: ours computes its scalars
# in float64 and its tensors in float32, so it lies near neither run exactly; 4 spreads (measured up to 3.2).
SPREADS = 4
# (tool, sampler or None, schedule or None): why the tool's own float32 result there is as far from its float64
# run as from ours; such a pair's bound is SPREADS times that spread (the tool's float64 run, same draws) if larger.
ROUNDING_SENSITIVE: dict[tuple[str, str | None, str | None], str] = {
    ("comfy", None, "linear_quadratic"): "genmo Mochi's flow-model schedule ends SD sampling with one step from "
    "sigma 5.07 to 0 at 10 steps: the result is the posterior mean at sigma 5, std 0.05-0.07 (a tenth of the data's), "
    "so relative errors are ten times larger; ipndm_v's variable-step weights blow up on its growing steps (std 21)",
    ("comfy", "dpm_adaptive", None): "see ADAPTIVE_TOLERANCE",
    ("a1111", "DPM adaptive", None): "see ADAPTIVE_TOLERANCE (A1111 also gives it eta 1)",
    ("a1111", "DPM fast", None): "see FLOAT32_SENSITIVE: with A1111's eta 1 its jumps amplify float32 rounding",
}

# (tool, sampler, schedule or None for every schedule): why ours cannot match the tool there.
UNSUPPORTED: dict[tuple[str, str, str | None], str] = {
    ("comfy", "cfgpp_ud10_ab", None): "ComfyUI PR #15951's sampler: no source to port or to check against",
}


def tolerance(tool: str, name: str) -> float:
    """The bound of a pair: the sampler's own parity test's (see above)."""
    if name in ADAPTIVE[tool]:
        return ADAPTIVE_TOLERANCE
    if tool == "a1111" and name == "DPM fast":
        return FLOAT32_SENSITIVE
    return NOISY_TOLERANCE if resolve_scheduler(f"{tool}:{name}").cls.stochastic else TOLERANCE


def _lookup(table: dict, tool: str, name: str, schedule: str) -> str | None:
    keys = [(tool, name, schedule), (tool, name, None), (tool, None, schedule)]
    return next((table[key] for key in keys if key in table), None)


def unsupported(tool: str, name: str, schedule: str) -> str | None:
    """Why a pair is not supported, or None."""
    return _lookup(UNSUPPORTED, tool, name, schedule)


def rounding_sensitive(tool: str, name: str, schedule: str) -> str | None:
    """Why a pair's tool result is sensitive to float32 rounding, or None."""
    return _lookup(ROUNDING_SENSITIVE, tool, name, schedule)


# --- our side ----------------------------------------------------------------------------------------------------


def run_guided(scheduler: KSampler, x: torch.Tensor, generator: torch.Generator, cfg: float,
               model: Model = ANALYTIC) -> torch.Tensor:
    """diffusers' loop with CFG outside the scheduler, as the engine does it for a CFG++ sampler: the guided
    prediction (the CFG scale times the sampler's ``guidance_scale_multiplier``) and the unconditional one."""
    cond, uncond = model.guided()
    scale = cfg * scheduler.guidance_scale_multiplier
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        uncond_output = uncond(x_in, t)
        output = uncond_output + scale * (cond(x_in, t) - uncond_output)
        x = scheduler.step(output, t, x, generator=generator, uncond_output=uncond_output).prev_sample
    return x


def run_registry(tool: str, name: str, schedule: str, steps: int,
                 model: Model = ANALYTIC) -> tuple[torch.Tensor, list[float]]:
    """Ours: the registry's scheduler for the tool's names on ``model``'s config (SD 1.5's), from the seed's latents
    times ``init_noise_sigma``, further draws from the same generator; (final latent, every call's timestep)."""
    scheduler = make_scheduler(f"{tool}:{name}", schedule=schedule, config=model.config)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(SHAPE, generator=generator) * scheduler.init_noise_sigma
    if scheduler.needs_uncond:
        sample = run_guided(scheduler, x, generator, A1111_CFG if tool == "a1111" else COMFY_CFG, model)
    elif scheduler.dynamic_timesteps:
        sample = run_dynamic(scheduler, model.plain(), x, generator)
    else:
        sample = run_ours(scheduler, model.plain(), x, generator)
    return sample, scheduler.timesteps.tolist()


@dataclass(frozen=True)
class PairResult:
    """One pair: the relative error, both sides' UNet timesteps, the bound, and for a rounding-sensitive pair the
    tool's own float32-vs-float64 spread (else None)."""

    error: float
    ours: list[float]
    tool: list[float]
    bound: float
    spread: float | None = None
    adaptive: bool = False

    @property
    def same_calls(self) -> bool:
        """The same number of model calls at the same timesteps (to 1e-3; where the step size adapts, to 3 or 2 %:
        its tries land at slightly other sigmas, and near t = 0 a small change of sigma is several timesteps)."""
        if len(self.ours) != len(self.tool):
            return False
        if self.adaptive:
            return all(abs(a - b) <= max(3.0, 0.02 * max(a, b)) for a, b in zip(self.ours, self.tool, strict=True))
        return all(abs(a - b) <= 1e-3 for a, b in zip(self.ours, self.tool, strict=True))

    @property
    def ok(self) -> bool:
        return self.same_calls and self.error < self.bound


def tool_spread(tool: str, name: str, schedule: str, steps: int = STEPS, tool_arithmetic: bool = True) -> float:
    """How far the tool's own float32 run of a pair is from its float64 run (the same draws)."""
    pipeline = a1111_pipeline if tool == "a1111" else comfy_pipeline
    float32, float64 = (pipeline(name, schedule, steps, tool_arithmetic, dtype=dtype).sample
                        for dtype in (torch.float32, torch.float64))
    return relative_error(float32, float64)


def compare_pair(tool: str, name: str, schedule: str, steps: int = STEPS, tool_arithmetic: bool = True) -> PairResult:
    """Ours against the tool's pipeline for one pair (``tool_arithmetic``: on the tool's own float64-derived
    training sigmas instead of the model's as schedcmp derives them, see tests/tool_pairs.py)."""
    ours, our_timesteps = run_registry(tool, name, schedule, steps)
    pipeline = a1111_pipeline if tool == "a1111" else comfy_pipeline
    run = pipeline(name, schedule, steps, tool_arithmetic)
    bound, spread = tolerance(tool, name), None
    if rounding_sensitive(tool, name, schedule):
        spread = tool_spread(tool, name, schedule, steps, tool_arithmetic)
        bound = max(bound, SPREADS * spread)
    adaptive = name in ADAPTIVE[tool]
    return PairResult(relative_error(ours, run.sample), our_timesteps, run.timesteps, bound, spread, adaptive)


# --- the pairs ---------------------------------------------------------------------------------------------------


def _cases(tool: str, names, schedules) -> list:
    cases = []
    for name in names:
        for schedule in schedules:
            reason = unsupported(tool, name, schedule)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            cases.append(pytest.param(tool, name, schedule, marks=marks, id=f"{tool}:{name}|{schedule}"))
    return cases


PAIRS = _cases("a1111", A1111_SAMPLERS, A1111_SCHEDULE_TYPES) + _cases("comfy", COMFY_SAMPLERS, COMFY_SCHEDULERS)


@pytest.mark.parametrize(("tool", "name", "schedule"), PAIRS)
def test_pair_matches_its_tool(tool, name, schedule):
    result = compare_pair(tool, name, schedule)
    assert len(result.ours) == len(result.tool), "a different number of model calls"
    assert result.same_calls, "the UNet is called at other timesteps"
    assert result.error < result.bound


OTHER_STEP_COUNTS = [
    ("a1111", "DPM++ 2M", "Karras", 7),
    ("a1111", "DDIM", "Automatic", 7),  # range(0, 1000, 142): A1111 runs 8 steps
    ("a1111", "UniPC", "Automatic", 7),
    ("a1111", "DPM2", "DDIM", 7),  # 8 steps with the discard: DDIM's grid has 8
    ("a1111", "Euler", "DDIM", 7),  # 1000 // 7: one step more than asked
    ("a1111", "DPM fast", "DDIM", 7),  # A1111 hands it n = 7 though DDIM's grid has 8 steps
    ("a1111", "LCM", "Simple", 7),
    ("a1111", "Restart", "Karras", 20),  # the restart loop starts at 20 steps
    ("a1111", "Restart", "Normal", 20),
    ("a1111", "DPM++ 3M SDE", "Exponential", 20),
    ("a1111", "Euler a", "Align Your Steps", 20),
    ("a1111", "DPM adaptive", "Karras", 20),
    ("comfy", "euler", "ddim_uniform", 7),
    ("comfy", "uni_pc", "beta", 7),
    ("comfy", "dpm_2", "kl_optimal", 7),
    ("comfy", "deis", "linear_quadratic", 7),
    ("comfy", "sa_solver", "karras", 20),
    ("comfy", "heunpp2", "normal", 20),
    ("comfy", "dpmpp_sde", "simple", 20),
    ("comfy", "lms", "beta", 20),
    ("comfy", "uni_pc_bh2", "kl_optimal", 1),  # ComfyUI asks kl_optimal for 2 steps here: it works
]
@pytest.mark.parametrize(("tool", "name", "schedule", "steps"), OTHER_STEP_COUNTS,
                         ids=[f"{tool}:{name}|{schedule}|{steps}" for tool, name, schedule, steps in OTHER_STEP_COUNTS])
def test_pair_matches_its_tool_at_other_step_counts(tool, name, schedule, steps):
    result = compare_pair(tool, name, schedule, steps)
    assert result.same_calls
    assert result.error < result.bound


# --- what the tools cannot run -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "dpm_fast", "res_multistep_cfg_pp"])
def test_comfy_kl_optimal_at_one_step_is_refused_as_comfyui_cannot_run_it(name):
    """ComfyUI's kl_optimal spaces its points by 1 / (steps - 1): at one step its grid is NaN."""
    assert comfy_calculate_sigmas(name, "kl_optimal", 1, comfy_model_sampling()).isnan().any()
    with pytest.raises(ConfigError, match="kl_optimal needs at least 2 steps"):
        make_scheduler(f"comfy:{name}", schedule="kl_optimal", config=SD_CONFIG).set_timesteps(1)


def test_a1111_unipc_below_its_order_is_refused_as_a1111_asserts():
    """A1111's UniPC runs order uni_pc_order (3) over len(timesteps) steps and asserts steps >= order
    (``modules/models/diffusion/uni_pc/uni_pc.py`` UniPC.sample): two steps fail in A1111."""
    with pytest.raises(ConfigError, match="uni_pc_order"):
        make_scheduler("a1111:UniPC", schedule="Automatic", config=SD_CONFIG).set_timesteps(2)


def test_the_pair_lists_are_the_tools():
    assert len(A1111_SAMPLERS) * len(A1111_SCHEDULE_TYPES) == 240
    assert len(COMFY_SAMPLERS) * len(COMFY_SCHEDULERS) == 405
    assert float(comfy_model_sampling(tool_arithmetic=True).sigma_max) == pytest.approx(14.6146, abs=1e-4)
