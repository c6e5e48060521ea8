"""A1111 1.10's own samplers equal plain transcriptions of A1111's loops on the same model and the same noise.

The references below are A1111's code rewritten as plain functions, in A1111's own formulation:
- DDIM, DDIM CFG++ and PLMS (``modules/sd_samplers_timesteps_impl.py``) in the variance-preserving form, with
  the timesteps of ``CompVisSampler.get_timesteps`` (``modules/sd_samplers_timesteps.py``) and A1111's eps (or
  v -> eps) wrapper, starting from unscaled noise;
- Restart (``modules/sd_samplers_extra.py``) on k-diffusion's denoiser wrapper and ``get_sigmas_karras``;
- LCM (``modules/sd_samplers_lcm.py``): A1111's ``LCMCompVisDenoiser`` on k-diffusion's DiscreteEpsDDPMDenoiser.
Every reference counts its model calls; ``len(scheduler.timesteps)`` must equal that count.
"""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from kdiffusion_oracle import external, sampling
from ksampler_harness import SD_CONFIG, SHAPE, make_eps_model, mixture_denoised, oracle_denoiser, relative_error

from schedcmp.core.errors import ConfigError
from schedcmp.core.schedulers.ksamplers.a1111_ddim import A1111DDIMSampler
from schedcmp.core.schedulers.ksamplers.a1111_ddim_cfgpp import A1111DDIMCFGPPSampler
from schedcmp.core.schedulers.ksamplers.a1111_lcm import A1111LCMSampler
from schedcmp.core.schedulers.ksamplers.a1111_plms import A1111PLMSSampler
from schedcmp.core.schedulers.ksamplers.restart import RestartSampler
from schedcmp.core.schedulers.schedule_types import t_to_sigma

STEPS = [7, 10, 20]
CFG_SCALE = 5.0  # A1111's CFG scale; DDIM CFG++ guides with CFG_SCALE / 12.5


# --- the model, as A1111's wrappers see it -------------------------------------------------------------------


class Counted:
    """A model that counts its calls."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


def uncond_eps_model(scheduler):
    """A second (unconditional) eps model: the mixture's posterior mean pulled towards 0 by a t-dependent amount."""
    log_sigmas = scheduler.log_sigmas

    def eps_model(x_in, t, **_):
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)[:1]
        sigma = float(t_to_sigma(t, log_sigmas))
        x = x_in * (sigma**2 + 1) ** 0.5
        denoised = mixture_denoised(x, sigma) * (0.8 + 0.1 * math.tanh(sigma))
        return (x - denoised) / sigma

    return eps_model


class TimestepsDenoiser:
    """A1111's CFGDenoiserTimesteps around CompVisTimestepsDenoiser / CompVisTimestepsVDenoiser: eps at (x_vp, t);
    with an unconditional model, CFG with the scale times ``cond_scale_miltiplier`` and ``last_noise_uncond``."""

    def __init__(self, model, alphas_cumprod, v_prediction=False, uncond=None):
        self.model, self.uncond, self.alphas_cumprod, self.v_prediction = model, uncond, alphas_cumprod, v_prediction
        self.cond_scale_miltiplier, self.last_noise_uncond, self.calls = 1.0, None, 0

    def _eps(self, model, x, t):
        output = model(x, t)
        if not self.v_prediction:
            return output
        index = t.to(torch.int)
        return (torch.sqrt(self.alphas_cumprod)[index, None, None, None] * output
                + torch.sqrt(1 - self.alphas_cumprod)[index, None, None, None] * x)

    def __call__(self, x, t):
        self.calls += 1
        cond = self._eps(self.model, x, t)
        if self.uncond is None:
            return cond
        uncond = self._eps(self.uncond, x, t)
        self.last_noise_uncond = uncond
        return uncond + (cond - uncond) * (CFG_SCALE * self.cond_scale_miltiplier)


# --- references transcribed from A1111 1.10 ------------------------------------------------------------------


def a1111_timesteps(steps, discard=False):
    """CompVisSampler.get_timesteps."""
    steps += 1 if discard else 0
    return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)


def _per_step(values, index, like):
    """``values[index].item() * s_x``: a per-step constant in x's dtype."""
    return values[index].item() * like.new_ones((like.shape[0], 1, 1, 1))


def reference_ddim(model, x, timesteps, alphas_cumprod, generator, eta=0.0, cfgpp=False):
    """A1111's ``ddim`` / ``ddim_cfgpp``."""
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)
    sigmas = eta * torch.sqrt((1 - alphas_prev) / (1 - alphas.double()) * (1 - alphas.double() / alphas_prev))
    if cfgpp:
        model.cond_scale_miltiplier = 1 / 12.5
    s_in = x.new_ones((x.shape[0],))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in)
        direction = model.last_noise_uncond if cfgpp else e_t
        a_t, a_prev = _per_step(alphas, index, x), _per_step(alphas_prev, index, x)
        sigma_t, sqrt_one_minus_at = _per_step(sigmas, index, x), _per_step(sqrt_one_minus_alphas, index, x)
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * direction
        noise = sigma_t * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = a_prev.sqrt() * pred_x0 + dir_xt + noise
    return x


def reference_plms(model, x, timesteps, alphas_cumprod):
    """A1111's ``plms``."""
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)
    s_in = x.new_ones([x.shape[0]])
    old_eps = []

    def get_x_prev_and_pred_x0(e_t, index):
        a_t, a_prev = _per_step(alphas, index, x), _per_step(alphas_prev, index, x)
        sqrt_one_minus_at = _per_step(sqrt_one_minus_alphas, index, x)
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        return a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * e_t

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        ts = timesteps[index].item() * s_in
        t_next = timesteps[max(index - 1, 0)].item() * s_in
        e_t = model(x, ts)
        if len(old_eps) == 0:
            x_prev = get_x_prev_and_pred_x0(e_t, index)
            e_t_next = model(x_prev, t_next)
            e_t_prime = (e_t + e_t_next) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x_prev = get_x_prev_and_pred_x0(e_t_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        x = x_prev
    return x


def reference_restart(model, x, sigmas, generator, s_noise=1.0):
    """A1111's ``restart_sampler`` with its automatic restart list."""
    k = sampling()
    s_in = x.new_ones([x.shape[0]])

    def heun_step(x, old_sigma, new_sigma):
        denoised = model(x, old_sigma * s_in)
        d = k.to_d(x, old_sigma, denoised)
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            return x + d * dt
        x_2 = x + d * dt
        d_2 = k.to_d(x_2, new_sigma, model(x_2, new_sigma * s_in))
        return x + (d + d_2) / 2 * dt

    steps = sigmas.shape[0] - 1
    if steps >= 20:
        restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = k.get_sigmas_karras(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item())
        restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
    else:
        restart_list = {}
    restart_list = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart_list.items()}
    step_list = []
    for i in range(len(sigmas) - 1):
        step_list.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in restart_list:
            restart_steps, restart_times, restart_max = restart_list[i + 1]
            min_idx, max_idx = i + 1, int(torch.argmin(abs(sigmas - restart_max), dim=0))
            if max_idx < min_idx:
                sigma_restart = k.get_sigmas_karras(restart_steps, sigmas[min_idx].item(), sigmas[max_idx].item())[:-1]
                while restart_times > 0:
                    restart_times -= 1
                    step_list.extend(pairwise(sigma_restart))
    last_sigma = None
    for old_sigma, new_sigma in step_list:
        if last_sigma is None:
            last_sigma = old_sigma
        elif last_sigma < old_sigma:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x = x + noise * s_noise * (old_sigma**2 - last_sigma**2) ** 0.5
        x = heun_step(x, old_sigma, new_sigma)
        last_sigma = new_sigma
    return x


def lcm_denoiser(eps_model, alphas_cumprod):
    """A1111's ``LCMCompVisDenoiser`` around ``eps_model`` (the UNet's ``apply_model``)."""
    k_external, k_sampling = external(), sampling()
    k_utils = k_sampling.utils

    class LCMCompVisDenoiser(k_external.DiscreteEpsDDPMDenoiser):
        def __init__(self):
            timesteps, original_timesteps = 1000, 50
            self.skip_steps = timesteps // original_timesteps
            alphas_cumprod_valid = torch.zeros((original_timesteps), dtype=torch.float32)
            for x in range(original_timesteps):
                alphas_cumprod_valid[original_timesteps - 1 - x] = alphas_cumprod[timesteps - 1 - x * self.skip_steps]
            super().__init__(eps_model, alphas_cumprod_valid, quantize=None)

        def get_sigmas(self, n=None):
            start, end = self.sigma_to_t(self.sigma_max), self.sigma_to_t(self.sigma_min)
            return k_sampling.append_zero(self.t_to_sigma(torch.linspace(start, end, n)))

        def sigma_to_t(self, sigma, quantize=None):
            dists = sigma.log() - self.log_sigmas[:, None]
            return dists.abs().argmin(dim=0).view(sigma.shape) * self.skip_steps + (self.skip_steps - 1)

        def t_to_sigma(self, timestep):
            t = torch.clamp(((timestep - (self.skip_steps - 1)) / self.skip_steps).float(), min=0,
                            max=(len(self.sigmas) - 1))
            return super().t_to_sigma(t)

        def get_eps(self, *args, **kwargs):
            return self.inner_model(*args, **kwargs)

        def forward(self, input, sigma, **kwargs):
            c_out, c_in = [k_utils.append_dims(x, input.ndim) for x in self.get_scalings(sigma)]
            eps = self.get_eps(input * c_in, self.sigma_to_t(sigma), **kwargs)
            output = input + eps * c_out
            scaled_timestep = k_utils.append_dims(self.sigma_to_t(sigma), output.ndim) * 10.0
            c_skip = 0.5**2 / (scaled_timestep**2 + 0.5**2)
            c_out = scaled_timestep / (scaled_timestep**2 + 0.5**2) ** 0.5
            return c_out * output + c_skip * input

    return LCMCompVisDenoiser()


def reference_lcm(model, x, sigmas, generator):
    """A1111's ``sample_lcm``."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] > 0:
            x += sigmas[i + 1] * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x


# --- our side ------------------------------------------------------------------------------------------------


def _start(scheduler, seed=0):
    """Our initial latents (z * init_noise_sigma, then the generator for later draws) and the reference's
    generator after the same draw of z, and z itself (A1111's timestep samplers start from it unscaled)."""
    ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    z = torch.randn(SHAPE, generator=ours)
    torch.randn(SHAPE, generator=theirs)
    return z * scheduler.init_noise_sigma, ours, z, theirs


def _run(scheduler, model, x, generator, uncond=None, guided=None):
    """diffusers' loop; a CFG++ sampler also gets the unconditional output (``guided`` combines the two)."""
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        if uncond is None:
            x = scheduler.step(model(x_in, t), t, x, generator=generator).prev_sample
        else:
            output, uncond_output = guided(model(x_in, t), uncond(x_in, t))
            x = scheduler.step(output, t, x, generator=generator, uncond_output=uncond_output).prev_sample
    return x


def _timestep_pair(cls, steps, **config):
    scheduler = cls.from_config(SD_CONFIG, **config)
    scheduler.set_timesteps(steps)
    v_prediction = scheduler.config.prediction_type == "v_prediction"
    model = make_eps_model(scheduler, scheduler.config.prediction_type)
    reference_model = TimestepsDenoiser(model, scheduler.alphas_cumprod, v_prediction)
    return scheduler, model, reference_model


# --- the timestep samplers' grid -----------------------------------------------------------------------------


@pytest.mark.parametrize("discard", [False, True])
@pytest.mark.parametrize("steps", STEPS)
def test_timestep_samplers_call_the_unet_at_a1111s_integer_timesteps(steps, discard):
    scheduler = A1111DDIMSampler.from_config(SD_CONFIG, schedule="karras", discard_penultimate_sigma=discard)
    scheduler.set_timesteps(steps)
    timesteps = a1111_timesteps(steps, discard)
    assert scheduler.timesteps.tolist() == timesteps[1:].flip(0).float().tolist()  # t_0 = 1 is only the end
    assert scheduler.sigmas.tolist() == scheduler.train_sigmas[timesteps.flip(0)].tolist()
    x, _, z, _ = _start(scheduler)
    assert relative_error(scheduler.scale_model_input(x, scheduler.timesteps[0]), z) < 1e-6  # A1111 starts at z


# --- DDIM, DDIM CFG++, PLMS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", STEPS)
def test_ddim_matches_a1111(steps):
    scheduler, model, reference_model = _timestep_pair(A1111DDIMSampler, steps)
    x, generator, z, reference_generator = _start(scheduler)
    ours = _run(scheduler, model, x, generator)
    reference = reference_ddim(reference_model, z, a1111_timesteps(steps), scheduler.alphas_cumprod,
                               reference_generator)
    assert len(scheduler.timesteps) == reference_model.calls == len(a1111_timesteps(steps)) - 1
    assert relative_error(ours, reference) < 1e-5


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_with_eta_matches_a1111_with_the_same_noise(eta):
    scheduler, model, reference_model = _timestep_pair(A1111DDIMSampler, 10, eta=eta)
    x, generator, z, reference_generator = _start(scheduler)
    ours = _run(scheduler, model, x, generator)
    reference = reference_ddim(reference_model, z, a1111_timesteps(10), scheduler.alphas_cumprod,
                               reference_generator, eta=eta)
    assert scheduler.is_stochastic
    assert relative_error(ours, reference) < 1e-5


def test_ddim_matches_a1111_on_v_prediction_and_with_the_discard():
    scheduler, model, reference_model = _timestep_pair(A1111DDIMSampler, 10, prediction_type="v_prediction",
                                                       discard_penultimate_sigma=True)
    x, generator, z, reference_generator = _start(scheduler)
    ours = _run(scheduler, model, x, generator)
    reference = reference_ddim(reference_model, z, a1111_timesteps(10, discard=True), scheduler.alphas_cumprod,
                               reference_generator)
    assert len(scheduler.timesteps) == reference_model.calls == 11  # 11 steps: every 90th timestep, 1 .. 991
    assert relative_error(ours, reference) < 1e-5


@pytest.mark.parametrize("steps", STEPS)
def test_plms_matches_a1111(steps):
    scheduler, model, reference_model = _timestep_pair(A1111PLMSSampler, steps)
    x, generator, z, _ = _start(scheduler)
    ours = _run(scheduler, model, x, generator)
    reference = reference_plms(reference_model, z, a1111_timesteps(steps), scheduler.alphas_cumprod)
    assert len(scheduler.timesteps) == reference_model.calls == len(a1111_timesteps(steps))  # + 1 at step one
    assert relative_error(ours, reference) < 1e-5


def test_plms_matches_a1111_on_v_prediction():
    scheduler, model, reference_model = _timestep_pair(A1111PLMSSampler, 10, prediction_type="v_prediction")
    x, generator, z, _ = _start(scheduler)
    ours = _run(scheduler, model, x, generator)
    reference = reference_plms(reference_model, z, a1111_timesteps(10), scheduler.alphas_cumprod)
    assert relative_error(ours, reference) < 1e-5


def _cfgpp_case(steps, eta=0.0, prediction_type="epsilon"):
    scheduler = A1111DDIMCFGPPSampler.from_config(SD_CONFIG, eta=eta, prediction_type=prediction_type)
    scheduler.set_timesteps(steps)
    v_prediction = prediction_type == "v_prediction"
    cond = make_eps_model(scheduler, prediction_type)
    uncond_eps = uncond_eps_model(scheduler)

    def uncond(x_in, t):  # the same function as a v model where the config says v
        eps = uncond_eps(x_in, t)
        if not v_prediction:
            return eps
        sigma = float(t_to_sigma(torch.as_tensor(t, dtype=torch.float32).reshape(-1)[:1], scheduler.log_sigmas))
        x = x_in * (sigma**2 + 1) ** 0.5
        alpha = 1 / (sigma**2 + 1) ** 0.5
        return alpha * eps - sigma * alpha * (x - sigma * eps)

    def guided(cond_output, uncond_output):  # the engine's CFG, at A1111's CFG++ scale
        scale = CFG_SCALE * A1111DDIMCFGPPSampler.guidance_scale_multiplier
        return uncond_output + (cond_output - uncond_output) * scale, uncond_output

    x, generator, z, reference_generator = _start(scheduler)
    ours = _run(scheduler, cond, x, generator, uncond=uncond, guided=guided)
    reference_model = TimestepsDenoiser(cond, scheduler.alphas_cumprod, v_prediction, uncond=uncond)
    reference = reference_ddim(reference_model, z, a1111_timesteps(steps), scheduler.alphas_cumprod,
                               reference_generator, eta=eta, cfgpp=True)
    assert len(scheduler.timesteps) == reference_model.calls
    return ours, reference


@pytest.mark.parametrize("steps", STEPS)
def test_ddim_cfgpp_matches_a1111(steps):
    ours, reference = _cfgpp_case(steps)
    assert relative_error(ours, reference) < 1e-5


def test_ddim_cfgpp_matches_a1111_with_eta_and_on_v_prediction():
    ours, reference = _cfgpp_case(10, eta=0.7, prediction_type="v_prediction")
    assert relative_error(ours, reference) < 1e-5


def test_ddim_cfgpp_needs_the_unconditional_prediction():
    scheduler = A1111DDIMCFGPPSampler.from_config(SD_CONFIG)
    scheduler.set_timesteps(10)
    x = torch.zeros(SHAPE)
    with pytest.raises(ConfigError, match="uncond_output"):
        scheduler.step(x, scheduler.timesteps[0], x)


# --- custom grids --------------------------------------------------------------------------------------------


def test_timestep_samplers_take_training_sigmas_and_integer_timesteps_only():
    scheduler = A1111DDIMSampler.from_config(SD_CONFIG)
    scheduler.set_timesteps(10)
    part = scheduler.sigmas[3:]  # img2img's timesteps[:t_enc]
    scheduler.set_timesteps(sigmas=part * (1 + 1e-7))
    assert scheduler.sigmas.tolist() == part.tolist()
    assert scheduler.timesteps.tolist() == [601.0, 501.0, 401.0, 301.0, 201.0, 101.0]
    scheduler.set_timesteps(timesteps=[900, 500, 100])
    assert scheduler.timesteps.tolist() == [900.0, 500.0, 100.0] and scheduler.sigmas[-1] == 0
    with pytest.raises(ConfigError, match="training sigmas"):
        scheduler.set_timesteps(sigmas=[14.6, 7.0, 0.0])
    with pytest.raises(ConfigError, match="integers"):
        scheduler.set_timesteps(timesteps=[900.5, 100])
    with pytest.raises(ConfigError, match="no model call"):
        scheduler.set_timesteps(1)
    with pytest.raises(ConfigError, match="sigma 0"):
        A1111PLMSSampler.from_config(SD_CONFIG).set_timesteps(timesteps=[500])


def test_a_custom_training_grid_matches_a1111_on_the_same_timesteps():
    scheduler, model, reference_model = _timestep_pair(A1111PLMSSampler, 10)
    timesteps = a1111_timesteps(10)[:6]  # 1 .. 501: an img2img-style tail of the grid
    scheduler.set_timesteps(sigmas=scheduler.train_sigmas[timesteps.flip(0)])
    x, generator, z, _ = _start(scheduler)
    ours = _run(scheduler, model, x, generator)
    reference = reference_plms(reference_model, z, timesteps, scheduler.alphas_cumprod)
    assert relative_error(ours, reference) < 1e-5


# --- Restart -------------------------------------------------------------------------------------------------


def _restart_case(steps, **config):
    scheduler = RestartSampler.from_config(SD_CONFIG, **config)
    scheduler.set_timesteps(steps)
    model = make_eps_model(scheduler, scheduler.config.prediction_type)
    x, generator, _, reference_generator = _start(scheduler)
    ours = _run(scheduler, model, x.clone(), generator)
    denoiser = Counted(oracle_denoiser(scheduler, model))
    reference = reference_restart(denoiser, x.clone(), scheduler.sigmas, reference_generator,
                                  s_noise=scheduler.config.s_noise)
    assert len(scheduler.timesteps) == denoiser.calls
    return scheduler, ours, reference


@pytest.mark.parametrize("timestep_type", ["continuous", "discrete"])
@pytest.mark.parametrize("schedule", ["karras", "normal", "exponential"])
@pytest.mark.parametrize("steps", [*STEPS, 40])
def test_restart_matches_a1111_with_the_same_noise(steps, schedule, timestep_type):
    scheduler, ours, reference = _restart_case(steps, schedule=schedule, timestep_type=timestep_type)
    assert scheduler.is_stochastic == (steps >= 20)  # plain Heun below 20 steps
    assert relative_error(ours, reference) < 1e-5


def test_restart_matches_a1111_on_v_prediction_and_with_less_noise():
    scheduler, ours, reference = _restart_case(20, schedule="karras", prediction_type="v_prediction", s_noise=0.5)
    assert len(scheduler.timesteps) == 39  # 10 Heun steps, a final Euler step, 9 restart Heun steps
    assert relative_error(ours, reference) < 1e-5


# --- LCM -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["uniform", "normal", "karras", "simple"])
@pytest.mark.parametrize("steps", [4, *STEPS])
def test_lcm_matches_a1111_with_the_same_noise(steps, schedule):
    scheduler = A1111LCMSampler.from_config(SD_CONFIG, schedule=schedule)
    scheduler.set_timesteps(steps)
    model = Counted(make_eps_model(scheduler))
    denoiser = lcm_denoiser(model, scheduler.alphas_cumprod)
    if schedule in ("uniform", "normal"):  # A1111's Automatic / Uniform: the wrapper's get_sigmas
        sigmas = denoiser.get_sigmas(steps)
    elif schedule == "karras":
        sigmas = sampling().get_sigmas_karras(steps, denoiser.sigmas[0].item(), denoiser.sigmas[-1].item())
    else:  # A1111's simple_scheduler on the wrapper's sigmas
        stride = len(denoiser.sigmas) / steps
        sigmas = torch.FloatTensor([*(float(denoiser.sigmas[-(1 + int(i * stride))]) for i in range(steps)), 0.0])
    assert torch.allclose(scheduler.sigmas, sigmas, rtol=1e-6, atol=0)  # to float32 rounding of the linspace
    x, generator, _, reference_generator = _start(scheduler)
    ours = _run(scheduler, model, x.clone(), generator)
    model.calls = 0
    reference = reference_lcm(denoiser, x.clone(), sigmas, reference_generator)
    assert scheduler.timesteps.tolist() == denoiser.sigma_to_t(sigmas[:-1]).float().tolist()
    assert len(scheduler.timesteps) == model.calls == steps
    assert relative_error(ours, reference) < 1e-5
