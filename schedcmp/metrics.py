"""Distances between two results of the same seed: latent RMSE, image PSNR and SSIM."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torchmetrics.functional.image import structural_similarity_index_measure


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


def ssim(image: Image.Image, reference: Image.Image) -> float:
    """Structural similarity (Wang et al. 2004, eq. 13; 11x11 Gaussian window, sigma 1.5) via torchmetrics."""
    a, b = _checked_pair(image, reference)
    as_batch = [torch.from_numpy(x).permute(2, 0, 1)[None] for x in (a, b)]  # [H, W, 3] -> [1, 3, H, W]
    return float(structural_similarity_index_measure(*as_batch, data_range=1.0))
