"""A1111's and ComfyUI's k-diffusion samplers on a tiny SD 1.x (eps) and SD 2.x (v) model: the engine's latents
equal k-diffusion 0.1.1's sampler driven by the same UNet with classifier-free guidance, the same initial noise and
the same noise draws (fresh draws from the run's generator, or the same Brownian path)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from kdiffusion_oracle import external, generator_noise_sampler, sampling
from test_ksampler_stochastic import on_the_callers_times
from tiny_sd import build_tiny_sd

from schedcmp.core.conditioning import Conditioning
from schedcmp.core.load import load_pipeline
from schedcmp.core.schedulers.dpmsolver_sde import BrownianNoiseSampler
from schedcmp.engine import Engine
from schedcmp.plan import build_plan

PROMPT, NEGATIVE, GUIDANCE, SEED, STEPS = "a photograph of an astronaut riding a horse", "blurry", 7.5, 8, 6

# name -> k-diffusion sampler function and extra arguments (noise is added by the test where it takes some)
SAMPLERS = {
    "Euler": ("sample_euler", {}),
    "Euler a": ("sample_euler_ancestral", {}),
    "Heun": ("sample_heun", {}),
    "DPM2": ("sample_dpm_2", {}),
    "DPM2 a": ("sample_dpm_2_ancestral", {}),
    "LMS": ("sample_lms", {}),
    "DPM++ 2S a": ("sample_dpmpp_2s_ancestral", {}),
    "DPM++ 2M": ("sample_dpmpp_2m", {}),
    "DPM++ SDE": ("sample_dpmpp_sde", {}),
    "DPM++ 2M SDE": ("sample_dpmpp_2m_sde", {}),
    "DPM++ 2M SDE Heun": ("sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    "DPM++ 3M SDE": ("sample_dpmpp_3m_sde", {}),
    "comfy:dpmpp_2m": ("sample_dpmpp_2m", {}),
    "comfy:euler_ancestral": ("sample_euler_ancestral", {}),
    "comfy:dpmpp_2m_sde_gpu": ("sample_dpmpp_2m_sde", {}),
}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-sd-ksamplers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for variant in ("sd1", "sd2v"):
            build_tiny_sd(root / variant, variant)
        return {variant: load_pipeline(str(root / variant)) for variant in ("sd1", "sd2v")}


def _engine_run(pipeline, name):
    plan = build_plan(None, {"prompt": PROMPT, "negative_prompt": NEGATIVE, "schedulers": name, "steps": str(STEPS),
                             "seed": SEED, "model": pipeline.name, "size": "32x32", "guidance": GUIDANCE})
    (result,) = Engine(pipeline, plan).run().results
    assert result.status == "ok", result.error
    return result


def _guided_unet(pipeline):
    """(c_in x, t) -> the guided prediction of our UNet, as the engine computes it."""
    cond, uncond = pipeline.encode_prompt(PROMPT, NEGATIVE)
    pair = Conditioning.concat([uncond, cond])

    def unet(x_in, t):
        output = pipeline.denoise(torch.cat([x_in] * 2), t.float().reshape(1).expand(2), pair)
        output_uncond, output_cond = output.chunk(2)
        return output_uncond + GUIDANCE * (output_cond - output_uncond)

    return unet


def _oracle(pipeline, result, function, options):
    scheduler = result.scheduler
    wrapper = (external().DiscreteVDDPMDenoiser if scheduler.config.prediction_type == "v_prediction"
               else external().DiscreteEpsDDPMDenoiser)
    model = wrapper(_guided_unet(pipeline), scheduler.alphas_cumprod,
                    quantize=scheduler.config.timestep_type == "discrete")
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(result.latents.shape, generator=generator) * scheduler.init_noise_sigma
    sigmas = scheduler.sigmas
    kwargs = dict(options)
    if scheduler.brownian:
        positive = [s for s in scheduler.grid if s > 0]
        path = BrownianNoiseSampler(x, min(positive), max(positive), generator)
        kwargs["noise_sampler"] = on_the_callers_times(path, sorted({*positive, *scheduler.call_sigmas(scheduler.grid)}))
    elif scheduler.is_stochastic:
        kwargs["noise_sampler"] = generator_noise_sampler(generator, x)
    with torch.inference_mode():
        return getattr(sampling(), function)(model, x, sigmas, disable=True, **kwargs)


@pytest.mark.parametrize("variant", ["sd1", "sd2v"])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_engine_equals_k_diffusion_on_a_tiny_sd_model(pipelines, variant, name) -> None:
    pipeline = pipelines[variant]
    result = _engine_run(pipeline, name)
    function, options = SAMPLERS[name]
    reference = _oracle(pipeline, result, function, options)
    error = float((result.latents - reference).abs().max() / reference.std())
    assert error < 1e-4, error
    assert math.isfinite(error)
