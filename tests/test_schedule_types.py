"""Every schedule type equals its tool's definition: k-diffusion's get_sigmas_* and A1111's and ComfyUI's
schedulers, written out from their source in tests/tool_schedules.py (A1111 1.10 modules/sd_schedulers.py, ComfyUI
comfy/samplers.py)."""

from __future__ import annotations

import pytest
import torch
from kdiffusion_oracle import external, sampling
from tool_schedules import (
    ComfyModelSampling,
    a1111_align_your_steps,
    a1111_beta,
    a1111_ddim,
    a1111_exponential,
    a1111_karras,
    a1111_kl_optimal,
    a1111_normal,
    a1111_polyexponential,
    a1111_sgm_uniform,
    a1111_simple,
    a1111_uniform,
    comfy_beta,
    comfy_ddim_uniform,
    comfy_exponential,
    comfy_karras,
    comfy_kl_optimal,
    comfy_linear_quadratic,
    comfy_normal,
    comfy_sgm_uniform,
    comfy_simple,
)

from schedcmp.core.errors import ConfigError
from schedcmp.core.schedulers.schedule_types import (
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


# The references: the tools' own schedule functions (tests/tool_schedules.py) on this config's training sigmas.
MS = ComfyModelSampling(DENOISER.sigmas, DENOISER.log_sigmas)


def _a1111(function, **options):
    return lambda n: function(n, SIGMA_MIN, SIGMA_MAX, DENOISER, **options)


def _comfy(function):
    return lambda n: function(MS, n)


REFERENCES = {
    "uniform": _a1111(a1111_uniform),
    "karras": _a1111(a1111_karras),
    "exponential": _a1111(a1111_exponential),
    "polyexponential": _a1111(a1111_polyexponential),
    "sgm_uniform": _a1111(a1111_sgm_uniform),
    "normal": _a1111(a1111_normal),
    "simple": _a1111(a1111_simple),
    "ddim_uniform": _a1111(a1111_ddim),
    "beta": _a1111(a1111_beta),
    "kl_optimal": _a1111(a1111_kl_optimal),
    "align_your_steps": _a1111(a1111_align_your_steps),
    "comfy_beta": _comfy(comfy_beta),
    "comfy_kl_optimal": _comfy(comfy_kl_optimal),
    "linear_quadratic": _comfy(comfy_linear_quadratic),
}
COMFY_SAME_AS_A1111 = {  # ComfyUI's own code for the names both tools share
    "normal": _comfy(comfy_normal),
    "sgm_uniform": _comfy(comfy_sgm_uniform),
    "simple": _comfy(comfy_simple),
    "karras": _comfy(comfy_karras),
    "exponential": _comfy(comfy_exponential),
    "ddim_uniform": _comfy(comfy_ddim_uniform),
}


def test_every_schedule_type_has_a_reference() -> None:
    assert set(REFERENCES) == {s.id for s in SCHEDULE_TYPES}


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("schedule", sorted(REFERENCES))
def test_schedule_equals_its_tools_definition(schedule: str, steps: int) -> None:
    if steps == 1 and schedule == "comfy_kl_optimal":  # ComfyUI divides by n - 1: its own grid is NaN, ours refused
        assert REFERENCES[schedule](steps).isnan().any()
        with pytest.raises(ConfigError, match="kl_optimal needs at least 2 steps"):
            sigma_grid(schedule, steps, TRAIN)
        return
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
    torch.testing.assert_close(sigma_grid("beta", 10, TRAIN, alpha=0.5, beta=0.7),
                               _a1111(a1111_beta, alpha=0.5, beta=0.7)(10), rtol=2e-6, atol=1e-7)


def test_align_your_steps_has_an_sdxl_table() -> None:
    torch.testing.assert_close(sigma_grid("align_your_steps", 20, TRAIN, ays_model="sdxl"),
                               _a1111(a1111_align_your_steps, is_sdxl=True)(20))


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
    with pytest.raises(ConfigError, match=r"^unknown schedule 'nope'; schedules: uniform, karras"):
        sigma_grid("nope", 10, TRAIN)


@pytest.mark.parametrize("schedule", ["karras", "exponential", "polyexponential"])
def test_a1111s_sigma_range_settings_bound_the_schedule(schedule: str) -> None:
    reference = getattr(sampling(), f"get_sigmas_{schedule}")(10, 0.1, 10.0)  # A1111's old Karras range
    torch.testing.assert_close(sigma_grid(schedule, 10, TRAIN, min_sigma=0.1, max_sigma=10.0), reference)


def test_the_sigma_range_options_reach_the_grid() -> None:
    from schedcmp.core import make_scheduler

    scheduler = make_scheduler("DPM++ 2M", config={}, schedule_sigma_min=0.1, schedule_sigma_max=10.0)
    scheduler.set_timesteps(10)
    torch.testing.assert_close(scheduler.sigmas, sampling().get_sigmas_karras(10, 0.1, 10.0))
