"""Latent RMSE, PSNR and SSIM against values worked out by hand on small arrays, and SSIM against torchmetrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchmetrics.functional.image import structural_similarity_index_measure

from schedcmp.metrics import image_array, latent_rmse, psnr, ssim, ssim_map


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


# --- SSIM against torchmetrics, the reference implementation we replaced -------------------------------------------


def torchmetrics_ssim(image: Image.Image, reference: Image.Image) -> float:
    as_batch = [torch.from_numpy(image_array(x)).permute(2, 0, 1)[None] for x in (image, reference)]
    return float(structural_similarity_index_measure(*as_batch, data_range=1.0))


def noise(width: int, height: int, seed: int) -> Image.Image:
    return rgb(np.random.default_rng(seed).integers(0, 256, (height, width, 3)))


def scene(width: int, height: int) -> Image.Image:
    """A smooth picture with edges: gradients, a disc and stripes, so windows see both flat and busy regions."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    disc = ((x - 0.5) ** 2 + (y - 0.4) ** 2 < 0.06) * 0.5
    stripes = 0.2 * (np.sin(40 * x) > 0)
    channels = [np.clip(c, 0, 1) for c in (x + disc, y + stripes, 1 - x * y + disc - stripes)]
    return rgb(np.round(np.stack(channels, axis=-1) * 255))


def noisy(image: Image.Image, scale: float, seed: int) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64) + np.random.default_rng(seed).normal(0, scale, (image.height, image.width, 3))
    return rgb(np.clip(np.round(pixels), 0, 255))


def shifted(image: Image.Image, dx: int, dy: int) -> Image.Image:
    return rgb(np.roll(np.asarray(image), (dy, dx), axis=(0, 1)))


def grey(image: Image.Image) -> Image.Image:
    return image.convert("L")  # image_array turns it back into three equal channels


SSIM_PAIRS = {
    "random": (noise(32, 32, 1), noise(32, 32, 2)),
    "identical noise": (noise(32, 32, 3), noise(32, 32, 3)),
    "identical scene": (scene(64, 64), scene(64, 64)),
    "constant": (flat(200, 24), flat(30, 24)),
    "constant vs noise": (flat(128, 24), noise(24, 24, 4)),
    "black vs white": (flat(0, 16), flat(255, 16)),
    "shifted 1 px": (scene(64, 64), shifted(scene(64, 64), 1, 0)),
    "shifted 3 px diagonally": (scene(64, 64), shifted(scene(64, 64), 3, -2)),
    "noisy": (scene(64, 64), noisy(scene(64, 64), 12, 5)),
    "slightly noisy": (scene(64, 64), noisy(scene(64, 64), 1, 6)),
    "blurred": (scene(64, 64), scene(64, 64).filter(ImageFilter.GaussianBlur(2))),
    "inverted": (scene(64, 64), rgb(255 - np.asarray(scene(64, 64)))),
    "512x320 noisy": (scene(512, 320), noisy(scene(512, 320), 8, 7)),
    "512x320 shifted": (scene(512, 320), shifted(scene(512, 320), 2, 1)),
    "grey noisy": (grey(scene(64, 64)), grey(noisy(scene(64, 64), 12, 8))),
    "grey vs RGB": (grey(scene(64, 64)), scene(64, 64)),
    "not square 13x7": (noise(13, 7, 9), noisy(noise(13, 7, 9), 20, 10)),
    "8x8, smaller than the window": (noise(8, 8, 11), noisy(noise(8, 8, 11), 20, 12)),
    "6x6, the smallest allowed": (noise(6, 6, 13), noise(6, 6, 14)),
}


@pytest.mark.parametrize(("image", "reference"), SSIM_PAIRS.values(), ids=SSIM_PAIRS.keys())
def test_ssim_equals_torchmetrics(image: Image.Image, reference: Image.Image) -> None:
    assert ssim(image, reference) == pytest.approx(torchmetrics_ssim(image, reference), abs=1e-6, rel=0)


def test_ssim_pairs_span_the_range() -> None:
    # the table is only a check if it holds very similar, unrelated and anti-correlated pairs
    values = [ssim(*pair) for pair in SSIM_PAIRS.values()]
    assert max(values) == pytest.approx(1.0)
    assert min(values) < 0
    assert any(0.2 < v < 0.9 for v in values)


def test_ssim_map_keeps_the_image_size() -> None:
    a, b = image_array(scene(40, 24)), image_array(noisy(scene(40, 24), 10, 0))
    assert ssim_map(a, b).shape == (24, 40, 3)


@pytest.mark.parametrize("size", [(5, 5), (5, 16), (16, 3), (1, 1)])
def test_ssim_refuses_images_too_small_to_mirror_the_window(size: tuple[int, int]) -> None:
    # torchmetrics fails here too, inside torch's reflection padding; ours says why
    image = rgb(np.zeros((size[1], size[0], 3)))
    with pytest.raises(ValueError, match=rf"SSIM needs images of at least 6x6 pixels, .*; got {size[0]}x{size[1]}"):
        ssim(image, image)


def test_ssim_refuses_images_of_different_sizes() -> None:
    with pytest.raises(ValueError, match=r"images of size \(16, 16\) and \(8, 8\) cannot be compared"):
        ssim(flat(0), flat(0, size=8))


def test_metrics_module_imports_nothing_heavy() -> None:
    # importing torchmetrics alone takes over a second; the metrics need only numpy, torch and PIL
    import subprocess
    import sys

    code = ("import sys, schedcmp.metrics; "
            "print(','.join(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
                 .stdout.strip().split(","))
    assert not loaded & {"torchmetrics", "transformers", "diffusers", "scipy", "sklearn", "lightning_utilities",
                         "matplotlib", "cv2", "skimage"}
