"""ComfyUniPCSampler and A1111UniPCSampler equal UniPC as ComfyUI and A1111 1.10 run it.

The oracles are plain loops transcribed from the tools' code (the UniPC update of wl-zhao/UniPC, which
ComfyUI's ``comfy/extra_samplers/uni_pc.py`` and A1111's ``modules/models/diffusion/uni_pc/uni_pc.py`` share):
in VP form, with torch tensors in float32 as the tools compute, matrices solved per step, the model evaluated
through each tool's wrapper (ComfyUI: the k-diffusion denoiser at the sigmas; A1111: the eps UNet at its own
fractional timesteps).
"""

from __future__ import annotations

import math

import pytest
import torch
from ksampler_harness import SD_CONFIG, SHAPE, initial_noise, make_eps_model, oracle_denoiser, relative_error, run_ours

from schedcmp.core.errors import ConfigError
from schedcmp.core.schedulers.ksamplers.a1111_unipc import A1111UniPCSampler
from schedcmp.core.schedulers.ksamplers.comfy_unipc import ComfyUniPCSampler

COMFY = {"discard_penultimate_sigma": True, "noise_scaling": "marginal"}  # how ComfyUI feeds uni_pc


# --- the UniPC update, as both tools' code computes it (data prediction, VP form) ---------------------------------

def _uni_pc_update(ns, model_fn, x, models, times, t, order, variant, use_corrector):
    """One multistep UniPC step to time ``t`` from the newest ``order`` of ``models`` (at ``times``)."""
    lam_prev = ns.lam(times[-1])
    h = ns.lam(t) - lam_prev
    m0 = models[-1]
    rks, d1s = [], []
    for i in range(1, order):
        rk = (ns.lam(times[-(i + 1)]) - lam_prev) / h
        rks.append(rk)
        d1s.append((models[-(i + 1)] - m0) / rk)
    rks = torch.tensor([*rks, 1.0])
    hh = -h
    h_phi_1 = torch.expm1(hh)
    alpha_t = torch.exp(ns.log_alpha(t))
    x_base = ns.std(t) / ns.std(times[-1]) * x - alpha_t * h_phi_1 * m0
    model_t = None
    if variant == "vary_coeff":
        k_total = len(rks)
        columns, column = [], torch.ones_like(rks)
        for k in range(1, k_total + 1):
            columns.append(column)
            column = column * rks / (k + 1)
        c = torch.stack(columns, dim=1)
        phis, factorial, phi = [], 1, h_phi_1
        for k in range(1, k_total + 2):
            phis.append(phi)
            phi = phi / hh - 1 / factorial
            factorial *= k + 1
        x_t = x_base
        if d1s:
            a_p = torch.linalg.inv(c[:-1, :-1])
            for k in range(k_total - 1):
                x_t = x_t - alpha_t * phis[k + 1] * sum(a_p[k][j] * d1s[j] for j in range(len(d1s)))
        if use_corrector:
            a_c = torch.linalg.inv(c)
            model_t = model_fn(x_t, t)
            x_t = x_base
            k = 0
            for k in range(k_total - 1):
                x_t = x_t - alpha_t * phis[k + 1] * sum(a_c[k][j] * d1s[j] for j in range(len(d1s)))
            x_t = x_t - alpha_t * phis[k_total] * ((model_t - m0) * a_c[k][-1])
        return x_t, model_t
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    r_rows, b = [], []
    phi, factorial = h_phi_1 / hh - 1, 1
    for i in range(1, order + 1):
        r_rows.append(rks ** (i - 1))
        b.append(phi * factorial / b_h)
        factorial *= i + 1
        phi = phi / hh - 1 / factorial
    r_matrix, b = torch.stack(r_rows), torch.stack(b)
    x_t = x_base
    if d1s:
        rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(r_matrix[:-1, :-1], b[:-1])
        x_t = x_base - alpha_t * b_h * sum(rho * d for rho, d in zip(rhos_p, d1s, strict=True))
    if use_corrector:
        rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(r_matrix, b)
        model_t = model_fn(x_t, t)
        correction = sum((rho * d for rho, d in zip(rhos_c[:-1], d1s, strict=True)), torch.zeros_like(x))
        x_t = x_base - alpha_t * b_h * (correction + rhos_c[-1] * (model_t - m0))
    return x_t, model_t


class _SigmaTimes:
    """ComfyUI's ``SigmaConvert``: the solver's time is sigma, alpha = 1 / sqrt(1 + sigma^2)."""

    def log_alpha(self, sigma):
        return 0.5 * torch.log(1 / (sigma * sigma + 1))

    def std(self, sigma):
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(sigma)))

    def lam(self, sigma):
        log_alpha = self.log_alpha(sigma)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


class _DiscreteVP(_SigmaTimes):
    """A1111's ``NoiseScheduleVP('discrete')``: log alpha linear between t_k = (k + 1) / T, T = 1 at the end."""

    def __init__(self, alphas_cumprod):
        self.total = len(alphas_cumprod)
        self.t_array = torch.linspace(0.0, 1.0, self.total + 1)[1:]
        self.log_alpha_array = 0.5 * torch.log(alphas_cumprod)

    def log_alpha(self, t):
        return self._interpolate(t, self.t_array, self.log_alpha_array)

    def inverse_lambda(self, lam):
        log_alpha = -0.5 * torch.logaddexp(torch.zeros(1), -2.0 * lam)
        return self._interpolate(log_alpha, self.log_alpha_array.flip(0), self.t_array.flip(0))

    @staticmethod
    def _interpolate(x, xp, yp):
        """The piecewise-linear function through (xp, yp), xp ascending, extended linearly past the ends."""
        start = (torch.searchsorted(xp, x, right=True) - 1).clamp(0, len(xp) - 2)
        x0, x1, y0, y1 = xp[start], xp[start + 1], yp[start], yp[start + 1]
        return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


def comfy_reference(denoiser, noise, sigmas, variant, calls):
    """ComfyUI's ``sample_unipc``: sigmas as times (a final 0 solved as 0.001), started from the scaled noise."""
    times = sigmas.clone()
    if times[-1] == 0:
        times[-1] = 0.001
    ns = _SigmaTimes()

    def model_fn(x, sigma):
        calls.append(float(sigma))
        x_in = x * (sigma**2 + 1.0) ** 0.5
        eps = (x_in - denoiser(x_in, sigma.reshape(1))) / sigma
        return (x - ns.std(sigma) * eps) / torch.exp(ns.log_alpha(sigma))

    x = noise / torch.sqrt(1.0 + times[0] ** 2.0)
    steps, order = len(times) - 1, min(3, len(times) - 2)
    for step_index in range(steps):
        if step_index == 0:
            models, t_prev = [model_fn(x, times[0])], [times[0]]
        elif step_index < order:
            x, model_x = _uni_pc_update(ns, model_fn, x, models, t_prev, times[step_index], step_index, variant, True)
            models.append(model_x)
            t_prev.append(times[step_index])
        else:
            for step in range(step_index, step_index + 1 + (step_index == steps - 1)):
                step_order = min(order, steps + 1 - step)
                x, model_x = _uni_pc_update(ns, model_fn, x, models, t_prev, times[step], step_order, variant,
                                            step < steps)
                models, t_prev = [*models[1:], model_x], [*t_prev[1:], times[step]]
    return x / torch.exp(ns.log_alpha(times[-1]))


def a1111_reference(eps_model, noise, alphas_cumprod, steps, calls, variant="bh1", skip_type="time_uniform",
                    order=3, lower_order_final=True, v_prediction=False):
    """A1111's ``unipc`` (``UniPCCFG.sample``, multistep) for ``steps`` solver steps from unit noise."""
    ns = _DiscreteVP(alphas_cumprod)
    t_end = 1.0 / ns.total
    if skip_type == "time_uniform":
        timesteps = torch.linspace(1.0, t_end, steps + 1)
    elif skip_type == "time_quadratic":
        timesteps = torch.linspace(1.0, t_end**0.5, steps + 1).pow(2)
    else:
        lam_start, lam_end = ns.lam(torch.tensor(1.0)), ns.lam(torch.tensor(t_end))
        timesteps = ns.inverse_lambda(torch.linspace(lam_start.item(), lam_end.item(), steps + 1))

    def model_fn(x, t):
        t_in = (t.reshape(1) - 1.0 / ns.total) * 1000.0
        calls.append(float(t_in))
        eps = eps_model(x, t_in)
        if v_prediction:  # CompVisTimestepsVDenoiser
            k = t_in.to(torch.int)
            eps = alphas_cumprod[k].sqrt() * eps + (1 - alphas_cumprod[k]).sqrt() * x
        return (x - ns.std(t) * eps) / torch.exp(ns.log_alpha(t))

    x = noise
    models, t_prev = [model_fn(x, timesteps[0])], [timesteps[0]]
    for init_order in range(1, order):
        x, model_x = _uni_pc_update(ns, model_fn, x, models, t_prev, timesteps[init_order], init_order, variant, True)
        models.append(model_x)
        t_prev.append(timesteps[init_order])
    for step in range(order, steps + 1):
        step_order = min(order, steps + 1 - step) if lower_order_final else order
        x, model_x = _uni_pc_update(ns, model_fn, x, models, t_prev, timesteps[step], step_order, variant,
                                    step < steps)
        models, t_prev = [*models[1:], model_x], [*t_prev[1:], timesteps[step]]
    return x


# --- ComfyUI ------------------------------------------------------------------------------------------------------

def _comfy(steps, **config):
    scheduler = ComfyUniPCSampler.from_config(SD_CONFIG, **{**COMFY, **config})
    scheduler.set_timesteps(steps)
    model = make_eps_model(scheduler, scheduler.config.prediction_type)
    x, generator = initial_noise(scheduler)
    ours = run_ours(scheduler, model, x.clone(), generator)
    calls = []
    reference = comfy_reference(oracle_denoiser(scheduler, model), x.clone(), scheduler.sigmas,
                                scheduler.config.variant, calls)
    assert len(scheduler.timesteps) == len(calls)
    assert torch.allclose(scheduler.sigmas[:-1], torch.tensor(calls))
    return ours, reference


@pytest.mark.parametrize("timestep_type", ["discrete", "continuous"])
@pytest.mark.parametrize("schedule", ["normal", "karras", "exponential", "simple", "sgm_uniform"])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_comfy_unipc_matches_comfyui(variant, schedule, timestep_type):
    ours, reference = _comfy(10, variant=variant, schedule=schedule, timestep_type=timestep_type)
    assert relative_error(ours, reference) < 1e-5


def test_comfy_unipc_matches_comfyui_on_v_prediction():
    ours, reference = _comfy(8, schedule="karras", timestep_type="discrete", prediction_type="v_prediction")
    assert relative_error(ours, reference) < 1e-5


@pytest.mark.parametrize("steps", [2, 3, 4])
def test_comfy_unipc_few_steps_lower_the_order(steps):
    # ComfyUI's order is min(3, n - 1): 1 at two steps, 2 at three
    ours, reference = _comfy(steps, schedule="normal", timestep_type="discrete")
    assert relative_error(ours, reference) < 1e-5


def test_comfy_unipc_one_step_returns_the_start_as_comfyui_does():
    # ComfyUI's order min(3, n - 1) is 0 at one step: one model call, no step, the VP start scaled back
    scheduler = ComfyUniPCSampler.from_config(SD_CONFIG, **COMFY)
    scheduler.set_timesteps(1)
    model = make_eps_model(scheduler)
    x, generator = initial_noise(scheduler)
    ours = run_ours(scheduler, model, x.clone(), generator)
    reference = comfy_reference(oracle_denoiser(scheduler, model), x.clone(), scheduler.sigmas, "bh1", [])
    assert len(scheduler.timesteps) == 1
    assert relative_error(ours, reference) < 1e-6


def test_comfy_unipc_calls_the_model_once_per_step_at_the_grid():
    scheduler = ComfyUniPCSampler.from_config(SD_CONFIG, **COMFY, schedule="karras")
    scheduler.set_timesteps(20)
    assert len(scheduler.sigmas) == 21 and scheduler.sigmas[-1] == 0  # 21 karras sigmas, the penultimate dropped
    assert torch.equal(scheduler.timesteps, scheduler.model_timesteps(scheduler.grid[:-1]))


# --- A1111 --------------------------------------------------------------------------------------------------------

def _a1111(steps, **config):
    scheduler = A1111UniPCSampler.from_config(SD_CONFIG, **config)
    scheduler.set_timesteps(steps)
    model = make_eps_model(scheduler, scheduler.config.prediction_type)
    x, generator = initial_noise(scheduler)
    ours = run_ours(scheduler, model, x.clone(), generator)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))  # A1111: the same draw, unscaled
    c = scheduler.config
    calls = []
    reference = a1111_reference(model, noise, scheduler.alphas_cumprod, scheduler.num_inference_steps, calls,
                                c.uni_pc_variant, c.uni_pc_skip_type, c.uni_pc_order, c.uni_pc_lower_order_final,
                                c.prediction_type == "v_prediction")
    assert len(scheduler.timesteps) == len(calls)
    assert torch.allclose(scheduler.timesteps, torch.tensor(calls), rtol=0, atol=1e-3)
    return scheduler, ours, reference


@pytest.mark.parametrize("skip_type", ["time_uniform", "time_quadratic", "logSNR"])
@pytest.mark.parametrize("steps", [5, 10, 20])
@pytest.mark.parametrize("variant", ["bh1", "bh2", "vary_coeff"])
def test_a1111_unipc_matches_a1111(variant, steps, skip_type):
    _, ours, reference = _a1111(steps, uni_pc_variant=variant, uni_pc_skip_type=skip_type)
    assert relative_error(ours, reference) < 1e-5


def test_a1111_unipc_matches_a1111_on_v_prediction():
    # A1111 turns v into eps with the alphas of int(t): 1e-3 away from the exact conversion at these steps
    _, ours, reference = _a1111(10, prediction_type="v_prediction")
    assert relative_error(ours, reference) < 1e-5


@pytest.mark.parametrize(("order", "lower_order_final", "steps"), [(1, True, 6), (2, True, 6), (3, True, 3),
                                                                   (4, True, 8), (3, False, 10)])
def test_a1111_unipc_options(order, lower_order_final, steps):
    # order 3 at the very last step (lower_order_final off) is ill-conditioned: there the tool's own code moves
    # 5e-6 - 1e-5 between float32 and float64, so this family gets 3e-5
    _, ours, reference = _a1111(steps, uni_pc_order=order, uni_pc_lower_order_final=lower_order_final)
    assert relative_error(ours, reference) < 3e-5


def test_a1111_unipc_builds_its_own_timesteps():
    scheduler = A1111UniPCSampler.from_config(SD_CONFIG, schedule="karras", timestep_type="discrete")
    scheduler.set_timesteps(7)  # range(0, 1000, 142) has 8 entries: A1111 runs 8 steps
    assert scheduler.num_inference_steps == 8 and len(scheduler.timesteps) == 8
    assert torch.allclose(scheduler.timesteps, torch.linspace(999, 0, 9)[:-1], atol=1e-3)  # fractional, not karras
    assert math.isclose(float(scheduler.sigmas[-1]), float(scheduler.train_sigmas[0]), rel_tol=1e-5)
    assert math.isclose(scheduler.init_noise_sigma, math.sqrt(1 + float(scheduler.train_sigmas[-1]) ** 2),
                        rel_tol=1e-6)
    discarding = A1111UniPCSampler.from_config(SD_CONFIG, discard_penultimate_sigma=True)
    discarding.set_timesteps(4)
    assert discarding.num_inference_steps == 5  # always_discard_next_to_last_sigma: one more step, nothing dropped


def test_a1111_unipc_refuses_what_a1111_cannot_do():
    scheduler = A1111UniPCSampler.from_config(SD_CONFIG)
    with pytest.raises(ConfigError, match="uni_pc_order"):
        scheduler.set_timesteps(2)
    with pytest.raises(ConfigError, match="custom"):
        scheduler.set_timesteps(sigmas=[14.6, 1.0, 0.0])


# --- diffusers, same family ---------------------------------------------------------------------------------------

def test_diffusers_unipc_bh1_order_3_lands_close():
    from diffusers import UniPCMultistepScheduler

    # ending at sigma_min like A1111 (with diffusers' default final sigma 0, bh1 gives NaN: B(h) = -inf times 0)
    diffusers_scheduler = UniPCMultistepScheduler.from_config(SD_CONFIG, solver_type="bh1", solver_order=3,
                                                              final_sigmas_type="sigma_min")
    diffusers_scheduler.set_timesteps(10)
    scheduler, ours, _ = _a1111(10)
    model = make_eps_model(scheduler)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    for t in diffusers_scheduler.timesteps:
        x = diffusers_scheduler.step(model(diffusers_scheduler.scale_model_input(x, t), t), t, x).prev_sample
    assert 1e-5 < relative_error(ours, x) < 5e-3  # diffusers rounds the timesteps: near (6e-4), not equal
