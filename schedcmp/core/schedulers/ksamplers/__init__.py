"""The k-diffusion, A1111 and ComfyUI samplers, each a ``KSampler`` with diffusers' step contract."""

from __future__ import annotations

from ..k_sampler import KSampler
from .euler import EulerSampler

KSAMPLER_CLASSES: tuple[type[KSampler], ...] = (EulerSampler,)

__all__ = ["KSAMPLER_CLASSES", "EulerSampler", "KSampler"]
