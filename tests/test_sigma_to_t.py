"""sigma -> fractional training timestep: our binary search equals diffusers' full comparison table."""

import numpy as np
import pytest
import torch

from schedcmp.core.schedulers.schedules import sigma_to_t, sigma_to_t_float32

diffusers = pytest.importorskip("diffusers")


def sd15_log_sigmas(dtype=np.float32) -> np.ndarray:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    abar = torch.cumprod(1 - betas, 0)
    return np.log(((1 - abar) / abar) ** 0.5).numpy().astype(dtype)


def with_ties(log_sigmas: np.ndarray) -> np.ndarray:
    tied = log_sigmas.copy()
    tied[10:20] = tied[10]
    tied[-5:] = tied[-5]
    return tied


GRIDS = {"sd15 float32": sd15_log_sigmas(), "sd15 float64": sd15_log_sigmas(np.float64),
         "tied levels": with_ties(sd15_log_sigmas(np.float64))}


def probe_sigmas(log_sigmas: np.ndarray) -> np.ndarray:
    """Random sigmas over the range, every training level exactly, and sigmas beyond both ends [m]."""
    rng = np.random.default_rng(0)
    inside = np.exp(rng.uniform(log_sigmas[0], log_sigmas[-1], 300))
    levels = np.exp(log_sigmas.astype(np.float64))
    return np.concatenate([inside, levels, [1e-12, 1e-3, 0.0, levels[-1] * 3, 1e4]])


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("grid", list(GRIDS))
def test_numpy_conversion_equals_diffusers(grid):
    log_sigmas = GRIDS[grid]
    sigmas = probe_sigmas(log_sigmas)
    oracle = diffusers.EulerDiscreteScheduler()._sigma_to_t(sigmas, log_sigmas)
    np.testing.assert_array_equal(sigma_to_t(sigmas, log_sigmas), oracle)


@pytest.mark.parametrize("grid", list(GRIDS))
def test_float32_torch_conversion_equals_diffusers(grid):
    log_sigmas = GRIDS[grid]
    sigmas = torch.from_numpy(probe_sigmas(log_sigmas).astype(np.float32))
    convert, log_train = diffusers.KDPM2DiscreteScheduler()._sigma_to_t, torch.from_numpy(log_sigmas)
    oracle = torch.stack([convert(sigma, log_train) for sigma in sigmas])  # one at a time, as diffusers calls it
    got = sigma_to_t_float32(sigmas, log_sigmas)
    torch.testing.assert_close(got, oracle, rtol=0, atol=0, equal_nan=True)  # NaN where two levels tie
