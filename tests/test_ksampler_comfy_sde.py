"""The ComfyUI-only samplers ER-SDE, SEEDS-2/3, SA-Solver (+PECE), exponential Heun x0 (+SDE) and LCM equal
reference loops transcribed from ComfyUI's ``comfy/k_diffusion/sampling.py`` and ``sa_solver.py`` (DDPM branch:
half-logSNR = -log sigma, alpha = 1), with the same noise, on several schedules, both timestep types, eps and v.

The references below are plain k-diffusion-style loops on tensors, as ComfyUI writes them; our samplers are
generators on Python-float coefficients. SA-Solver's reference solves ComfyUI's Vandermonde system for its
coefficients (in float64, where ComfyUI uses the sigmas' float32); ours integrates the Lagrange basis directly.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from kdiffusion_oracle import generator_noise_sampler
from ksampler_harness import SD_CONFIG, initial_noise, make_eps_model, oracle_denoiser, relative_error, run_ours

from schedcmp.core.schedulers.ksamplers.er_sde import ERSDESampler
from schedcmp.core.schedulers.ksamplers.exp_heun_2_x0 import ExpHeun2X0Sampler, ExpHeun2X0SDESampler
from schedcmp.core.schedulers.ksamplers.lcm import LCMSampler
from schedcmp.core.schedulers.ksamplers.sa_solver import SASolverPECESampler, SASolverSampler, adams_weights
from schedcmp.core.schedulers.ksamplers.seeds import SEEDS2Sampler, SEEDS3Sampler

# --- references transcribed from ComfyUI (DDPM model sampling) -----------------------------------------------


def _lambda(sigma: torch.Tensor) -> torch.Tensor:
    """sigma_to_half_log_snr of a DDPM model."""
    return sigma.log().neg()


def _sigma(half_log_snr: torch.Tensor) -> torch.Tensor:
    """half_log_snr_to_sigma of a DDPM model."""
    return half_log_snr.neg().exp()


def _h_phi_1(h: torch.Tensor) -> torch.Tensor:
    return torch.expm1(h)


def _h_phi_2(h: torch.Tensor) -> torch.Tensor:
    return (torch.expm1(h) - h) / h


def reference_er_sde(model, x, sigmas, noise_sampler, s_noise=1.0, max_stage=3):
    """ComfyUI sample_er_sde with its default noise scaler."""

    def scaler(v):
        return v * ((v**0.3).exp() + 10.0)

    points = torch.arange(0, 200.0, dtype=sigmas.dtype)
    lambdas = _lambda(sigmas).neg().exp()  # sigma_t / alpha_t
    s_in = x.new_ones([x.shape[0]])
    old_denoised = old_denoised_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        stage = min(max_stage, i + 1)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = lambdas[i], lambdas[i + 1]
            alpha_s, alpha_t = sigmas[i] / lam_s, sigmas[i + 1] / lam_t
            r = scaler(lam_t) / scaler(lam_s)
            x = alpha_t / alpha_s * r * x + alpha_t * (1 - r) * denoised
            if stage >= 2:
                dt = lam_t - lam_s
                step = -dt / 200.0
                pos = lam_t + points * step
                s = torch.sum(1 / scaler(pos)) * step
                denoised_d = (denoised - old_denoised) / (lam_s - lambdas[i - 1])
                x = x + alpha_t * (dt + s * scaler(lam_t)) * denoised_d
                if stage >= 3:
                    s_u = torch.sum((pos - lam_s) / scaler(pos)) * step
                    denoised_u = (denoised_d - old_denoised_d) / ((lam_s - lambdas[i - 2]) / 2)
                    x = x + alpha_t * (dt**2 / 2 + s_u * scaler(lam_t)) * denoised_u
                old_denoised_d = denoised_d
            if s_noise > 0:
                std = (lam_t**2 - lam_s**2 * r**2).sqrt().nan_to_num(nan=0.0)
                x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * std
        old_denoised = denoised
    return x


def reference_seeds_2(model, x, sigmas, noise_sampler, eta=1.0, s_noise=1.0, r=0.5, solver_type="phi_1"):
    """ComfyUI sample_seeds_2 (with the solver_type of PR #11309)."""
    s_in = x.new_ones([x.shape[0]])
    inject = eta > 0 and s_noise > 0
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = _lambda(sigmas[i]), _lambda(sigmas[i + 1])
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_1 = torch.lerp(lam_s, lam_t, r)
        sigma_1 = _sigma(lam_1)
        alpha_1, alpha_t = sigma_1 * lam_1.exp(), sigmas[i + 1] * lam_t.exp()
        x_2 = sigma_1 / sigmas[i] * (-r * h * eta).exp() * x - alpha_1 * _h_phi_1(-r * h_eta) * denoised
        if inject:
            sde_noise = (-2 * r * h * eta).expm1().neg().sqrt() * noise_sampler(sigmas[i], sigma_1)
            x_2 = x_2 + sde_noise * sigma_1 * s_noise
        denoised_2 = model(x_2, sigma_1 * s_in)
        if solver_type == "phi_1":
            mixed = torch.lerp(denoised, denoised_2, 1 / (2 * r))
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * _h_phi_1(-h_eta) * mixed
        else:
            b2 = _h_phi_2(-h_eta) / r
            b1 = _h_phi_1(-h_eta) - b2
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b2 * denoised_2)
        if inject:
            segment = (r - 1) * h * eta
            sde_noise = sde_noise * segment.exp()
            sde_noise = sde_noise + segment.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_1, sigmas[i + 1])
            x = x + sde_noise * sigmas[i + 1] * s_noise
    return x


def reference_seeds_3(model, x, sigmas, noise_sampler, eta=1.0, s_noise=1.0, r_1=1 / 3, r_2=2 / 3):
    """ComfyUI sample_seeds_3."""
    s_in = x.new_ones([x.shape[0]])
    inject = eta > 0 and s_noise > 0
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = _lambda(sigmas[i]), _lambda(sigmas[i + 1])
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_1, lam_2 = torch.lerp(lam_s, lam_t, r_1), torch.lerp(lam_s, lam_t, r_2)
        sigma_1, sigma_2 = _sigma(lam_1), _sigma(lam_2)
        alpha_1, alpha_2, alpha_t = sigma_1 * lam_1.exp(), sigma_2 * lam_2.exp(), sigmas[i + 1] * lam_t.exp()
        x_2 = sigma_1 / sigmas[i] * (-r_1 * h * eta).exp() * x - alpha_1 * _h_phi_1(-r_1 * h_eta) * denoised
        if inject:
            sde_noise = (-2 * r_1 * h * eta).expm1().neg().sqrt() * noise_sampler(sigmas[i], sigma_1)
            x_2 = x_2 + sde_noise * sigma_1 * s_noise
        denoised_2 = model(x_2, sigma_1 * s_in)
        a3_2 = r_2 / r_1 * _h_phi_2(-r_2 * h_eta)
        a3_1 = _h_phi_1(-r_2 * h_eta) - a3_2
        x_3 = sigma_2 / sigmas[i] * (-r_2 * h * eta).exp() * x - alpha_2 * (a3_1 * denoised + a3_2 * denoised_2)
        if inject:
            segment = (r_1 - r_2) * h * eta
            sde_noise = sde_noise * segment.exp()
            sde_noise = sde_noise + segment.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_1, sigma_2)
            x_3 = x_3 + sde_noise * sigma_2 * s_noise
        denoised_3 = model(x_3, sigma_2 * s_in)
        b3 = _h_phi_2(-h_eta) / r_2
        b1 = _h_phi_1(-h_eta) - b3
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b3 * denoised_3)
        if inject:
            segment = (r_2 - 1) * h * eta
            sde_noise = sde_noise * segment.exp()
            sde_noise = sde_noise + segment.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_2, sigmas[i + 1])
            x = x + sde_noise * sigmas[i + 1] * s_noise
    return x


def _exponential_coeffs(s, t, order, tau):
    """(1 + tau^2) int_s^t e^((1 + tau^2)(l - t)) l^p dl for p < order, by ComfyUI's recursive matrix."""
    k = 1 + tau**2
    p = torch.arange(order, dtype=s.dtype)
    products = t**p - s**p * (-k * (t - s)).exp()
    depth = p.unsqueeze(1) - p.unsqueeze(0)
    log_factorial = (p + 1).lgamma()
    log_coeffs = log_factorial.unsqueeze(1) - log_factorial.unsqueeze(0) - depth * math.log(k)
    signs = torch.where(depth % 2 == 0, 1.0, -1.0).to(s.dtype)
    return (log_coeffs.exp() * signs).tril() @ products


def _adams_coeffs(sigma_next, nodes, lam_s, lam_t, tau, simple_order_2, corrector):
    """ComfyUI compute_stochastic_adams_b_coeffs: a Vandermonde solve (or the simple order-2 formulas)."""
    alpha_t = sigma_next * lam_t.exp()
    k, h = 1 + tau**2, lam_t - lam_s
    if simple_order_2 and len(nodes) == 2:
        if corrector:
            b_1 = alpha_t * (0.5 * k * h)
            b_2 = alpha_t * (-h * k).expm1().neg() - b_1
        else:
            b_2 = alpha_t * (0.5 * k * h**2) / (nodes[-2] - lam_s)
            b_1 = alpha_t * (-h * k).expm1().neg() - b_2
        return torch.stack([b_2, b_1])
    integrals = _exponential_coeffs(lam_s, lam_t, len(nodes), tau)
    vandermonde_t = torch.vander(nodes, len(nodes), increasing=True).T
    return alpha_t * torch.linalg.solve(vandermonde_t, integrals)


def comfy_tau_func(log_sigmas, eta=1.0, start_percent=0.2, end_percent=0.8):
    """ComfyUI's default SA-Solver tau: eta between percent_to_sigma(start) and percent_to_sigma(end)."""

    def percent_to_sigma(percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        t = torch.tensor((1.0 - percent) * 999.0).clamp(0, len(log_sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp().item()

    start, end = percent_to_sigma(start_percent), percent_to_sigma(end_percent)
    return lambda sigma: (eta if start >= float(sigma) >= end else 0.0) if eta > 0 else 0.0


def reference_sa_solver(model, x, sigmas, noise_sampler, tau_func, s_noise=1.0, predictor_order=3,
                        corrector_order=4, use_pece=False, simple_order_2=False):
    """ComfyUI sample_sa_solver, returning the last prediction x_pred as later ComfyUI versions do (the mirror's
    a125cd84 returns x, the last corrected state: different only on a grid that does not end at 0)."""
    s_in = x.new_ones([x.shape[0]])
    lambdas = _lambda(sigmas)
    keep = max(predictor_order, corrector_order)
    x_pred, h, tau_t, noise, history = x, 0.0, 0.0, 0.0, []
    lower_order_to_end = sigmas[-1].item() == 0
    n = len(sigmas) - 1
    for i in range(n):
        denoised = model(x_pred, sigmas[i] * s_in)
        history = [*history, denoised][-keep:]
        p_used = min(predictor_order, len(history))
        c_used = 0 if i == 0 or (sigmas[i + 1] == 0 and not use_pece) else min(corrector_order, len(history))
        if lower_order_to_end:
            p_used = min(p_used, n - 1 - i)
            c_used = min(c_used, n - i)
        if c_used == 0:
            x = x_pred
        else:
            b = _adams_coeffs(sigmas[i], lambdas[i - c_used + 1: i + 1], lambdas[i - 1], lambdas[i], tau_t,
                              simple_order_2, corrector=True)
            correction = torch.tensordot(torch.stack(history[-c_used:], dim=1), b.float(), dims=([1], [0]))
            x = float(sigmas[i] / sigmas[i - 1] * (-(tau_t**2) * h).exp()) * x + correction
            if tau_t > 0 and s_noise > 0:
                x = x + noise
            if use_pece:
                denoised = model(x, sigmas[i] * s_in)
                history[-1] = denoised
        if sigmas[i + 1] == 0:
            x_pred = denoised
        else:
            tau_t = tau_func(sigmas[i + 1])
            b = _adams_coeffs(sigmas[i + 1], lambdas[i - p_used + 1: i + 1], lambdas[i], lambdas[i + 1], tau_t,
                              simple_order_2, corrector=False)
            prediction = torch.tensordot(torch.stack(history[-p_used:], dim=1), b.float(), dims=([1], [0]))
            h = lambdas[i + 1] - lambdas[i]
            x_pred = float(sigmas[i + 1] / sigmas[i] * (-(tau_t**2) * h).exp()) * x + prediction
            if tau_t > 0 and s_noise > 0:
                std = float(sigmas[i + 1] * (-2 * tau_t**2 * h).expm1().neg().sqrt()) * s_noise
                noise = noise_sampler(sigmas[i], sigmas[i + 1]) * std
                x_pred = x_pred + noise
    return x_pred


def reference_lcm(model, x, sigmas, noise_sampler):
    """ComfyUI sample_lcm with EPS noise_scaling (x + sigma noise)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
    return x


# --- the cases ---------------------------------------------------------------------------------------------------


def _sa_reference(use_pece=False, **options):
    def bind(scheduler):
        config = scheduler.config
        tau = comfy_tau_func(scheduler.log_sigmas, config.eta, config.sde_start_percent, config.sde_end_percent)
        return partial(reference_sa_solver, tau_func=tau, use_pece=use_pece, **options)

    return bind


def _fixed(reference, **options):
    return lambda scheduler: partial(reference, **options)


SAMPLERS = {  # name: (class, our config, reference builder)
    "er_sde": (ERSDESampler, {}, _fixed(reference_er_sde)),
    "seeds_2": (SEEDS2Sampler, {}, _fixed(reference_seeds_2)),
    "seeds_3": (SEEDS3Sampler, {}, _fixed(reference_seeds_3)),
    "sa_solver": (SASolverSampler, {}, _sa_reference()),
    "sa_solver_pece": (SASolverPECESampler, {}, _sa_reference(use_pece=True)),
    "exp_heun_2_x0": (ExpHeun2X0Sampler, {}, _fixed(reference_seeds_2, eta=0.0, s_noise=0.0, r=1.0,
                                                    solver_type="phi_2")),
    "exp_heun_2_x0_sde": (ExpHeun2X0SDESampler, {}, _fixed(reference_seeds_2, r=1.0, solver_type="phi_2")),
    "lcm": (LCMSampler, {}, _fixed(reference_lcm)),
}

DETERMINISTIC = {  # the noise switched off where the sampler can (exp_heun_2_x0 is always deterministic)
    "er_sde": ({"s_noise": 0.0}, _fixed(reference_er_sde, s_noise=0.0)),
    "seeds_2": ({"eta": 0.0}, _fixed(reference_seeds_2, eta=0.0)),
    "seeds_3": ({"eta": 0.0}, _fixed(reference_seeds_3, eta=0.0)),
    "sa_solver": ({"eta": 0.0}, _sa_reference()),
    "sa_solver_pece": ({"eta": 0.0}, _sa_reference(use_pece=True)),
    "exp_heun_2_x0": ({}, _fixed(reference_seeds_2, eta=0.0, s_noise=0.0, r=1.0, solver_type="phi_2")),
    "exp_heun_2_x0_sde": ({"s_noise": 0.0}, _fixed(reference_seeds_2, s_noise=0.0, r=1.0, solver_type="phi_2")),
}

OPTIONS = [  # (name, our config, reference options)
    ("seeds_2", {"solver_type": "phi_2"}, {"solver_type": "phi_2"}),
    ("seeds_2", {"r": 0.3, "eta": 0.5, "s_noise": 0.8}, {"r": 0.3, "eta": 0.5, "s_noise": 0.8}),
    ("seeds_3", {"r_1": 0.25, "r_2": 0.6, "eta": 0.7}, {"r_1": 0.25, "r_2": 0.6, "eta": 0.7}),
    ("er_sde", {"max_stage": 1}, {"max_stage": 1}),
    ("er_sde", {"max_stage": 2, "s_noise": 0.5}, {"max_stage": 2, "s_noise": 0.5}),
    ("exp_heun_2_x0", {"solver_type": "phi_1"}, {"solver_type": "phi_1"}),
    ("exp_heun_2_x0_sde", {"eta": 0.5, "solver_type": "phi_1"}, {"eta": 0.5, "solver_type": "phi_1"}),
    ("sa_solver", {"predictor_order": 1, "corrector_order": 0}, {"predictor_order": 1, "corrector_order": 0}),
    ("sa_solver", {"predictor_order": 2, "corrector_order": 2, "simple_order_2": True},
     {"predictor_order": 2, "corrector_order": 2, "simple_order_2": True}),
    ("sa_solver", {"predictor_order": 5, "corrector_order": 6, "s_noise": 0.5},
     {"predictor_order": 5, "corrector_order": 6, "s_noise": 0.5}),
    ("sa_solver_pece", {"predictor_order": 2, "corrector_order": 3, "simple_order_2": True},
     {"predictor_order": 2, "corrector_order": 3, "simple_order_2": True}),
    ("sa_solver_pece", {"corrector_order": 0}, {"corrector_order": 0}),  # no corrector: one call per step
    ("sa_solver", {"sde_start_percent": 0.0, "sde_end_percent": 1.0, "eta": 0.6}, {}),  # noise on every step
]

SCHEDULES = ["normal", "karras", "exponential", "simple", "sgm_uniform"]


class CountingDenoiser:
    """The oracle's denoiser, counting its calls; the model sees float32 noise levels, as in ComfyUI."""

    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.denoiser(x, sigma.float())


def _compare(cls, config, reference_builder, steps=10, sigmas=None, noise=True, dtype=torch.float64,
             **oracle_options):
    """Our sampler and the reference from the same latents and noise: (relative error, our calls, theirs). The
    reference does its scalar arithmetic on the grid in ``dtype``: float64 (as our Python floats) by default,
    float32 to reproduce ComfyUI's own rounding."""
    scheduler = cls.from_config(SD_CONFIG, **config)
    scheduler.set_timesteps(steps, sigmas=sigmas)  # custom sigmas, when given, set the step count
    model = make_eps_model(scheduler, scheduler.config.prediction_type)
    x, generator = initial_noise(scheduler)
    oracle_generator = torch.Generator().manual_seed(0)
    torch.randn(x.shape, generator=oracle_generator)  # the initial latents' draw
    state = generator.get_state()
    ours = run_ours(scheduler, model, x.clone(), generator)
    if noise:
        noise_sampler = generator_noise_sampler(oracle_generator, x)
    else:
        assert torch.equal(generator.get_state(), state), "a deterministic configuration drew noise"

        def noise_sampler(sigma, sigma_next):
            raise AssertionError("the deterministic reference drew noise")

    denoiser = CountingDenoiser(oracle_denoiser(scheduler, model))
    reference = reference_builder(scheduler)(denoiser, x.clone(), scheduler.sigmas.to(dtype), noise_sampler,
                                                 **oracle_options)
    return relative_error(ours, reference), len(scheduler.timesteps), denoiser.calls


@pytest.mark.parametrize("timestep_type", ["continuous", "discrete"])
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_matches_comfyui_with_the_same_noise(name, schedule, timestep_type):
    cls, config, reference = SAMPLERS[name]
    error, ours, theirs = _compare(cls, {**config, "schedule": schedule, "timestep_type": timestep_type}, reference)
    assert ours == theirs
    assert error < 1e-5


@pytest.mark.parametrize("schedule", ["karras", "exponential"])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_matches_comfyui_float32_arithmetic(name, schedule):
    """ComfyUI computes the step coefficients from float32 sigmas: that rounding alone moves the result by up to
    ~1.6e-5 (er_sde, exp_heun_2_x0_sde on karras), hence the looser bound."""
    cls, config, reference = SAMPLERS[name]
    error, ours, theirs = _compare(cls, {**config, "schedule": schedule}, reference, dtype=torch.float32)
    assert ours == theirs
    assert error < 5e-5


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_matches_comfyui_on_v_prediction(name):
    cls, config, reference = SAMPLERS[name]
    error, ours, theirs = _compare(cls, {**config, "schedule": "karras", "prediction_type": "v_prediction"},
                                   reference)
    assert ours == theirs
    assert error < 1e-5


@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_without_noise_is_deterministic_and_matches(name):
    cls = SAMPLERS[name][0]
    config, reference = DETERMINISTIC[name]
    scheduler = cls.from_config(SD_CONFIG, **config)
    assert not scheduler.is_stochastic
    error, ours, theirs = _compare(cls, {**config, "schedule": "karras"}, reference, noise=False)
    assert ours == theirs
    assert error < 1e-5


@pytest.mark.parametrize(("name", "config", "options"), OPTIONS)
def test_options_match_comfyui(name, config, options):
    cls, base, reference = SAMPLERS[name]
    error, ours, theirs = _compare(cls, {**base, **config, "schedule": "exponential"}, reference, **options)
    assert ours == theirs
    assert error < 1e-5


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_grid_that_stops_above_zero(name):
    """Custom sigmas without a final 0: every step is a full (noisy) step, no final denoise."""
    cls, config, reference = SAMPLERS[name]
    sigmas = [14.6, 8.0, 4.0, 2.0, 1.0, 0.5, 0.25]
    error, ours, theirs = _compare(cls, config, reference, sigmas=sigmas)
    assert ours == theirs
    assert error < 1e-5


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_few_steps(name, steps):
    cls, config, reference = SAMPLERS[name]
    error, ours, theirs = _compare(cls, {**config, "schedule": "karras"}, reference, steps=steps)
    assert ours == theirs
    assert error < 1e-5


def test_sa_solver_sixth_order_on_many_small_steps():
    orders = {"predictor_order": 6, "corrector_order": 6}
    error, ours, theirs = _compare(SASolverPECESampler, {**orders, "schedule": "karras"}, _sa_reference(True),
                                   steps=25, **orders)
    assert ours == theirs == 49
    assert error < 1e-5


def test_calls_per_step():
    grid = {"schedule": "karras"}
    expected = {"er_sde": 10, "seeds_2": 19, "seeds_3": 28, "sa_solver": 10, "sa_solver_pece": 19,
                "exp_heun_2_x0": 19, "exp_heun_2_x0_sde": 19, "lcm": 10}
    for name, calls in expected.items():
        scheduler = SAMPLERS[name][0].from_config(SD_CONFIG, **grid)
        scheduler.set_timesteps(10)
        assert len(scheduler.timesteps) == calls, name


def test_exp_heun_2_x0_is_seeds_2_at_r_1_with_phi_2():
    """ComfyUI PR #11360: the presets are seeds_2 with r = 1 and solver_type phi_2."""
    for preset, config in ((ExpHeun2X0Sampler, {"eta": 0.0, "s_noise": 0.0}), (ExpHeun2X0SDESampler, {})):
        outputs = []
        for cls, own in ((preset, {}), (SEEDS2Sampler, {"r": 1.0, "solver_type": "phi_2", **config})):
            scheduler = cls.from_config(SD_CONFIG, schedule="karras", **own)
            scheduler.set_timesteps(8)
            x, generator = initial_noise(scheduler)
            outputs.append(run_ours(scheduler, make_eps_model(scheduler), x, generator))
        assert torch.equal(*outputs)


@pytest.mark.parametrize("h", [1e-4, 0.05, 0.7, 4.0])
@pytest.mark.parametrize("tau", [0.0, 1.0, 3.0])
def test_adams_weights_integrate_polynomials_exactly(h, tau):
    """sum_j b_j p(lambda_j) = k int e^(-k (lambda_t - l)) p(l) dl for every p of degree < order (eq. 15)."""
    lambda_s = -1.3
    lambda_t = lambda_s + h
    nodes = [lambda_s - 0.9 * h * j for j in range(4)][::-1]
    weights = adams_weights(nodes, lambda_s, lambda_t, tau)
    k = 1 + tau**2
    assert sum(weights) == pytest.approx(-math.expm1(-k * h), rel=1e-12)
    # p(l) = l - lambda_t: k int_{-h}^0 e^(k u) u du = h e^(-kh) - (1 - e^(-kh)) / k
    moment = h * math.exp(-k * h) + math.expm1(-k * h) / k
    assert sum(w * (node - lambda_t) for w, node in zip(weights, nodes, strict=True)) == pytest.approx(moment, rel=1e-9)
