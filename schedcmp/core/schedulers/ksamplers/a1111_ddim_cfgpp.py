"""A1111 1.10's DDIM CFG++ (``modules/sd_samplers_timesteps_impl.py`` ``ddim_cfgpp``, PR #16035): DDIM whose
renoising direction is the unconditional noise prediction (Chung et al. 2024, "CFG++: Manifold-constrained
Classifier Free Guidance for Diffusion Models", arXiv:2406.08070, Algorithm 1), on A1111's DDIM timesteps."""

from __future__ import annotations

from typing import ClassVar

import torch

from ...configuration import Fraction
from ..k_sampler import Program, sampler_config
from .a1111_ddim import A1111TimestepSampler


class A1111DDIMCFGPPSampler(A1111TimestepSampler):
    """DDIM CFG++ on A1111's timesteps: x <- D + sigma_down (x - D_uncond) / sigma + sigma_up z.

    D is the guided prediction, D_uncond the unconditional one (``step``'s ``uncond_output``); one model call
    (one guided batch) per step. A1111 guides with its CFG scale times ``guidance_scale_multiplier`` (1 / 12.5,
    mapping scales 0..12.5 onto CFG++'s lambda in 0..1): whoever combines the predictions applies it.
    """

    needs_uncond = True
    noise_options = ("eta",)
    guidance_scale_multiplier: ClassVar[float] = 1 / 12.5  # A1111's cond_scale_miltiplier for this sampler

    @sampler_config
    def __init__(self, eta: Fraction = 0.0):
        """A1111's DDIM CFG++ (eta: A1111's "Eta DDIM" setting, default 0)."""

    @property
    def is_stochastic(self) -> bool:
        return self.config.eta > 0

    def program(self, x: torch.Tensor) -> Program:
        return self.ddim_program(x, self.config.eta, cfgpp=True)
