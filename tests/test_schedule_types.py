"""Every schedule type equals its tool's definition: k-diffusion's get_sigmas_* and A1111's and ComfyUI's
schedulers, written out here from their source (A1111 1.10 modules/sd_schedulers.py, ComfyUI comfy/samplers.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from kdiffusion_oracle import external, sampling

from schedcmp.core.errors import ConfigError
from schedcmp.core.schedulers.schedule_types import (
    AYS_SIGMAS,
    SCHEDULE_TYPES,
    checked_custom_sigmas,
    nearest_timestep,
    sigma_grid,
    sigma_to_t,
)
from schedcmp.core.schedulers.sigma_space import train_alphas_cumprod

CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
          "trained_betas": None}
ALPHAS_CUMPROD = train_alphas_cumprod(CONFIG)
TRAIN = ((1 - ALPHAS_CUMPROD) / ALPHAS_CUMPROD) ** 0.5
DENOISER = external().DiscreteEpsDDPMDenoiser(lambda x, t: x, ALPHAS_CUMPROD, quantize=False)
SIGMA_MIN, SIGMA_MAX = float(DENOISER.sigmas[0]), float(DENOISER.sigmas[-1])
STEPS = [1, 5, 7, 10, 20, 30]


# --- A1111 1.10, as modules/sd_schedulers.py computes each grid (inner_model = k-diffusion's denoiser) ----------

def a1111_sgm_uniform(n):
    start = DENOISER.sigma_to_t(torch.tensor(SIGMA_MAX))
    end = DENOISER.sigma_to_t(torch.tensor(SIGMA_MIN))
    sigs = [DENOISER.t_to_sigma(ts) for ts in torch.linspace(start, end, n + 1)[:-1]]
    return torch.FloatTensor([*sigs, 0.0])


def a1111_normal(n):
    start = DENOISER.sigma_to_t(torch.tensor(SIGMA_MAX))
    end = DENOISER.sigma_to_t(torch.tensor(SIGMA_MIN))
    sigs = [DENOISER.t_to_sigma(ts) for ts in torch.linspace(start, end, n)]
    return torch.FloatTensor([*sigs, 0.0])


def a1111_simple(n):
    stride = len(DENOISER.sigmas) / n
    return torch.FloatTensor([float(DENOISER.sigmas[-(1 + int(x * stride))]) for x in range(n)] + [0.0])


def a1111_ddim(n):
    stride, sigs = max(len(DENOISER.sigmas) // n, 1), []
    x = 1
    while x < len(DENOISER.sigmas):
        sigs.append(float(DENOISER.sigmas[x]))
        x += stride
    return torch.FloatTensor([*sigs[::-1], 0.0])


def a1111_beta(n, alpha=0.6, beta=0.6):
    quantiles = [scipy.stats.beta.ppf(x, alpha, beta) for x in 1 - np.linspace(0, 1, n)]
    return torch.FloatTensor([SIGMA_MIN + q * (SIGMA_MAX - SIGMA_MIN) for q in quantiles] + [0.0])


def a1111_kl_optimal(n):
    alpha_min, alpha_max = torch.arctan(torch.tensor(SIGMA_MIN)), torch.arctan(torch.tensor(SIGMA_MAX))
    index = torch.arange(n + 1)
    return torch.tan(index / n * alpha_min + (1.0 - index / n) * alpha_max)


def a1111_align_your_steps(n, table=AYS_SIGMAS["sd15"]):
    table = list(table)
    if n == len(table):
        return torch.FloatTensor([*table, 0.0])
    xs, ys = np.linspace(0, 1, len(table)), np.log(table[::-1])
    interpolated = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].copy()
    return torch.FloatTensor(np.append(interpolated, [0.0]))


# --- ComfyUI, as comfy/samplers.py computes each grid (model_sampling: integer timestep(), log-linear sigma()) ----

def comfy_timestep(sigma):
    return (torch.as_tensor(sigma).log() - DENOISER.log_sigmas[:, None]).abs().argmin(dim=0).view(())


def comfy_sigma(t):
    t = torch.clamp(torch.as_tensor(t).float(), 0, len(DENOISER.sigmas) - 1)
    low, high, w = t.floor().long(), t.ceil().long(), t.frac()
    return ((1 - w) * DENOISER.log_sigmas[low] + w * DENOISER.log_sigmas[high]).exp()


def comfy_normal(n, sgm=False):
    start, end = comfy_timestep(torch.tensor(SIGMA_MAX)), comfy_timestep(torch.tensor(SIGMA_MIN))
    timesteps = torch.linspace(start, end, n + 1)[:-1] if sgm else torch.linspace(start, end, n)
    return torch.FloatTensor([float(comfy_sigma(ts)) for ts in timesteps] + [0.0])


def comfy_beta(n, alpha=0.6, beta=0.6):
    total = len(DENOISER.sigmas) - 1
    ts = np.rint(scipy.stats.beta.ppf(1 - np.linspace(0, 1, n, endpoint=False), alpha, beta) * total)
    sigs, last = [], -1
    for t in ts:
        if t != last:
            sigs.append(float(DENOISER.sigmas[int(t)]))
        last = t
    return torch.FloatTensor([*sigs, 0.0])


def comfy_kl_optimal(n):
    ramp = torch.arange(n, dtype=torch.float).div_(n - 1)
    sigmas = ramp.new_zeros(n + 1)
    sigmas[:-1] = (ramp * math.atan(SIGMA_MIN) + (1 - ramp) * math.atan(SIGMA_MAX)).tan_()
    return sigmas


def comfy_linear_quadratic(n, threshold=0.025):
    if n == 1:
        ramp = [1.0, 0.0]
    else:
        linear_steps = n // 2
        linear = [i * threshold / linear_steps for i in range(linear_steps)]
        diff = linear_steps - threshold * n
        quadratic_steps = n - linear_steps
        qc = diff / (linear_steps * quadratic_steps**2)
        lc = threshold / linear_steps - 2 * diff / (quadratic_steps**2)
        const = qc * linear_steps**2
        ramp = [1.0 - x for x in linear + [qc * i**2 + lc * i + const for i in range(linear_steps, n)] + [1.0]]
    return torch.FloatTensor(ramp) * DENOISER.sigmas[-1]


REFERENCES = {
    "uniform": lambda n: DENOISER.get_sigmas(n),
    "karras": lambda n: sampling().get_sigmas_karras(n, SIGMA_MIN, SIGMA_MAX),
    "exponential": lambda n: sampling().get_sigmas_exponential(n, SIGMA_MIN, SIGMA_MAX),
    "polyexponential": lambda n: sampling().get_sigmas_polyexponential(n, SIGMA_MIN, SIGMA_MAX),
    "sgm_uniform": a1111_sgm_uniform,
    "normal": a1111_normal,
    "simple": a1111_simple,
    "ddim_uniform": a1111_ddim,
    "beta": a1111_beta,
    "kl_optimal": a1111_kl_optimal,
    "align_your_steps": a1111_align_your_steps,
    "comfy_beta": comfy_beta,
    "comfy_kl_optimal": comfy_kl_optimal,
    "linear_quadratic": comfy_linear_quadratic,
}
COMFY_SAME_AS_A1111 = {  # ComfyUI's own code for the names both tools share
    "normal": comfy_normal,
    "sgm_uniform": lambda n: comfy_normal(n, sgm=True),
}


def test_every_schedule_type_has_a_reference() -> None:
    assert set(REFERENCES) == {s.id for s in SCHEDULE_TYPES}


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("schedule", sorted(REFERENCES))
def test_schedule_equals_its_tools_definition(schedule: str, steps: int) -> None:
    if steps == 1 and schedule == "comfy_kl_optimal":
        pytest.skip("ComfyUI's kl_optimal divides by n - 1: undefined at one step (NaN there too)")
    ours = sigma_grid(schedule, steps, TRAIN)
    reference = REFERENCES[schedule](steps).float()
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("schedule", sorted(COMFY_SAME_AS_A1111))
def test_comfyuis_code_gives_the_same_grid_for_the_shared_names(schedule: str, steps: int) -> None:
    torch.testing.assert_close(sigma_grid(schedule, steps, TRAIN), COMFY_SAME_AS_A1111[schedule](steps),
                               rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize(("steps", "length"), [(10, 11), (20, 21), (30, 32), (7, 9)])
def test_ddim_uniform_makes_more_steps_when_n_does_not_divide_1000(steps: int, length: int) -> None:
    assert len(sigma_grid("ddim_uniform", steps, TRAIN)) == length


@pytest.mark.parametrize(("rho", "schedule"), [(5.0, "karras"), (2.0, "polyexponential")])
def test_rho_is_an_option(rho: float, schedule: str) -> None:
    reference = getattr(sampling(), f"get_sigmas_{schedule}")(10, SIGMA_MIN, SIGMA_MAX, rho=rho)
    torch.testing.assert_close(sigma_grid(schedule, 10, TRAIN, rho=rho), reference)


def test_beta_alpha_and_beta_are_options() -> None:
    torch.testing.assert_close(sigma_grid("beta", 10, TRAIN, alpha=0.5, beta=0.7), a1111_beta(10, 0.5, 0.7),
                               rtol=2e-6, atol=1e-7)


def test_align_your_steps_has_an_sdxl_table() -> None:
    torch.testing.assert_close(sigma_grid("align_your_steps", 20, TRAIN, ays_model="sdxl"),
                               a1111_align_your_steps(20, AYS_SIGMAS["sdxl"]))


def test_kl_optimal_of_a1111_ends_at_sigma_min_and_comfys_at_zero() -> None:
    assert float(sigma_grid("kl_optimal", 10, TRAIN)[-1]) == pytest.approx(SIGMA_MIN, rel=1e-6)
    assert float(sigma_grid("comfy_kl_optimal", 10, TRAIN)[-1]) == 0.0


def test_fractional_and_nearest_timesteps_follow_k_diffusion() -> None:
    sigma = sampling().get_sigmas_karras(10, SIGMA_MIN, SIGMA_MAX)[:-1]
    torch.testing.assert_close(sigma_to_t(sigma, DENOISER.log_sigmas), DENOISER.sigma_to_t(sigma))
    quantized = external().DiscreteEpsDDPMDenoiser(lambda x, t: x, ALPHAS_CUMPROD, quantize=True)
    assert torch.equal(nearest_timestep(sigma, DENOISER.log_sigmas), quantized.sigma_to_t(sigma))


@pytest.mark.parametrize(("values", "message"), [
    ([14.6], "custom sigmas need at least two values (a start and an end), got 1"),
    ([14.6, float("nan")], "custom sigmas must be finite and >= 0"),
    ([1.0, 2.0, 0.0], "custom sigmas must decrease strictly, largest first"),
])
def test_custom_sigmas_are_checked(values, message) -> None:
    with pytest.raises(ConfigError) as error:
        checked_custom_sigmas(values, "EulerSampler")
    assert str(error.value) == f"EulerSampler: {message}"


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ConfigError, match="^unknown schedule 'nope'; schedules: uniform, karras"):
        sigma_grid("nope", 10, TRAIN)
