"""The tool samplers inside the engine: one lane each or batched together, same latents; honest call counts;
CFG++ gets the unconditional prediction; DPM adaptive's calls are counted as they happen; custom sigmas run."""

from __future__ import annotations

import pytest
import torch

from schedcmp.core import make_scheduler
from schedcmp.core.builtin import ShapesPipeline
from schedcmp.core.schedulers import A1111_SAMPLERS, COMFY_SAMPLERS
from schedcmp.engine import Engine
from schedcmp.plan import build_plan

PIPELINE = ShapesPipeline()
# One name per sampler class (and per ComfyUI variant option), A1111's and ComfyUI's.
NAMES = sorted({p.name: None for p in A1111_SAMPLERS} | {f"comfy:{p.name}": None for p in COMFY_SAMPLERS
                                                         if not p.name.endswith("_gpu")})


def _report(names, mode, steps="4", **overrides):
    plan = build_plan(None, {"prompt": "a red circle", "schedulers": ",".join(names), "steps": steps, "mode": mode,
                             "reference": "none", "guidance": 3.0, **overrides})
    return Engine(PIPELINE, plan).run()


@pytest.fixture(scope="module")
def sequential():
    return {r.spec.scheduler: r for r in _report(NAMES, "sequential").results}


@pytest.fixture(scope="module")
def batched():
    return {r.spec.scheduler: r for r in _report(NAMES, "batched", max_batch=64).results}


@pytest.mark.parametrize("name", NAMES)
def test_a_tool_sampler_runs_alone_and_batched_to_the_same_latents(name, sequential, batched) -> None:
    alone, together = sequential[name], batched[name]
    assert (alone.status, together.status) == ("ok", "ok"), (alone.error, together.error)
    torch.testing.assert_close(together.latents, alone.latents, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_model_calls_are_the_schedules_calls(name, sequential) -> None:
    result = sequential[name]
    assert result.model_calls == len(result.scheduler.timesteps)


def test_cfg_pp_gets_the_unconditional_prediction() -> None:
    plan = build_plan(None, {"prompt": "a red circle", "schedulers": "comfy:euler_cfg_pp", "steps": "4",
                             "reference": "none", "guidance": 0.8})
    engine_latents = Engine(PIPELINE, plan).run().results[0].latents
    scheduler = make_scheduler("comfy:euler_cfg_pp", config=PIPELINE.scheduler.config)
    scheduler.set_timesteps(4)
    cond, uncond = PIPELINE.encode_prompt("a red circle", "")
    from schedcmp.core.conditioning import Conditioning

    pair = Conditioning.concat([uncond, cond])
    generator = torch.Generator().manual_seed(8)
    latents = torch.randn((1, *PIPELINE.latent_shape(*PIPELINE.default_size)), generator=generator)
    latents = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        scaled = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        output_uncond, output_cond = PIPELINE.denoise(scaled, t.expand(2), pair).chunk(2)
        guided = output_uncond + 0.8 * (output_cond - output_uncond)
        latents = scheduler.step(guided, t, latents, uncond_output=output_uncond).prev_sample
    torch.testing.assert_close(engine_latents, latents)


def test_dpm_adaptive_counts_the_calls_it_decides_to_make() -> None:
    result = _report(["DPM adaptive"], "sequential").results[0]
    assert result.status == "ok"
    assert result.model_calls == len(result.scheduler.timesteps) > 4


def test_custom_sigmas_run_through_the_engine() -> None:
    plan = build_plan(None, {"prompt": "a red circle", "reference": "none",
                             "runs": [{"scheduler": "Euler", "sigmas": [14.6, 3.0, 0.7, 0.1, 0.0]}]})
    result = Engine(PIPELINE, plan).run().results[0]
    assert (result.status, result.model_calls) == ("ok", 4)
    torch.testing.assert_close(result.scheduler.sigmas, torch.tensor([14.6, 3.0, 0.7, 0.1, 0.0]))


def test_align_your_steps_takes_the_models_table() -> None:
    plan = build_plan(None, {"prompt": "a red circle", "reference": "none", "schedulers": "Euler",
                             "schedules": "Align Your Steps", "steps": "11"})
    result = Engine(PIPELINE, plan).run().results[0]
    assert result.scheduler.config.ays_model == "sd15"
    assert float(result.scheduler.sigmas[1]) == pytest.approx(6.475)


@pytest.mark.parametrize(("name", "schedule"), [("DPM++ 2M", "Karras"), ("Euler a", None), ("comfy:dpmpp_sde", "beta"),
                                                ("DPM adaptive", None)])
def test_a_made_scheduler_drops_into_the_diffusers_call(name, schedule) -> None:
    pipeline = ShapesPipeline()
    pipeline.scheduler = make_scheduler(name, schedule=schedule, config=pipeline.scheduler.config)
    called = pipeline("a red circle", num_inference_steps=6, generator=torch.Generator().manual_seed(4),
                      output_type="pt").images
    overrides = {"schedules": schedule} if schedule else {}
    plan = build_plan(None, {"prompt": "a red circle", "schedulers": name, "steps": "6", "seed": 4,
                             "reference": "none", **overrides})
    (result,) = Engine(ShapesPipeline(), plan).run().results
    torch.testing.assert_close(called, (result.latents / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=1e-5)
    assert pipeline.num_timesteps == result.model_calls


def test_a_timestep_sampler_given_a_schedule_says_it_ignores_it() -> None:
    plan = build_plan(None, {"prompt": "a red circle", "schedulers": "DDIM", "schedules": "Karras", "steps": "5",
                             "reference": "none"})
    with pytest.warns(UserWarning, match=r"^run 1 \(DDIM Karras\): DDIM builds its own grid and ignores the schedule "
                                         r"type 'Karras', as in A1111$"):
        Engine(PIPELINE, plan)
