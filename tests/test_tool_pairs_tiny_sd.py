"""The tool pairs of tests/test_tool_pairs.py on the tiny SD models: every A1111 1.10 sampler at "Automatic", every
ComfyUI sampler at "simple" (but cfgpp_ud10_ab, which has no source, and the *_gpu names, the same code as their
CPU twins) and a few other schedules, ours (the registry's scheduler on the pipeline's scheduler config) against the
tool's own pipeline (tests/tool_pairs.py), on a tiny SD 1.x (eps) and SD 2.x (v_prediction) UNet built by
tests/tiny_sd.py, with the same initial latents and noise.

The network of both sides is the pipeline's UNet under classifier-free guidance, one batched call [uncond, cond]
per model call as the engine makes it: the guided prediction for every sampler, its two halves for the CFG++
samplers (the tool's CFG scale on them). The tools see the model through their own wrappers: A1111's
CompVisVDenoiser (k-diffusion's DiscreteVDDPMDenoiser) or CompVisTimestepsVDenoiser for the v model, ComfyUI's
V_PREDICTION model call; both on the training sigmas as the tools derive them from the config's scaled-linear betas.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from test_tool_pairs import ADAPTIVE, SPREADS, PairResult, relative_error, run_registry
from tiny_sd import build_tiny_sd
from tool_pairs import A1111_SAMPLERS, COMFY_SAMPLERS, Model, a1111_pipeline, comfy_pipeline

from schedcmp.core.conditioning import Conditioning
from schedcmp.core.load import load_pipeline

# k-diffusion's dpm_fast / dpm_adaptive wrap their float sigma range with torch.tensor(tensor)
pytestmark = pytest.mark.filterwarnings("ignore:To copy construct from a tensor:UserWarning")

PROMPT, NEGATIVE, GUIDANCE = "a photograph of an astronaut riding a horse", "blurry", 7.5
STEPS = 5  # the fewest A1111's UniPC (order 3) and the multistep samplers' higher orders need, to keep the file fast
TOLERANCE = 1e-4
VARIANTS = ("sd1", "sd2v")
# A1111 hands DPM adaptive eta 1: a step rejected or accepted by a hair (rtol 0.05 on float32 error estimates) moves
# the later tries and which draw goes where, and on the v model the tool's own float32 and float64 runs already
# part at the 30th of ~66 calls and end 0.35 apart (sd1: 2.5e-5). There the bound is SPREADS times the tool's own
# spread, and the calls must agree only where the tool's two runs agree on them.
ROUNDING_SENSITIVE = {("a1111", "DPM adaptive")}
# (tool, sampler, variant): why ours cannot equal the tool there.
UNSUPPORTED = {
    ("a1111", "LCM", "sd2v"): "A1111's LCM reads a v model's output as eps (modules/sd_samplers_lcm.py: "
    "CFGDenoiserLCM always wraps LCMCompVisDenoiser, a DiscreteEpsDDPMDenoiser whose get_eps is apply_model), ours "
    "converts v by the config's prediction_type (schedcmp/core/schedulers/k_sampler.py _install_calls)",
}


class GuidedCall:
    """The pipeline's UNet on the batch [uncond, cond] at (c_in x, t): (uncond, cond) predictions in float32, computed
    once for the same inputs (the CFG++ samplers ask for both halves of one call)."""

    def __init__(self, pipeline, conditioning: Conditioning):
        self.pipeline, self.conditioning = pipeline, conditioning
        self._inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._outputs: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_in = x_in.float()
        if self._inputs is None or not (torch.equal(self._inputs[0], x_in) and torch.equal(self._inputs[1], t)):
            with torch.no_grad():
                output = self.pipeline.denoise(torch.cat([x_in] * 2), t.expand(2), self.conditioning)
            self._inputs, self._outputs = (x_in, t), output.chunk(2)
        return self._outputs


class TinyUNet:
    """One network of a pair, (c_in x, t) -> prediction in x's dtype: the guided one (``part`` "guided", at
    GUIDANCE) or one half of the guided call ("cond", "uncond"); records every t it is given."""

    def __init__(self, call: GuidedCall, part: str = "guided"):
        self.call, self.part = call, part
        self.timesteps: list[float] = []

    def __call__(self, x_in: torch.Tensor, t: Any, **_: Any) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)[:1]
        self.timesteps.append(float(t))
        uncond, cond = self.call(x_in, t)
        output = {"guided": lambda: uncond + GUIDANCE * (cond - uncond), "cond": lambda: cond,
                  "uncond": lambda: uncond}[self.part]()
        return output.to(x_in.dtype)


def tiny_model(pipeline) -> Model:
    """The pair's network on ``pipeline``: its scheduler config (betas, prediction_type) and its guided UNet."""
    cond, uncond = pipeline.encode_prompt(PROMPT, NEGATIVE)
    conditioning = Conditioning.concat([uncond, cond])

    def guided() -> tuple[TinyUNet, TinyUNet]:
        call = GuidedCall(pipeline, conditioning)
        return TinyUNet(call, "cond"), TinyUNet(call, "uncond")

    return Model(dict(pipeline.scheduler.config), lambda: TinyUNet(GuidedCall(pipeline, conditioning)), guided)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Callable[[str], Model]:
    """variant -> its Model, each tiny pipeline built on first use."""
    root, built = tmp_path_factory.mktemp("tiny-sd-tool-pairs"), {}

    def model(variant: str) -> Model:
        if variant not in built:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                build_tiny_sd(root / variant, variant)
                built[variant] = tiny_model(load_pipeline(str(root / variant)))
        return built[variant]

    return model


def compare_pair(tool: str, name: str, schedule: str, model: Model) -> tuple[PairResult, bool]:
    """Ours against the tool's pipeline for one pair on ``model`` (the tools' training arithmetic), and whether the
    calls must agree (see ROUNDING_SENSITIVE)."""
    ours, our_timesteps = run_registry(tool, name, schedule, STEPS, model)
    pipeline = a1111_pipeline if tool == "a1111" else comfy_pipeline
    run = pipeline(name, schedule, STEPS, model=model)
    adaptive, bound, spread, calls_agree = name in ADAPTIVE[tool], TOLERANCE, None, True
    if (tool, name) in ROUNDING_SENSITIVE:
        float64 = pipeline(name, schedule, STEPS, model=model, dtype=torch.float64)
        spread = relative_error(run.sample, float64.sample)
        bound = max(bound, SPREADS * spread)
        calls_agree = PairResult(spread, run.timesteps, float64.timesteps, bound, adaptive=adaptive).same_calls
    result = PairResult(relative_error(ours, run.sample), our_timesteps, run.timesteps, bound, spread, adaptive)
    return result, calls_agree


COMFY_NAMES = [name for name, sampler in COMFY_SAMPLERS.items() if sampler is not None and not name.endswith("_gpu")]
PAIRS = (
    [("a1111", name, "Automatic") for name in A1111_SAMPLERS]
    + [("a1111", "Euler a", "Karras"), ("a1111", "DPM++ 2M", "Align Your Steps"), ("a1111", "Heun", "Karras")]
    + [("comfy", name, "simple") for name in COMFY_NAMES]
    + [("comfy", "dpmpp_2m", "beta"), ("comfy", "euler_ancestral", "kl_optimal"), ("comfy", "uni_pc", "beta")]
)




def _case(tool: str, name: str, schedule: str, variant: str):
    reason = UNSUPPORTED.get((tool, name, variant))
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(tool, name, schedule, variant, marks=marks, id=f"{tool}:{name}|{schedule}-{variant}")


CASES = [_case(tool, name, schedule, variant) for tool, name, schedule in PAIRS for variant in VARIANTS]


@pytest.mark.parametrize(("tool", "name", "schedule", "variant"), CASES)
def test_pair_matches_its_tool_on_a_tiny_sd_model(models, tool, name, schedule, variant):
    result, calls_agree = compare_pair(tool, name, schedule, models(variant))
    if calls_agree:
        assert len(result.ours) == len(result.tool), "a different number of model calls"
        assert result.same_calls, "the UNet is called at other timesteps"
    assert result.error < result.bound, result.error


def test_a1111_lcm_on_a_v_model_is_ours_reading_v_as_eps(models):
    """The unsupported pair's cause: A1111's LCM equals ours configured to read the v model's output as eps."""
    model = models("sd2v")
    as_eps = Model({**model.config, "prediction_type": "epsilon"}, model.plain, model.guided)
    ours, timesteps = run_registry("a1111", "LCM", "Automatic", STEPS, as_eps)
    run = a1111_pipeline("LCM", "Automatic", STEPS, model=model)
    assert timesteps == run.timesteps
    assert relative_error(ours, run.sample) < TOLERANCE
