"""Latent RMSE, PSNR and SSIM against values worked out by hand on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from schedcmp.metrics import latent_rmse, psnr, ssim


def rgb(pixels: list[list[tuple[int, int, int]]] | np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(pixels, dtype=np.uint8), "RGB")


def flat(value: int, size: int = 16) -> Image.Image:
    return rgb(np.full((size, size, 3), value))


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], 1.0),
        ([3.0, 0.0], [0.0, 4.0], math.sqrt((9 + 16) / 2)),
        ([[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]], 0.0),
        ([0.5, -0.5, 0.5, -0.5], [0.0, 0.0, 0.0, 0.0], 0.5),
    ],
)
def test_latent_rmse(a, b, expected: float) -> None:
    assert latent_rmse(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected, rel=1e-12)


def test_latent_rmse_refuses_different_shapes() -> None:
    with pytest.raises(ValueError, match=r"latents of shape \(2,\) cannot be compared with \(3,\)"):
        latent_rmse(torch.zeros(2), torch.zeros(3))


def test_psnr_of_one_white_pixel_in_four() -> None:
    # MSE over 2x2x3 values: 3 of 12 are off by 1.0 -> 0.25; 10 log10(1 / 0.25) = 6.0206 dB
    black = rgb([[(0, 0, 0), (0, 0, 0)], [(0, 0, 0), (0, 0, 0)]])
    one_white = rgb([[(255, 255, 255), (0, 0, 0)], [(0, 0, 0), (0, 0, 0)]])
    assert psnr(one_white, black) == pytest.approx(10 * math.log10(4))


def test_psnr_of_a_one_level_offset() -> None:
    # every value off by 1/255: MSE = 1/255^2 -> 20 log10(255) = 48.13 dB
    assert psnr(flat(101), flat(100)) == pytest.approx(20 * math.log10(255))


def test_psnr_of_identical_images_is_infinite() -> None:
    assert psnr(flat(7), flat(7)) == math.inf


def test_ssim_of_identical_images_is_one() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3))
    assert ssim(rgb(noise), rgb(noise)) == pytest.approx(1.0)


def test_ssim_of_two_flat_images_is_the_luminance_term() -> None:
    # no variance anywhere: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1), C1 = (0.01 * 1)^2
    a, b = 128 / 255, 64 / 255
    expected = (2 * a * b + 1e-4) / (a * a + b * b + 1e-4)
    assert ssim(flat(128), flat(64)) == pytest.approx(expected, rel=1e-6)


def test_ssim_is_symmetric_and_below_one_for_different_images() -> None:
    rng = np.random.default_rng(1)
    x, y = (rgb(rng.integers(0, 256, (24, 24, 3))) for _ in range(2))
    assert ssim(x, y) == pytest.approx(ssim(y, x))
    assert ssim(x, y) < 0.1


def test_images_of_different_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"images of size \(16, 16\) and \(8, 8\) cannot be compared"):
        psnr(flat(0), flat(0, size=8))
