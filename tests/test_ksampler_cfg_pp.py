"""The CFG++ samplers equal ComfyUI's (transcribed below as plain loops) under a guided model, and reduce to
k-diffusion's plain samplers when there is no guidance (uncond_output = model_output).

The guided model: a conditional and an unconditional two-Gaussian denoiser whose data means differ, combined as
ComfyUI's cfg_function does, D = D_u + LAMBDA (D_c - D_u). Ours gets the guided prediction as model_output and
the unconditional one as uncond_output; the references get the guided D from the model and D_u from the hook
ComfyUI installs (``sampler_post_cfg_function``), here an attribute the guided denoiser sets on every call.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from kdiffusion_oracle import generator_noise_sampler, sampling
from ksampler_harness import SD_CONFIG, SHAPE, STD, initial_noise, oracle_denoiser, relative_error

from schedcmp.core.errors import ConfigError
from schedcmp.core.schedulers.k_sampler import KSampler
from schedcmp.core.schedulers.ksamplers.cfg_pp import (
    DPMPP2MCFGPPSampler,
    DPMPP2SAncestralCFGPPSampler,
    EulerAncestralCFGPPSampler,
    EulerCFGPPSampler,
    GradientEstimationCFGPPSampler,
    ResMultistepAncestralCFGPPSampler,
    ResMultistepCFGPPSampler,
)
from schedcmp.core.schedulers.schedule_types import t_to_sigma

LAMBDA = 0.8  # CFG++'s guidance scale, ComfyUI's cfg for these samplers
UNCOND_MEANS, COND_MEANS = (-0.6, 0.6), (-0.35, 0.8)


# --- the guided model ------------------------------------------------------------------------------------------


def _mixture_denoised(x: torch.Tensor, sigma: float, means: tuple[float, float]) -> torch.Tensor:
    """E[x0 | x] for data 1/2 N(means[0], STD^2) + 1/2 N(means[1], STD^2) (float64 inside)."""
    x64 = x.double()
    var = STD**2 + sigma**2
    weights = torch.softmax(torch.stack([-((x64 - m) ** 2) / (2 * var) for m in means]), dim=0)
    posterior = torch.stack([(m * sigma**2 + x64 * STD**2) / var for m in means])
    return (weights * posterior).sum(0).to(x.dtype)


def _unet(scheduler: KSampler, means: tuple[float, float]):
    """A UNet stand-in of one conditioning: (c_in x, t) -> eps (or v) of the mixture with ``means``."""
    v_prediction = scheduler.config.prediction_type == "v_prediction"

    def unet(x_in: torch.Tensor, t: torch.Tensor, **_: Any) -> torch.Tensor:
        sigma = float(t_to_sigma(torch.as_tensor(t, dtype=torch.float32).reshape(-1)[:1], scheduler.log_sigmas))
        x = x_in * (sigma**2 + 1) ** 0.5
        denoised = _mixture_denoised(x, sigma, means)
        eps = (x - denoised) / sigma
        alpha = (sigma**2 + 1) ** -0.5
        return alpha * eps - sigma * alpha * denoised if v_prediction else eps

    return unet


class GuidedDenoiser:
    """ComfyUI's CFG denoiser for the references: returns D_u + LAMBDA (D_c - D_u) and, like the CFG++ samplers'
    post-CFG hook, keeps D_u in ``uncond_denoised``; counts its calls."""

    def __init__(self, scheduler: KSampler):
        self.cond = oracle_denoiser(scheduler, _unet(scheduler, COND_MEANS))
        self.uncond = oracle_denoiser(scheduler, _unet(scheduler, UNCOND_MEANS))
        self.uncond_denoised: torch.Tensor | None = None
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.uncond_denoised = self.uncond(x, sigma)
        return self.uncond_denoised + LAMBDA * (self.cond(x, sigma) - self.uncond_denoised)


# --- ComfyUI's CFG++ samplers, DDPM (VE) branch: alpha = 1, lambda(sigma) = -log sigma --------------------------


def _to_d(x, sigma, denoised):
    return (x - denoised) / sigma


def _ancestral_step(sigma_from, sigma_to, eta):
    if not eta:
        return sigma_to, torch.zeros(())
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


def reference_euler_ancestral_cfg_pp(model, x, sigmas, noise_sampler, eta=1.0, s_noise=1.0):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]))
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            d = _to_d(x, sigmas[i], model.uncond_denoised)
            sigma_down, sigma_up = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
            x = denoised + sigma_down * d
            if eta > 0 and s_noise > 0:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def reference_euler_cfg_pp(model, x, sigmas, noise_sampler):
    return reference_euler_ancestral_cfg_pp(model, x, sigmas, noise_sampler, eta=0.0, s_noise=0.0)


def reference_dpmpp_2s_ancestral_cfg_pp(model, x, sigmas, noise_sampler, eta=1.0, s_noise=1.0):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        uncond = model.uncond_denoised
        sigma_down, sigma_up = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if sigma_down == 0:
            x = denoised + _to_d(x, sigmas[i], uncond) * sigma_down
        else:
            t, t_next = -sigmas[i].log(), -sigma_down.log()
            h = t_next - t
            s = t + h / 2
            x_2 = ((-s).exp() / (-t).exp()) * (x + (denoised - uncond)) - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, (-s).exp() * s_in)
            x = ((-t_next).exp() / (-t).exp()) * (x + (denoised - uncond)) - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def reference_dpmpp_2m_cfg_pp(model, x, sigmas, noise_sampler):
    old_uncond = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]))
        uncond = model.uncond_denoised
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old_uncond is None or sigmas[i + 1] == 0:
            mix = -torch.exp(-h) * uncond
        else:
            r = (t + sigmas[i - 1].log()) / h
            mix = -torch.exp(-h) * uncond - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + torch.exp(-h) * x
        old_uncond = uncond
    return x


def reference_res_multistep_ancestral_cfg_pp(model, x, sigmas, noise_sampler, eta=1.0, s_noise=1.0):
    def phi1(t):
        return torch.expm1(t) / t

    def phi2(t):
        return (phi1(t) - 1.0) / t

    old_uncond = old_sigma_down = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]))
        uncond = model.uncond_denoised
        sigma_down, sigma_up = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if sigma_down == 0 or old_uncond is None:
            x = denoised + _to_d(x, sigmas[i], uncond) * sigma_down
        else:
            t, t_old, t_next, t_prev = -sigmas[i].log(), -old_sigma_down.log(), -sigma_down.log(), -sigmas[i - 1].log()
            h = t_next - t
            c2 = (t_prev - t_old) / h
            b1 = torch.nan_to_num(phi1(-h) - phi2(-h) / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2(-h) / c2, nan=0.0)
            x = x + (denoised - uncond)
            x = (-h).exp() * x + h * (b1 * uncond + b2 * old_uncond)
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_uncond, old_sigma_down = uncond, sigma_down
    return x


def reference_res_multistep_cfg_pp(model, x, sigmas, noise_sampler):
    return reference_res_multistep_ancestral_cfg_pp(model, x, sigmas, noise_sampler, eta=0.0)


def reference_gradient_estimation_cfg_pp(model, x, sigmas, noise_sampler, ge_gamma=2.0):
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]))
        d = _to_d(x, sigmas[i], model.uncond_denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1]
            if i >= 1:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


CASES = [  # (ours, ComfyUI reference, stochastic)
    (EulerCFGPPSampler, reference_euler_cfg_pp, False),
    (EulerAncestralCFGPPSampler, reference_euler_ancestral_cfg_pp, True),
    (DPMPP2SAncestralCFGPPSampler, reference_dpmpp_2s_ancestral_cfg_pp, True),
    (DPMPP2MCFGPPSampler, reference_dpmpp_2m_cfg_pp, False),
    (ResMultistepCFGPPSampler, reference_res_multistep_cfg_pp, False),
    (ResMultistepAncestralCFGPPSampler, reference_res_multistep_ancestral_cfg_pp, True),
    (GradientEstimationCFGPPSampler, reference_gradient_estimation_cfg_pp, False),
]
CASE_IDS = [case[0].__name__ for case in CASES]


# --- the runs --------------------------------------------------------------------------------------------------


def _run_ours(scheduler: KSampler, x: torch.Tensor, generator: torch.Generator, guided: bool = True) -> torch.Tensor:
    """diffusers' loop with CFG outside the scheduler: both predictions at every call, the guided one and the
    unconditional one into ``step`` (or, unguided, the conditional one as both)."""
    cond, uncond = _unet(scheduler, COND_MEANS), _unet(scheduler, UNCOND_MEANS)
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        if guided:
            uncond_eps = uncond(x_in, t)
            output = uncond_eps + LAMBDA * (cond(x_in, t) - uncond_eps)
        else:
            output = uncond_eps = cond(x_in, t)
        x = scheduler.step(output, t, x, generator=generator, uncond_output=uncond_eps).prev_sample
    return x


def _compare(sampler_cls, reference, schedule: str, timestep_type: str = "continuous",
             prediction_type: str = "epsilon") -> tuple[float, int, int]:
    """(relative error, our model calls, the reference's model calls) on 10 steps with the same noise."""
    scheduler = sampler_cls.from_config(SD_CONFIG, schedule=schedule, timestep_type=timestep_type,
                                        prediction_type=prediction_type)
    scheduler.set_timesteps(10)
    x, generator = initial_noise(scheduler)
    oracle_generator = torch.Generator().manual_seed(0)
    torch.randn(SHAPE, generator=oracle_generator)  # the initial latents' draw
    ours = _run_ours(scheduler, x.clone(), generator)
    model = GuidedDenoiser(scheduler)
    expected = reference(model, x.clone(), scheduler.sigmas, generator_noise_sampler(oracle_generator, x))
    return relative_error(ours, expected), len(scheduler.timesteps), model.calls


@pytest.mark.parametrize("timestep_type", ["continuous", "discrete"])
@pytest.mark.parametrize("schedule", ["normal", "karras", "exponential", "sgm_uniform"])
@pytest.mark.parametrize(("sampler_cls", "reference", "stochastic"), CASES, ids=CASE_IDS)
def test_cfg_pp_sampler_matches_comfyui_under_guidance(sampler_cls, reference, stochastic, schedule, timestep_type):
    error, calls, reference_calls = _compare(sampler_cls, reference, schedule, timestep_type)
    assert calls == reference_calls
    assert error < 1e-5


@pytest.mark.parametrize(("sampler_cls", "reference", "stochastic"), CASES, ids=CASE_IDS)
def test_cfg_pp_sampler_matches_comfyui_on_v_prediction(sampler_cls, reference, stochastic):
    error, calls, reference_calls = _compare(sampler_cls, reference, "simple", "discrete", "v_prediction")
    assert calls == reference_calls
    assert error < 1e-5


@pytest.mark.parametrize(("sampler_cls", "reference", "stochastic"), CASES, ids=CASE_IDS)
def test_cfg_pp_sampler_facts(sampler_cls, reference, stochastic):
    scheduler = sampler_cls.from_config(SD_CONFIG, schedule="karras")
    scheduler.set_timesteps(6)
    assert sampler_cls.needs_uncond
    assert scheduler.is_stochastic == stochastic
    assert len(scheduler.timesteps) == (11 if sampler_cls is DPMPP2SAncestralCFGPPSampler else 6)
    x = torch.zeros(SHAPE)
    with pytest.raises(ConfigError, match="uncond_output"):
        scheduler.step(x, scheduler.timesteps[0], x)


def test_without_guidance_the_cfg_pp_samplers_are_k_diffusions_plain_ones():
    k = sampling()
    plain = [  # (ours, k-diffusion's sampler without CFG++, stochastic)
        (EulerCFGPPSampler, k.sample_euler, False),
        (EulerAncestralCFGPPSampler, k.sample_euler_ancestral, True),
        (DPMPP2SAncestralCFGPPSampler, k.sample_dpmpp_2s_ancestral, True),
        (DPMPP2MCFGPPSampler, k.sample_dpmpp_2m, False),
    ]
    for sampler_cls, k_sampler, stochastic in plain:
        scheduler = sampler_cls.from_config(SD_CONFIG, schedule="karras")
        scheduler.set_timesteps(10)
        x, generator = initial_noise(scheduler)
        ours = _run_ours(scheduler, x.clone(), generator, guided=False)
        oracle_generator = torch.Generator().manual_seed(0)
        torch.randn(SHAPE, generator=oracle_generator)
        noise = {"noise_sampler": generator_noise_sampler(oracle_generator, x)} if stochastic else {}
        denoiser = oracle_denoiser(scheduler, _unet(scheduler, COND_MEANS))
        expected = k_sampler(denoiser, x.clone(), scheduler.sigmas, disable=True, **noise)
        assert relative_error(ours, expected) < 1e-5, sampler_cls.__name__
