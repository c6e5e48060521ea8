"""ComfyUI's CFG++ samplers (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance",
arXiv:2406.08070, Sec. 3): the guided prediction D = D_u + lambda (D_c - D_u) is the step's data estimate, but
the noise that carries the sample to the next level is the *unconditional* one, eps_u = (x - D_u) / sigma.

In the VE form of a DDPM (eps / v) model the CFG++ DDIM step is x_next = D + sigma_next eps_u; ComfyUI grafts the
same swap onto Euler (ancestral), DPM-Solver++(2S) ancestral and (2M) (Lu et al. 2022, arXiv:2211.01095), the
RES second-order multistep method (Zhang et al. 2023, arXiv:2308.02157) and gradient estimation (Permenter & Yuan
2024, arXiv:2306.04848). Only ComfyUI has these names (``comfy/k_diffusion/sampling.py``); its flow-model (CONST)
branches are not ported.

Guidance scale. ComfyUI passes its ``cfg`` value unchanged as the scale of the guided prediction
(``comfy/samplers.py`` ``cfg_function``), so for these samplers the usual ``guidance_scale`` *is* CFG++'s lambda,
meant to be small (the paper's lambda lies in [0, 1]), not the 5 to 10 of ordinary CFG. Nothing is rescaled
here; A1111's DDIM CFG++ instead multiplies its CFG scale by 1 / 12.5 (``cond_scale_miltiplier``) to get lambda.

The unconditional prediction. ComfyUI reads D_u through a ``sampler_post_cfg_function`` hook that it installs
with ``disable_cfg1_optimization``, so at cfg = 1 it still runs the unconditional pass (D = D_c, and D_u is the
real unconditional prediction; with no negative conditioning at all, e.g. its BasicGuider, D_u is a zero
tensor). Here ``step`` takes it as ``uncond_output`` (the base sets ``self.uncond_denoised``). A run without
guidance, where no unconditional pass exists, passes ``uncond_output = model_output``: then D_u = D and every
sampler below is exactly its plain counterpart (euler, euler_ancestral, dpmpp_2s_ancestral, dpmpp_2m, ...).
"""

# No postponed annotations here: sampler_config's signatures are resolved (get_type_hints) in k_sampler's
# namespace, which does not know this module's NonNegativeFloat.
import math
from itertools import pairwise
from typing import Annotated

import torch

from ...configuration import Range
from ..k_sampler import KSampler, Program, ancestral_split, sampler_config
from .dpmpp_2s_ancestral import SingleStepAncestral

NonNegativeFloat = Annotated[float, Range(ge=0)]


def _half_log_snr(sigma: float) -> float:
    """t = -log sigma (DPM-Solver's lambda in VE form), +inf at sigma = 0."""
    return math.inf if sigma == 0 else -math.log(sigma)


class _CFGPPSampler(KSampler):
    """What the CFG++ samplers share: ``step`` needs the unconditional prediction."""

    needs_uncond = True

    def _uncond_eps(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """eps_u = (x - D_u) / sigma, the unconditional noise estimate at the current point."""
        return (x - self.uncond_denoised) / sigma


def _euler_cfg_pp(sampler: _CFGPPSampler, x: torch.Tensor, eta: float, s_noise: float) -> Program:
    """Euler (ancestral) CFG++: x <- D + sigma_down eps_u, then s_noise sigma_up fresh noise."""
    sigmas = sampler.grid
    for sigma, sigma_next in pairwise(sigmas):
        denoised = yield x
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next, eta)
        x = denoised + sampler._uncond_eps(x, sigma) * sigma_down
        if sigma_up > 0 and s_noise:
            x = x + sampler.noise_like(x) * (s_noise * sigma_up)
    return x


class EulerCFGPPSampler(_CFGPPSampler):
    """ComfyUI ``euler_cfg_pp``, CFG++'s DDIM step in sigma form: x <- D + sigma_next (x - D_u) / sigma.

    ``guidance_scale`` is CFG++'s lambda as such (ComfyUI's cfg, no rescaling); without guidance pass
    ``uncond_output = model_output`` and this is plain Euler.
    """

    @sampler_config
    def __init__(self):
        """Euler CFG++ (ComfyUI euler_cfg_pp)."""

    def program(self, x: torch.Tensor) -> Program:
        return _euler_cfg_pp(self, x, 0.0, 0.0)


class EulerAncestralCFGPPSampler(_CFGPPSampler):
    """ComfyUI ``euler_ancestral_cfg_pp``: x <- D + sigma_down (x - D_u) / sigma + s_noise sigma_up z, with
    (sigma_down, sigma_up) the ancestral split of (sigma, sigma_next) at ``eta``; no noise at sigma_next = 0.

    ``guidance_scale`` is CFG++'s lambda as such (ComfyUI's cfg, no rescaling); without guidance pass
    ``uncond_output = model_output`` and this is plain Euler ancestral.
    """

    stochastic = True
    noise_options = ("eta", "s_noise")

    @sampler_config
    def __init__(self, eta: NonNegativeFloat = 1.0, s_noise: NonNegativeFloat = 1.0):
        """Euler ancestral CFG++ (ComfyUI euler_ancestral_cfg_pp; its defaults)."""

    def program(self, x: torch.Tensor) -> Program:
        return _euler_cfg_pp(self, x, self.config.eta, self.config.s_noise)


class DPMPP2SAncestralCFGPPSampler(_CFGPPSampler, SingleStepAncestral):
    """ComfyUI ``dpmpp_2s_ancestral_cfg_pp``: DPM-Solver++(2S) towards sigma_down with the renoising done by eps_u.

    With sigma_mid = sqrt(sigma sigma_down) (the half step in log sigma): x_mid = D + sigma_mid eps_u, a second
    call gives D_mid, and x <- D_mid + sigma_down (eps_u + (D - D_mid) / sigma); then s_noise sigma_up fresh
    noise. A step with sigma_down = 0 is x <- D with one call. ``guidance_scale`` is CFG++'s lambda as such
    (ComfyUI's cfg); without guidance pass ``uncond_output = model_output`` and this is dpmpp_2s_ancestral.
    """

    calls_per_step = 2
    stochastic = True
    noise_options = ("eta", "s_noise")

    @sampler_config
    def __init__(self, eta: NonNegativeFloat = 1.0, s_noise: NonNegativeFloat = 1.0):
        """DPM++ 2S ancestral CFG++ (ComfyUI dpmpp_2s_ancestral_cfg_pp; its defaults)."""

    def program(self, x: torch.Tensor) -> Program:
        s_noise = self.config.s_noise
        for sigma, sigma_next, sigma_down, sigma_up in self._steps(self.grid):
            denoised = yield x
            if sigma_down == 0:
                x = denoised
            else:
                eps = self._uncond_eps(x, sigma)
                denoised_mid = yield denoised + eps * math.sqrt(sigma * sigma_down)
                x = denoised_mid + (eps + (denoised - denoised_mid) / sigma) * sigma_down
            if sigma_next > 0 and sigma_up > 0 and s_noise:
                x = x + self.noise_like(x) * (s_noise * sigma_up)
        return x


class DPMPP2MCFGPPSampler(_CFGPPSampler):
    """ComfyUI ``dpmpp_2m_cfg_pp``: DPM-Solver++(2M) with the renoising done by eps_u.

    With rho = sigma_next / sigma: x <- D + rho (x - D_u), plus from the second step on (and not into
    sigma_next = 0) the multistep correction (1 - rho) / (2 r) (D - D_u,prev), r = h_prev / h the ratio of the
    last two steps in log sigma. ComfyUI's correction takes the guided D against the previous *unconditional*
    prediction; that is kept. ``guidance_scale`` is CFG++'s lambda as such (ComfyUI's cfg); without guidance
    pass ``uncond_output = model_output`` and this is dpmpp_2m.
    """

    @sampler_config
    def __init__(self):
        """DPM++ 2M CFG++ (ComfyUI dpmpp_2m_cfg_pp)."""

    def program(self, x: torch.Tensor) -> Program:
        sigmas = self.grid
        old_uncond = None
        for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
            denoised = yield x
            uncond = self.uncond_denoised
            if sigma_next == 0:
                x = denoised
            else:
                rho = sigma_next / sigma
                x = denoised + (x - uncond) * rho
                if old_uncond is not None:
                    r = math.log(sigmas[i - 1] / sigma) / math.log(sigma / sigma_next)
                    x = x + (denoised - old_uncond) * ((1 - rho) / (2 * r))
            old_uncond = uncond
        return x


def _res_multistep_cfg_pp(sampler: _CFGPPSampler, x: torch.Tensor, eta: float, s_noise: float) -> Program:
    """RES second-order multistep CFG++ towards sigma_down, then s_noise sigma_up fresh noise."""
    sigmas = sampler.grid
    old_uncond, old_sigma_down = None, 0.0
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        denoised = yield x
        uncond = sampler.uncond_denoised
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next, eta)
        if sigma_down == 0 or old_uncond is None:
            x = denoised + sampler._uncond_eps(x, sigma) * sigma_down
        else:
            rho = sigma_down / sigma
            h = -math.log(rho)
            c2 = (_half_log_snr(sigmas[i - 1]) - _half_log_snr(old_sigma_down)) / h  # < 0: the old point
            phi1 = (1 - rho) / h  # phi_1(-h)
            weight_old = (1 - phi1) / c2  # h phi_2(-h) / c2
            x = (x + denoised - uncond) * rho + uncond * (1 - rho) + (old_uncond - uncond) * weight_old
        if sigma_up > 0 and s_noise:
            x = x + sampler.noise_like(x) * (s_noise * sigma_up)
        old_uncond, old_sigma_down = uncond, sigma_down
    return x


class ResMultistepCFGPPSampler(_CFGPPSampler):
    """ComfyUI ``res_multistep_cfg_pp``: the RES 2nd-order multistep exponential integrator with CFG++ renoising.

    First step: x <- D + sigma_next eps_u. Then, with rho = sigma_next / sigma, h = -log rho and c2 = -h_prev / h:
    x <- rho (x + D - D_u) + (1 - rho) D_u + w (D_u,prev - D_u), w = (1 - phi_1(-h)) / c2 = h phi_2(-h) / c2.
    ``guidance_scale`` is CFG++'s lambda as such (ComfyUI's cfg); without guidance pass
    ``uncond_output = model_output`` and this is res_multistep.
    """

    @sampler_config
    def __init__(self):
        """RES multistep CFG++ (ComfyUI res_multistep_cfg_pp)."""

    def program(self, x: torch.Tensor) -> Program:
        return _res_multistep_cfg_pp(self, x, 0.0, 0.0)


class ResMultistepAncestralCFGPPSampler(_CFGPPSampler):
    """ComfyUI ``res_multistep_ancestral_cfg_pp``: the RES multistep CFG++ step towards sigma_down of the ancestral
    split at ``eta`` (h and c2 in log sigma from sigma to sigma_down and from the previous sigma to the previous
    sigma_down), then s_noise sigma_up fresh noise. ``guidance_scale`` is CFG++'s lambda as such (ComfyUI's cfg);
    without guidance pass ``uncond_output = model_output`` and this is res_multistep_ancestral.
    """

    stochastic = True
    noise_options = ("eta", "s_noise")

    @sampler_config
    def __init__(self, eta: NonNegativeFloat = 1.0, s_noise: NonNegativeFloat = 1.0):
        """RES multistep ancestral CFG++ (ComfyUI res_multistep_ancestral_cfg_pp; its defaults)."""

    def program(self, x: torch.Tensor) -> Program:
        return _res_multistep_cfg_pp(self, x, self.config.eta, self.config.s_noise)


class GradientEstimationCFGPPSampler(_CFGPPSampler):
    """ComfyUI ``gradient_estimation_cfg_pp``: x <- D + sigma_next d with d = eps_u, plus from the second step on
    the gradient-estimation term (ge_gamma - 1) (d - d_prev) (sigma_next - sigma); x <- D into sigma_next = 0.

    ``guidance_scale`` is CFG++'s lambda as such (ComfyUI's cfg); without guidance pass
    ``uncond_output = model_output`` and this is gradient_estimation.
    """

    @sampler_config
    def __init__(self, ge_gamma: float = 2.0):
        """Gradient estimation CFG++ (ComfyUI gradient_estimation_cfg_pp); ge_gamma weighs the d difference."""

    def program(self, x: torch.Tensor) -> Program:
        sigmas, gamma = self.grid, self.config.ge_gamma
        old_d = None
        for sigma, sigma_next in pairwise(sigmas):
            denoised = yield x
            d = self._uncond_eps(x, sigma)
            if sigma_next == 0:
                x = denoised
            else:
                x = denoised + d * sigma_next
                if old_d is not None:
                    x = x + (d - old_d) * ((gamma - 1) * (sigma_next - sigma))
            old_d = d
        return x
