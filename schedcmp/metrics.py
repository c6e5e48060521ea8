"""Distances between two results of the same seed: latent RMSE, image PSNR and SSIM."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

# SSIM constants of Wang et al. 2004 (sec. III-C): an 11x11 circular-symmetric Gaussian window of standard deviation
# 1.5 pixels, K1 = 0.01, K2 = 0.03, on pixels in [0, 1] (dynamic range L = 1).
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # 11 taps; the same size torchmetrics derives from sigma, 2 * int(3.5 * sigma + 0.5) + 1
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_DATA_RANGE = 1.0


def latent_rmse(latents: torch.Tensor, reference: torch.Tensor) -> float:
    """Root mean square of the difference of two latent tensors, computed in float64."""
    if latents.shape != reference.shape:
        raise ValueError(f"latents of shape {tuple(latents.shape)} cannot be compared with {tuple(reference.shape)}")
    difference = latents.detach().double().cpu() - reference.detach().double().cpu()
    return math.sqrt(float(difference.square().mean()))


def image_array(image: Image.Image) -> np.ndarray:
    """An 8-bit image as float64 RGB in [0, 1], [H, W, 3]."""
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def _checked_pair(image: Image.Image, reference: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    a, b = image_array(image), image_array(reference)
    if a.shape != b.shape:
        raise ValueError(f"images of size {image.size} and {reference.size} cannot be compared")
    return a, b


def psnr(image: Image.Image, reference: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB, 10 log10(1 / MSE) on [0, 1] pixels; infinite for identical images."""
    a, b = _checked_pair(image, reference)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _gaussian_taps(radius: int = SSIM_RADIUS, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """One-dimensional Gaussian weights at offsets -radius..radius, summing to one (Wang et al. 2004, sec. III-C)."""
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def _windowed_mean(planes: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Gaussian-weighted mean around every pixel of [H, W, C] planes; the edges are mirrored so the size is kept.

    The 2-D window is the outer product of the 1-D taps, so it is applied as a pass down the rows and then one along
    the columns. Mirroring leaves out the edge pixel itself (1 2 3 | 2 1), the way torch's 'reflect' padding does.
    """
    radius = len(taps) // 2
    height, width = planes.shape[:2]
    padded = np.pad(planes, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    down = sum(weight * padded[k : k + height] for k, weight in enumerate(taps))
    return sum(weight * down[:, k : k + width] for k, weight in enumerate(taps))


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM index at every pixel of each channel of two [H, W, C] arrays in [0, 1] (Wang et al. 2004, eq. 13)."""
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"SSIM compares two [H, W, C] arrays of one shape, not {a.shape} and {b.shape}")
    height, width = a.shape[:2]
    if min(height, width) <= SSIM_RADIUS:
        side = SSIM_RADIUS + 1
        raise ValueError(f"SSIM needs images of at least {side}x{side} pixels, so that its "
                         f"{2 * SSIM_RADIUS + 1}x{2 * SSIM_RADIUS + 1} window can be mirrored at the edges; "
                         f"got {width}x{height}")
    taps = _gaussian_taps()
    a, b = a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)
    mu_a, mu_b = _windowed_mean(a, taps), _windowed_mean(b, taps)
    # local (co)variances as E[x y] - E[x] E[y]; rounding can push a variance just below zero, so it is clipped
    var_a = np.maximum(_windowed_mean(a * a, taps) - mu_a * mu_a, 0.0)
    var_b = np.maximum(_windowed_mean(b * b, taps) - mu_b * mu_b, 0.0)
    cov_ab = _windowed_mean(a * b, taps) - mu_a * mu_b
    c1, c2 = (SSIM_K1 * SSIM_DATA_RANGE) ** 2, (SSIM_K2 * SSIM_DATA_RANGE) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov_ab + c2)) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))


def ssim(image: Image.Image, reference: Image.Image) -> float:
    """Mean structural similarity over every pixel and RGB channel (Wang et al. 2004, eqs. 13 and 17)."""
    return float(ssim_map(*_checked_pair(image, reference)).mean())
