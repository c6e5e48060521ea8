"""ComfyUI's own samplers (ipndm, ipndm_v, deis, res_multistep(_ancestral), gradient_estimation, heunpp2) equal
reference loops transcribed from ComfyUI's comfy/k_diffusion/sampling.py and deis.py (DDPM branch), on several
schedule types, both timestep types, eps and v, with the same noise for the stochastic ones.

The references run in float64 (latents and sigmas) through k-diffusion's DDPM denoiser wrapper, so the
measured error is our float32 rounding alone: ComfyUI's float32 loop itself is up to 1.1e-5 away from its
float64 run on the churned heunpp2 case, more than the tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch
from ksampler_harness import SD_CONFIG, initial_noise, make_eps_model, oracle_denoiser, relative_error, run_ours

from schedcmp.core.schedulers.ksamplers.deis import DEISSampler, rhoab_weights, tab_weights, vp_time
from schedcmp.core.schedulers.ksamplers.gradient_estimation import GradientEstimationSampler
from schedcmp.core.schedulers.ksamplers.heunpp2 import HeunPP2Sampler
from schedcmp.core.schedulers.ksamplers.ipndm import IPNDMSampler
from schedcmp.core.schedulers.ksamplers.ipndm_v import IPNDMVSampler, variable_step_weights
from schedcmp.core.schedulers.ksamplers.res_multistep import ResMultistepAncestralSampler, ResMultistepSampler

SCHEDULES = ["normal", "karras", "exponential", "sgm_uniform"]
TIMESTEP_TYPES = ["continuous", "discrete"]
STEPS = 10


# --- the references: ComfyUI's loops, tensor sigmas, one model call per ``model(x, sigma)`` ------------------


def _slope(x, sigma, denoised):
    return (x - denoised) / sigma


def reference_ipndm(model, x, sigmas, noise_sampler=None, max_order=4):
    """ComfyUI ``sample_ipndm``: fixed Adams-Bashforth weights on a buffer of past slopes."""
    buffer = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur)
        d_cur = _slope(x, t_cur, denoised)
        order = min(max_order, i + 1)
        if t_next == 0:
            x = denoised
        elif order == 1:
            x = x + (t_next - t_cur) * d_cur
        elif order == 2:
            x = x + (t_next - t_cur) * (3 * d_cur - buffer[-1]) / 2
        elif order == 3:
            x = x + (t_next - t_cur) * (23 * d_cur - 16 * buffer[-1] + 5 * buffer[-2]) / 12
        else:
            x = x + (t_next - t_cur) * (55 * d_cur - 59 * buffer[-1] + 37 * buffer[-2] - 9 * buffer[-3]) / 24
        buffer = [*buffer, d_cur][-(max_order - 1):] if max_order > 1 else []
    return x


def reference_ipndm_v(model, x, sigmas, noise_sampler=None, max_order=4):
    """ComfyUI ``sample_ipndm_v``: the weights come from the last steps h_n, h_n_1, ... of the grid."""
    buffer = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur)
        d_cur = _slope(x, t_cur, denoised)
        order = min(max_order, i + 1)
        h_n = t_next - t_cur
        if t_next == 0:
            x = denoised
        elif order == 1:
            x = x + h_n * d_cur
        elif order == 2:
            h_n_1 = t_cur - sigmas[i - 1]
            coeff1, coeff2 = (2 + h_n / h_n_1) / 2, -(h_n / h_n_1) / 2
            x = x + h_n * (coeff1 * d_cur + coeff2 * buffer[-1])
        elif order == 3:
            h_n_1, h_n_2 = t_cur - sigmas[i - 1], sigmas[i - 1] - sigmas[i - 2]
            temp = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
            coeff1 = (2 + (h_n / h_n_1)) / 2 + temp
            coeff2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp
            coeff3 = temp * h_n_1 / h_n_2
            x = x + h_n * (coeff1 * d_cur + coeff2 * buffer[-1] + coeff3 * buffer[-2])
        else:
            h_n_1, h_n_2 = t_cur - sigmas[i - 1], sigmas[i - 1] - sigmas[i - 2]
            h_n_3 = sigmas[i - 2] - sigmas[i - 3]
            temp1 = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
            temp2 = ((1 - h_n / (3 * (h_n + h_n_1))) / 2 + (1 - h_n / (2 * (h_n + h_n_1))) * h_n
                     / (6 * (h_n + h_n_1 + h_n_2))) * (h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2)) \
                / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3))
            ratio = h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))
            coeff1 = (2 + (h_n / h_n_1)) / 2 + temp1 + temp2
            coeff2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp1 - (1 + (h_n_1 / h_n_2) + ratio) * temp2
            coeff3 = temp1 * h_n_1 / h_n_2 + ((h_n_1 / h_n_2) + ratio * (1 + h_n_2 / h_n_3)) * temp2
            coeff4 = -temp2 * ratio * h_n_1 / h_n_2
            x = x + h_n * (coeff1 * d_cur + coeff2 * buffer[-1] + coeff3 * buffer[-2] + coeff4 * buffer[-3])
        buffer = [*buffer, d_cur][-(max_order - 1):] if max_order > 1 else []
    return x


def _deis_tab_coefficients(sigmas, max_order, n=10_000):
    """ComfyUI deis.py ``get_deis_coeff_list(..., 'tab')``: EDM's VP time, d(sigma)/dt by autograd of log alpha,
    Lagrange polynomials in t, the sum over ``n`` linspace nodes times (t_next - t_cur) / n."""
    eps_s, sigma_min, sigma_max = 1e-3, torch.tensor(0.002, dtype=sigmas.dtype), torch.tensor(80.0, dtype=sigmas.dtype)
    beta_d = 2 * (torch.log(sigma_min**2 + 1) / eps_s - torch.log(sigma_max**2 + 1)) / (eps_s - 1)
    beta_min = torch.log(sigma_max**2 + 1) - 0.5 * beta_d
    t_steps = ((beta_min**2 + 2 * beta_d * (sigmas**2 + 1).log()).sqrt() - beta_min) / beta_d
    beta_0, beta_1 = beta_min, beta_d + beta_min
    coefficients = []
    for i in range(len(t_steps) - 1):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        order = min(i + 1, max_order)
        if order == 1 or sigmas[i + 1] == 0:  # the step to 0 is an Euler step: its integral is never used
            coefficients.append([])
            continue
        taus = torch.linspace(float(t_cur), float(t_next), n, dtype=sigmas.dtype)
        with torch.enable_grad():
            taus.requires_grad_(True)
            alpha = torch.exp(-0.5 * taus**2 * (beta_1 - beta_0) - taus * beta_0)
            alpha.log().sum().backward()
        integrand = -0.5 * taus.grad / torch.sqrt(alpha.detach() * (1 - alpha.detach()))
        taus = taus.detach()
        prev_t = t_steps[[i - k for k in range(order)]]
        row = []
        for j in range(order):
            poly = 1
            for k in range(order):
                if k != j:
                    poly = poly * (taus - prev_t[k]) / (prev_t[j] - prev_t[k])
            row.append(torch.sum(integrand * poly) * (t_next - t_cur) / n)
        coefficients.append(row)
    return coefficients


def _deis_rhoab_coefficients(sigmas, max_order):
    """ComfyUI deis.py ``get_deis_coeff_list(..., 'rhoab')``'s closed forms, asked for max_order - 1 (ComfyUI asks
    for max_order, a list one entry too long from step max_order + 1 on, which its sampler cannot unpack)."""

    def integral_2(a, b, start, end, c):
        return ((end**3 - start**3) / 3 - (end**2 - start**2) * (a + b) / 2 + (end - start) * a * b) / ((c - a) * (c - b))

    def integral_3(a, b, c, start, end, d):
        coeff = (end**4 - start**4) / 4 - (end**3 - start**3) * (a + b + c) / 3 \
            + (end**2 - start**2) * (a * b + a * c + b * c) / 2 - (end - start) * a * b * c
        return coeff / ((d - a) * (d - b) * (d - c))

    coefficients = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        order = min(i, max_order - 1)
        p = sigmas[[i - k for k in range(order + 1)]]
        if order == 0:
            coefficients.append([])
        elif order == 1:
            coefficients.append([((t_next - p[1]) ** 2 - (t_cur - p[1]) ** 2) / (2 * (t_cur - p[1])),
                                 (t_next - t_cur) ** 2 / (2 * (p[1] - t_cur))])
        elif order == 2:
            coefficients.append([integral_2(p[1], p[2], t_cur, t_next, t_cur), integral_2(t_cur, p[2], t_cur, t_next, p[1]),
                                 integral_2(t_cur, p[1], t_cur, t_next, p[2])])
        else:
            coefficients.append([integral_3(p[1], p[2], p[3], t_cur, t_next, t_cur),
                                 integral_3(t_cur, p[2], p[3], t_cur, t_next, p[1]),
                                 integral_3(t_cur, p[1], p[3], t_cur, t_next, p[2]),
                                 integral_3(t_cur, p[1], p[2], t_cur, t_next, p[3])])
    return coefficients


def reference_deis(model, x, sigmas, noise_sampler=None, max_order=3, deis_mode="tab"):
    """ComfyUI ``sample_deis``: the coefficient list first, then x_next = x + sum_j C_ij d_j."""
    if deis_mode == "tab":
        coefficients = _deis_tab_coefficients(sigmas, max_order)
    else:
        coefficients = _deis_rhoab_coefficients(sigmas, max_order)
    buffer = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur)
        d_cur = _slope(x, t_cur, denoised)
        order = 1 if t_next <= 0 else min(max_order, i + 1)
        if order == 1:
            x = x + (t_next - t_cur) * d_cur
        else:
            x = x + coefficients[i][0] * d_cur + sum(c * b for c, b in zip(coefficients[i][1:], reversed(buffer), strict=True))
        buffer = [*buffer, d_cur][-(max_order - 1):] if max_order > 1 else []
    return x


def reference_res_multistep(model, x, sigmas, noise_sampler=None, eta=0.0, s_noise=1.0):
    """ComfyUI ``res_multistep`` (``sample_res_multistep`` is eta = 0): t = -log sigma, phi functions of -h."""
    old_denoised = old_sigma_down = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if eta:
            sigma_up = min(sigmas[i + 1], eta * (sigmas[i + 1] ** 2 * (sigmas[i] ** 2 - sigmas[i + 1] ** 2)
                                                 / sigmas[i] ** 2) ** 0.5)
            sigma_down = (sigmas[i + 1] ** 2 - sigma_up**2) ** 0.5
        else:
            sigma_down, sigma_up = sigmas[i + 1], 0.0
        if sigma_down == 0 or old_denoised is None:
            x = x + _slope(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_old, t_next, t_prev = (-s.log() for s in (sigmas[i], old_sigma_down, sigma_down, sigmas[i - 1]))
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1) / -h
            b1, b2 = phi1 - phi2 / c2, phi2 / c2
            x = (-h).exp() * x + h * (b1 * denoised + b2 * old_denoised)
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised, old_sigma_down = denoised, sigma_down
    return x


def reference_gradient_estimation(model, x, sigmas, noise_sampler=None, ge_gamma=2.0):
    """ComfyUI ``sample_gradient_estimation``: Euler plus (ge_gamma - 1) (d - old_d) dt from the second step."""
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = _slope(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = x + d * dt
            if i >= 1:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


def reference_heunpp2(model, x, sigmas, noise_sampler=None, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0):
    """ComfyUI ``sample_heunpp2``: a noise draw every step (used only with churn), then Euler, Heun or Heun++."""
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        eps = noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
        d = _slope(x, sigma_hat, model(x, sigma_hat))
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == s_end:
            x = x + d * dt
        elif sigmas[i + 2] == s_end:
            x_2 = x + d * dt
            d_2 = _slope(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
            w2 = sigmas[i + 1] / (2 * sigmas[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
        else:
            x_2 = x + d * dt
            d_2 = _slope(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
            x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
            d_3 = _slope(x_3, sigmas[i + 2], model(x_3, sigmas[i + 2]))
            w2, w3 = sigmas[i + 1] / (3 * sigmas[0]), sigmas[i + 2] / (3 * sigmas[0])
            x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x


# --- running both ------------------------------------------------------------------------------------------


def _compare(cls, reference, options, **setup):
    """(relative error, our model calls, the reference's model calls) with the sampler's ``options`` on both
    sides and the shared ``setup`` (schedule, timestep type, prediction type), from the same latents and noise."""
    scheduler = cls.from_config(SD_CONFIG, **setup, **options)
    scheduler.set_timesteps(STEPS)
    model = make_eps_model(scheduler, scheduler.config.prediction_type)
    x, generator = initial_noise(scheduler)
    oracle_generator = torch.Generator().manual_seed(0)
    torch.randn(x.shape, generator=oracle_generator)  # the initial latents' draw
    ours = run_ours(scheduler, model, x.clone(), generator)
    denoiser, calls = oracle_denoiser(scheduler, model), []

    def counted(x_ref, sigma):
        calls.append(float(sigma))
        return denoiser(x_ref, sigma.reshape(1))

    def noise_sampler(sigma, sigma_next):  # float32 draws from the oracle's generator, as ours
        return torch.randn(x.shape, generator=oracle_generator).double()

    result = reference(counted, x.double(), scheduler.sigmas.double(), noise_sampler, **options)
    return relative_error(ours, result), len(scheduler.timesteps), len(calls)


ODE_SAMPLERS = {
    "ipndm": (IPNDMSampler, {}, reference_ipndm),
    "ipndm max_order=2": (IPNDMSampler, {"max_order": 2}, reference_ipndm),
    "ipndm_v": (IPNDMVSampler, {}, reference_ipndm_v),
    "ipndm_v max_order=3": (IPNDMVSampler, {"max_order": 3}, reference_ipndm_v),
    "deis": (DEISSampler, {}, reference_deis),
    "deis max_order=4": (DEISSampler, {"max_order": 4}, reference_deis),
    "deis rhoab": (DEISSampler, {"deis_mode": "rhoab"}, reference_deis),
    "deis rhoab max_order=4": (DEISSampler, {"deis_mode": "rhoab", "max_order": 4}, reference_deis),
    "res_multistep": (ResMultistepSampler, {}, reference_res_multistep),
    "gradient_estimation": (GradientEstimationSampler, {}, reference_gradient_estimation),
    "gradient_estimation ge_gamma=1.5": (GradientEstimationSampler, {"ge_gamma": 1.5}, reference_gradient_estimation),
    "heunpp2": (HeunPP2Sampler, {}, reference_heunpp2),
}


@pytest.mark.parametrize("timestep_type", TIMESTEP_TYPES)
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", ODE_SAMPLERS)
def test_ode_sampler_matches_comfyui_reference(name, schedule, timestep_type):
    cls, options, reference = ODE_SAMPLERS[name]
    error, ours, theirs = _compare(cls, reference, options, schedule=schedule, timestep_type=timestep_type)
    assert ours == theirs  # timesteps list every model call
    assert error < 1e-5


@pytest.mark.parametrize("name", ODE_SAMPLERS)
def test_ode_sampler_matches_comfyui_reference_on_v_prediction(name):
    cls, options, reference = ODE_SAMPLERS[name]
    error, ours, theirs = _compare(cls, reference, options, schedule="karras", prediction_type="v_prediction")
    assert ours == theirs
    assert error < 1e-5


def test_heunpp2_calls_the_model_three_times_a_step_but_fewer_at_the_end():
    scheduler = HeunPP2Sampler.from_config(SD_CONFIG)
    scheduler.set_timesteps(STEPS)
    assert len(scheduler.timesteps) == 3 * (STEPS - 2) + 2 + 1


@pytest.mark.parametrize("timestep_type", TIMESTEP_TYPES)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_res_multistep_ancestral_matches_comfyui_reference_with_the_same_noise(schedule, timestep_type):
    error, ours, theirs = _compare(ResMultistepAncestralSampler, reference_res_multistep, {"eta": 1.0},
                                   schedule=schedule, timestep_type=timestep_type)
    assert ours == theirs == STEPS
    assert error < 1e-5


def test_res_multistep_ancestral_options_on_v_prediction():
    error, _, _ = _compare(ResMultistepAncestralSampler, reference_res_multistep, {"eta": 0.5, "s_noise": 0.8},
                           schedule="karras", prediction_type="v_prediction")
    assert error < 1e-5


def test_res_multistep_ancestral_without_noise_is_res_multistep():
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 14.6
    results = []
    deterministic = ResMultistepAncestralSampler.from_config(SD_CONFIG, eta=0)
    for scheduler in (ResMultistepSampler.from_config(SD_CONFIG), deterministic):
        scheduler.set_timesteps(STEPS)
        results.append(run_ours(scheduler, make_eps_model(scheduler), x.clone()))
        assert not scheduler.is_stochastic
    assert torch.equal(*results)


@pytest.mark.parametrize("churn", [{"s_churn": 1.0, "s_tmax": 5.0}, {"s_churn": 2.0, "s_tmin": 0.5}],
                         ids=["churn below sigma 5 (unused draws first)", "churn from the first step (priming call)"])
def test_heunpp2_churn_matches_comfyui_reference_with_the_same_noise(churn):
    for schedule in ("karras", "exponential"):
        error, ours, theirs = _compare(HeunPP2Sampler, reference_heunpp2, churn, schedule=schedule)
        primed = "s_tmax" not in churn
        assert ours == theirs + primed
        assert error < 1e-5


def test_deis_weights_integrate_a_constant_slope_to_the_step():
    scheduler = DEISSampler.from_config(SD_CONFIG, schedule="karras")
    scheduler.set_timesteps(STEPS)
    sigmas = scheduler.grid
    for i in range(2, STEPS - 1):
        nodes = sigmas[i::-1][:3]
        assert math.isclose(sum(rhoab_weights(nodes, sigmas[i + 1])), sigmas[i + 1] - sigmas[i], rel_tol=1e-12)
        tab = tab_weights([vp_time(s) for s in nodes], vp_time(sigmas[i + 1]))
        assert math.isclose(sum(tab), sigmas[i + 1] - sigmas[i], rel_tol=1e-3)  # diff-sampler's crude quadrature


def test_ipndm_v_weights_reduce_to_adams_bashforth_on_equal_steps_up_to_third_order():
    assert variable_step_weights([-1.0, -1.0]) == pytest.approx((3 / 2, -1 / 2))
    assert variable_step_weights([-1.0, -1.0, -1.0]) == pytest.approx((23 / 12, -16 / 12, 5 / 12))
    fourth = variable_step_weights([-1.0] * 4)
    assert sum(fourth) == pytest.approx(1.0)
    assert fourth == pytest.approx((57 / 24, -65 / 24, 43 / 24, -11 / 24))  # not AB4's (55, -59, 37, -9) / 24
    assert sum(variable_step_weights([-0.8, -2.5, -1.5, -3.0])) == pytest.approx(0.84856, abs=1e-5)  # as ComfyUI's
