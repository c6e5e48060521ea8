"""What the k-sampler parity tests share: an exactly solvable denoiser, our step loop, and k-diffusion's.

The denoiser is the posterior mean of per-element data x0 ~ 1/2 N(-0.6, 0.15^2) + 1/2 N(0.6, 0.15^2) under
x = x0 + sigma n (computed in float64): nonlinear, so every solver order and every sigma matters. It is wrapped
as a UNet would be: ``eps_model(x_in, t)`` reads its noise level from the timestep ``t`` (log-sigma
interpolation of the training sigmas) and its input as c_in x, so both loops feed it the same arguments and any
difference is the sampler's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from kdiffusion_oracle import external

from schedcmp.core.schedulers.k_sampler import KSampler
from schedcmp.core.schedulers.schedule_types import t_to_sigma

MEANS, STD = (-0.6, 0.6), 0.15
SD_CONFIG = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
SHAPE = (1, 4, 8, 8)


def mixture_denoised(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """E[x0 | x] for the two-Gaussian data at noise level ``sigma`` (float64 inside, x's dtype out)."""
    x64 = x.double()
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    var = STD**2 + sigma**2
    logits = torch.stack([-((x64 - m) ** 2) / (2 * var) for m in MEANS])
    weights = torch.softmax(logits, dim=0)
    means = torch.stack([(m * sigma**2 + x64 * STD**2) / var for m in MEANS])
    return (weights * means).sum(0).to(x.dtype)


def make_eps_model(scheduler: KSampler, prediction_type: str = "epsilon") -> Callable[..., torch.Tensor]:
    """A UNet stand-in for ``scheduler``'s training schedule: (c_in x, t) -> eps (or v) of the mixture."""
    log_sigmas = scheduler.log_sigmas

    def eps_model(x_in: torch.Tensor, t: torch.Tensor, **_: Any) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)[:1]
        sigma = float(t_to_sigma(t, log_sigmas))
        x = x_in * (sigma**2 + 1) ** 0.5
        denoised = mixture_denoised(x, sigma)
        eps = (x - denoised) / sigma
        if prediction_type == "v_prediction":  # v = alpha eps - sigma_t x0 with alpha = 1 / sqrt(1 + sigma^2)
            alpha = 1 / (sigma**2 + 1) ** 0.5
            return alpha * eps - sigma * alpha * denoised
        return eps

    return eps_model


def run_ours(scheduler: KSampler, model: Callable[..., torch.Tensor], x: torch.Tensor,
             generator: torch.Generator | None = None, **step_kwargs: Any) -> torch.Tensor:
    """diffusers' loop: scale, call the model, step; returns the final sample."""
    calls = 0
    for t in scheduler.timesteps:
        output = model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(output, t, x, generator=generator, **step_kwargs).prev_sample
        calls += 1
    assert calls == len(scheduler.timesteps)
    return x


def oracle_denoiser(scheduler: KSampler, model: Callable[..., torch.Tensor]) -> torch.nn.Module:
    """k-diffusion's DDPM wrapper around the same model: fractional t, or the nearest integer (``quantize``)
    for a discrete-timestep (ComfyUI) configuration."""
    quantize = scheduler.config.timestep_type == "discrete"
    module = external()
    wrapper = (module.DiscreteVDDPMDenoiser if scheduler.config.prediction_type == "v_prediction"
               else module.DiscreteEpsDDPMDenoiser)
    return wrapper(model, scheduler.alphas_cumprod, quantize=quantize)


def initial_noise(scheduler: KSampler, seed: int = 0) -> tuple[torch.Tensor, torch.Generator]:
    """Initial latents z * init_noise_sigma from a fresh generator, and that generator (for later draws)."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(SHAPE, generator=generator)
    return z * scheduler.init_noise_sigma, generator


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / std(reference)."""
    return float((ours - reference).abs().max() / reference.std())
