"""A1111 1.10's and ComfyUI's whole sampling pipeline for one (sampler, schedule, steps), from each tool's own
rules and independent of schedcmp's registry: the oracle of tests/test_tool_pairs.py.

A run goes as the tool goes:
1. the sigma grid: the tool's schedule function (tests/tool_schedules.py) on the model's training sigmas (below)
   as the tool's wrapper holds them; A1111's "Automatic" is the sampler's own default (its sampler table below: Karras for DPM++ 2M,
   DPM++ SDE, DPM++ 2S a, DPM2, DPM2 a and Restart, Exponential for DPM++ 2M SDE (Heun) and 3M SDE, else the model
   wrapper's get_sigmas); the samplers that discard the penultimate sigma (A1111: DPM2, DPM2 a, DPM++ 3M SDE;
   ComfyUI: dpm_2, dpm_2_ancestral, uni_pc, uni_pc_bh2) compute steps + 1 and drop sigmas[-2];
2. the initial noise: A1111 z * sigmas[0] (its timestep samplers DDIM, DDIM CFG++, PLMS and UniPC start from z
   itself); ComfyUI z * sqrt(1 + sigma_0^2) when sigma_0 is the model's sigma_max (or above), else z * sigma_0;
3. the model: A1111's CompVisDenoiser (k-diffusion's DiscreteEpsDDPMDenoiser, fractional timesteps; for a v model
   CompVisVDenoiser, DiscreteVDDPMDenoiser, and its timestep samplers' CompVisTimestepsVDenoiser; its LCM wrapper is
   an eps denoiser whatever the model), ComfyUI's model call (``comfy/model_base.py`` apply_model through
   ``model_sampling``: the nearest integer timestep; EPS or V_PREDICTION);
4. the sampler: k-diffusion's ``sample_*`` where the tool runs k-diffusion's code (A1111 hands it eta = 1, its
   "Eta for ancestral samplers", when the function takes one, and DPM fast / adaptive the model's sigma range
   with n = steps; ComfyUI DPM fast / adaptive sigma_min = sigmas[-1], or sigmas[-2] when that is 0, and
   n = len(sigmas) - 1), else the loop transcribed from the tool in the sampler's own test module.

The network is pluggable (``Model``: its config and fresh recording networks, ``model=`` of both pipelines and of
tests/test_tool_pairs.py's ``run_registry``); by default ``ANALYTIC``, the mixture's ``UNet`` below on SD 1.5.

The model's training schedule: by default the one schedcmp derives from the SD 1.5 config (float32 betas and
cumprod, diffusers' arithmetic), so that a pair measures the tool's pipeline; ``tool_arithmetic=True`` derives it
as the tools do (float64 betas and cumprod: LDM's alpha-bar buffer rounded to float32 for A1111, float64 sigmas
rounded for ComfyUI), which moves the small training sigmas by up to 8.7e-6 (A1111) and 1.3e-5 (ComfyUI, its
sigma_min included) relative, since 1 - alpha-bar cancels there, and the pairs' results by up to 6e-5 and 3e-4
(noisy samplers: the test data's posterior is steep near its decision boundary at small sigma).

Noise: the initial latents are the first draw of a generator seeded with the seed. Samplers with fresh draws take
them from that generator, continued (A1111's randn_like hijack; for ComfyUI a stand-in: its default noise sampler
re-seeds, which not every schedcmp sampler can); the Brownian samplers (DPM++ SDE, 2M SDE, 3M SDE) share
schedcmp's BrownianNoiseSampler over the grid's positive range, built from that generator before sampling, as the
tools build their Brownian trees. CFG++ samplers run under a guided model: conditional and unconditional data
means differ; A1111's DDIM CFG++ guides with its CFG scale times 1 / 12.5.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from kdiffusion_oracle import external, generator_noise_sampler, hijacked_noise, sampling
from ksampler_harness import MEANS, SD_CONFIG, SHAPE, STD
from test_ksampler_a1111 import (
    CFG_SCALE,
    TimestepsDenoiser,
    a1111_timesteps,
    lcm_denoiser,
    reference_ddim,
    reference_lcm,
    reference_plms,
    reference_restart,
)
from test_ksampler_cfg_pp import (
    reference_dpmpp_2m_cfg_pp,
    reference_dpmpp_2s_ancestral_cfg_pp,
    reference_euler_ancestral_cfg_pp,
    reference_euler_cfg_pp,
    reference_gradient_estimation_cfg_pp,
    reference_res_multistep_ancestral_cfg_pp,
    reference_res_multistep_cfg_pp,
)
from test_ksampler_comfy_ode import (
    reference_deis,
    reference_gradient_estimation,
    reference_heunpp2,
    reference_ipndm,
    reference_ipndm_v,
    reference_res_multistep,
)
from test_ksampler_comfy_sde import (
    comfy_tau_func,
    reference_er_sde,
    reference_sa_solver,
    reference_seeds_2,
    reference_seeds_3,
)
from test_ksampler_comfy_sde import (
    reference_lcm as comfy_reference_lcm,
)
from test_ksampler_ode import comfy_lms
from test_ksampler_stochastic import comfy_ddpm, comfy_euler_ancestral
from test_ksampler_unipc import a1111_reference as a1111_unipc_reference
from test_ksampler_unipc import comfy_reference as comfy_unipc_reference
from tool_schedules import (
    A1111_SCHEDULES,
    COMFY_SCHEDULES,
    ComfyModelSampling,
    a1111_model_wrap,
    a1111_schedule,
    ldm_alphas_cumprod,
)

from schedcmp.core.schedulers.dpmsolver_sde import BrownianNoiseSampler
from schedcmp.core.schedulers.schedule_types import t_to_sigma
from schedcmp.core.schedulers.sigma_space import train_alphas_cumprod

SEED = 0
MODEL_CONFIG = {**SD_CONFIG, "trained_betas": None}  # SD 1.5's training schedule
COND_MEANS = (-0.35, 0.8)  # the conditional data of the guided model (the unconditional one has MEANS)
COMFY_CFG = 0.8  # ComfyUI's cfg for the CFG++ samplers
A1111_CFG = CFG_SCALE  # A1111's CFG scale (5), which its DDIM CFG++ multiplies by 1 / 12.5


# --- the model ----------------------------------------------------------------------------------------------------


def _posterior_mean(x: torch.Tensor, sigma: float, means: tuple[float, float]) -> torch.Tensor:
    """E[x0 | x] for data 1/2 N(means[0], STD^2) + 1/2 N(means[1], STD^2) at noise level sigma (float64 inside)."""
    x64 = x.double()
    var = STD**2 + sigma**2
    weights = torch.softmax(torch.stack([-((x64 - m) ** 2) / (2 * var) for m in means]), dim=0)
    posterior = torch.stack([(m * sigma**2 + x64 * STD**2) / var for m in means])
    return (weights * posterior).sum(0).to(x.dtype)


class UNet:
    """The network both sides call: (c_in x, t) -> eps of the mixture with ``means`` at the noise level of the
    training timestep t (log-sigma interpolation of the model's training sigmas); records every t it is given."""

    alphas_cumprod = train_alphas_cumprod(MODEL_CONFIG)
    log_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).log()

    def __init__(self, means: tuple[float, float] = MEANS):
        self.means = means
        self.timesteps: list[float] = []

    def __call__(self, x_in: torch.Tensor, t: Any, **_: Any) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)[:1]
        self.timesteps.append(float(t))
        sigma = float(t_to_sigma(t, self.log_sigmas))
        x = x_in * (sigma**2 + 1) ** 0.5
        return (x - _posterior_mean(x, sigma, self.means)) / sigma


@dataclass(frozen=True)
class Model:
    """The network of a pair, for both sides (tests/test_tool_pairs.py's ``run_registry`` too): the config of its
    training schedule (betas, ``prediction_type``) and factories of fresh networks (c_in x, t) -> eps or v that
    record every t they are given (``timesteps``): ``plain`` for every sampler but CFG++, ``guided`` the CFG++
    samplers' (conditional, unconditional) pair, whose first records."""

    config: dict[str, Any]
    plain: Callable[[], Any]
    guided: Callable[[], tuple[Any, Any]]

    @property
    def v_prediction(self) -> bool:
        """Whether the network predicts v (else eps)."""
        return self.config.get("prediction_type", "epsilon") == "v_prediction"


ANALYTIC = Model(MODEL_CONFIG, UNet, lambda: (UNet(COND_MEANS), UNet(MEANS)))  # the default: the mixture's UNet


class ComfyDenoiser:
    """ComfyUI's model call, EPS: D(x, sigma) = x - sigma eps(x / sqrt(sigma^2 + 1), timestep(sigma)); V_PREDICTION
    (``comfy/model_sampling.py``, sigma_data 1): D = x / (sigma^2 + 1) - sigma v / sqrt(sigma^2 + 1)."""

    def __init__(self, unet: Callable, ms: ComfyModelSampling, v_prediction: bool = False):
        self.unet, self.ms, self.v_prediction = unet, ms, v_prediction

    def __call__(self, x: torch.Tensor, sigma: Any, **_: Any) -> torch.Tensor:
        sigma = torch.as_tensor(sigma).reshape(-1)[:1]
        s = sigma.view(-1, *([1] * (x.ndim - 1)))
        output = self.unet(x / (s**2 + 1.0) ** 0.5, self.ms.timestep(sigma).float())
        if self.v_prediction:
            return x / (s**2 + 1.0) - output * s / (s**2 + 1.0) ** 0.5
        return x - output * s


class ComfyGuided:
    """ComfyUI's cfg_function around two conditionings, D = D_u + cfg (D_c - D_u), keeping D_u where the CFG++
    samplers' post-CFG hook puts it (``uncond_denoised``); ``unet`` (the conditional one) records the calls."""

    def __init__(self, ms: ComfyModelSampling, model: Model = ANALYTIC):
        self.ms = ms
        self.unet, uncond = model.guided()
        self.cond = ComfyDenoiser(self.unet, ms, model.v_prediction)
        self.uncond = ComfyDenoiser(uncond, ms, model.v_prediction)
        self.uncond_denoised: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, sigma: Any, **_: Any) -> torch.Tensor:
        self.uncond_denoised = self.uncond(x, sigma)
        return self.uncond_denoised + COMFY_CFG * (self.cond(x, sigma) - self.uncond_denoised)


@dataclass
class ToolRun:
    """A tool's result: the final latent and every UNet call's timestep in order (one per guided call)."""

    sample: torch.Tensor
    timesteps: list[float]


# --- noise --------------------------------------------------------------------------------------------------------


def _latents() -> tuple[torch.Tensor, torch.Generator]:
    """z, the seed's first draw, and the generator after it (for the sampler's own draws)."""
    generator = torch.Generator().manual_seed(SEED)
    return torch.randn(SHAPE, generator=generator), generator


def brownian(sigmas: torch.Tensor, like: torch.Tensor, generator: torch.Generator) -> Callable:
    """The tools' Brownian noise sampler over [smallest positive sigma, largest] (schedcmp's path in place of
    torchsde's tree), asked at the grid's own values: k-diffusion's dpmpp_sde asks at exp(-(-log sigma)) in float32,
    which can miss a grid sigma by an ulp, and the path would take that for a new time and draw for it."""
    grid = sorted({float(s) for s in sigmas if s > 0})
    path = BrownianNoiseSampler(like, grid[0], grid[-1], generator)

    def on_grid(sigma: Any) -> float:
        value = float(sigma)
        nearest = min(grid, key=lambda known: abs(known - value))
        return nearest if abs(nearest - value) <= 1e-6 * nearest else value

    return lambda sigma, sigma_next: path(on_grid(sigma), on_grid(sigma_next))


def float32_draws(generator: torch.Generator, dtype: torch.dtype) -> Callable:
    """Fresh float32 draws from ``generator`` in ``dtype`` (for a reference run in float64)."""
    return lambda sigma, sigma_next: torch.randn(SHAPE, generator=generator).to(dtype)


def in_dtype(noise_sampler: Callable, dtype: torch.dtype) -> Callable:
    """``noise_sampler``'s draws converted to ``dtype``."""
    return lambda sigma, sigma_next: noise_sampler(sigma, sigma_next).to(dtype)


# --- A1111 1.10 ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class A1111Sampler:
    """One row of A1111's sampler tables: the function and its options (``sd_samplers_kdiffusion.py`` etc.)."""

    function: str  # k-diffusion's sample_* name, or "restart" / "ddim" / "ddim_cfgpp" / "plms" / "unipc" / "lcm"
    scheduler: str | None = None  # the "Automatic" schedule
    discard: bool = False  # discard_next_to_last_sigma
    brownian: bool = False  # brownian_noise
    solver_type: str | None = None

    @property
    def timestep_sampler(self) -> bool:
        """DDIM, DDIM CFG++, PLMS and UniPC (``sd_samplers_timesteps.py``): their own timesteps, no schedule."""
        return self.function in ("ddim", "ddim_cfgpp", "plms", "unipc")


A1111_SAMPLERS: dict[str, A1111Sampler] = {  # A1111 1.10's sampler list, in its order
    "DPM++ 2M": A1111Sampler("sample_dpmpp_2m", "karras"),
    "DPM++ SDE": A1111Sampler("sample_dpmpp_sde", "karras", brownian=True),
    "DPM++ 2M SDE": A1111Sampler("sample_dpmpp_2m_sde", "exponential", brownian=True),
    "DPM++ 2M SDE Heun": A1111Sampler("sample_dpmpp_2m_sde", "exponential", brownian=True, solver_type="heun"),
    "DPM++ 2S a": A1111Sampler("sample_dpmpp_2s_ancestral", "karras"),
    "DPM++ 3M SDE": A1111Sampler("sample_dpmpp_3m_sde", "exponential", discard=True, brownian=True),
    "Euler a": A1111Sampler("sample_euler_ancestral"),
    "Euler": A1111Sampler("sample_euler"),
    "LMS": A1111Sampler("sample_lms"),
    "Heun": A1111Sampler("sample_heun"),
    "DPM2": A1111Sampler("sample_dpm_2", "karras", discard=True),
    "DPM2 a": A1111Sampler("sample_dpm_2_ancestral", "karras", discard=True),
    "DPM fast": A1111Sampler("sample_dpm_fast"),
    "DPM adaptive": A1111Sampler("sample_dpm_adaptive"),
    "Restart": A1111Sampler("restart", "karras"),
    "DDIM": A1111Sampler("ddim"),
    "DDIM CFG++": A1111Sampler("ddim_cfgpp"),
    "PLMS": A1111Sampler("plms"),
    "UniPC": A1111Sampler("unipc"),
    "LCM": A1111Sampler("lcm"),
}
A1111_SCHEDULE_TYPES = ("Automatic", *A1111_SCHEDULES)
A1111_ETA_ANCESTRAL = 1.0  # opts.eta_ancestral, handed to every k-diffusion function with an ``eta``


def a1111_get_sigmas(sampler: A1111Sampler, schedule: str, steps: int, inner_model) -> torch.Tensor:
    """``KDiffusionSampler.get_sigmas``: the Schedule type (Automatic: the sampler's option, else the wrapper's
    get_sigmas) over steps (+ 1 with the discard), then the discard of the penultimate sigma."""
    n = steps + sampler.discard
    label = sampler.scheduler if schedule == "Automatic" else schedule
    sigmas = inner_model.get_sigmas(n) if label is None else a1111_schedule(label, n, inner_model)
    if sampler.discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas.float()


def model_alphas_cumprod(tool_arithmetic: bool = True, config: dict = MODEL_CONFIG) -> torch.Tensor:
    """The model's (SD 1.5's) float32 alpha-bar: schedcmp's derivation, or the LDM model's buffer (A1111's view)."""
    return ldm_alphas_cumprod(config) if tool_arithmetic else train_alphas_cumprod(config)


def a1111_denoiser(unet: Callable, alphas_cumprod: torch.Tensor, v_prediction: bool = False) -> torch.nn.Module:
    """A1111's k-diffusion model wrapper: CompVisDenoiser, or CompVisVDenoiser (k-diffusion's DiscreteVDDPMDenoiser)
    for a v model (``sd_samplers_kdiffusion.py``: by ``parameterization``; fractional timesteps)."""
    if v_prediction:
        return external().DiscreteVDDPMDenoiser(unet, alphas_cumprod, quantize=False)
    return a1111_model_wrap(unet, alphas_cumprod)


def comfy_model_sampling(tool_arithmetic: bool = True, config: dict = MODEL_CONFIG) -> ComfyModelSampling:
    """ComfyUI's model_sampling of the model (SD 1.5): on schedcmp's training sigmas, or as ComfyUI derives them."""
    if tool_arithmetic:
        return ComfyModelSampling.from_config(config)
    alphas_cumprod = train_alphas_cumprod(config)
    return ComfyModelSampling(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)


def a1111_pipeline(label: str, schedule: str, steps: int, tool_arithmetic: bool = True,
                   dtype: torch.dtype | None = None, model: Model = ANALYTIC) -> ToolRun:
    """A1111 1.10's txt2img sampling for sampler ``label`` and Schedule type ``schedule`` (``model``, seed SEED);
    ``dtype`` float64 runs a k-diffusion sampler in float64 (the same float32 draws), to measure the tool's own
    rounding."""
    sampler = A1111_SAMPLERS[label]
    float64 = dtype == torch.float64
    if float64 and not sampler.function.startswith("sample_"):
        raise ValueError(f"{label}: float64 runs are for A1111's k-diffusion samplers")
    alphas_cumprod = model_alphas_cumprod(tool_arithmetic, model.config)
    v_prediction = model.v_prediction
    unet = model.plain()
    z, generator = _latents()
    if sampler.timestep_sampler:  # CompVisSampler.sample: its own timesteps, from z itself
        timesteps = a1111_timesteps(steps)
        if sampler.function == "unipc":
            sample = a1111_unipc_reference(unet, z, alphas_cumprod, len(timesteps), [], v_prediction=v_prediction)
        elif sampler.function == "plms":
            sample = reference_plms(TimestepsDenoiser(unet, alphas_cumprod, v_prediction), z, timesteps,
                                    alphas_cumprod)
        elif sampler.function == "ddim_cfgpp":  # CFG at CFG_SCALE times the sampler's 1 / 12.5, D_u for the step
            unet, uncond = model.guided()
            denoiser = TimestepsDenoiser(unet, alphas_cumprod, v_prediction, uncond=uncond)
            sample = reference_ddim(denoiser, z, timesteps, alphas_cumprod, generator, cfgpp=True)
        else:
            sample = reference_ddim(TimestepsDenoiser(unet, alphas_cumprod, v_prediction), z, timesteps,
                                    alphas_cumprod, generator)
        return ToolRun(sample, unet.timesteps)
    if sampler.function == "lcm":  # LCMCompVisDenoiser: an eps denoiser whatever the model's parameterization
        inner_model = lcm_denoiser(unet, alphas_cumprod)
    else:
        inner_model = a1111_denoiser(unet, alphas_cumprod, v_prediction)
    sigmas = a1111_get_sigmas(sampler, schedule, steps, inner_model)
    x = z * sigmas[0]
    if sampler.function == "lcm":
        return ToolRun(reference_lcm(inner_model, x, sigmas, generator), unet.timesteps)
    if sampler.function == "restart":
        return ToolRun(reference_restart(inner_model, x, sigmas, generator), unet.timesteps)
    function = getattr(sampling(), sampler.function)
    parameters = inspect.signature(function).parameters
    dtype = dtype or torch.float32
    kwargs: dict[str, Any] = {}
    if "eta" in parameters:
        kwargs["eta"] = A1111_ETA_ANCESTRAL
    if "n" in parameters:
        kwargs["n"] = steps
    if "sigma_min" in parameters:
        kwargs["sigma_min"] = inner_model.sigmas[0].item()
        kwargs["sigma_max"] = inner_model.sigmas[-1].item()
    if "sigmas" in parameters:
        kwargs["sigmas"] = sigmas.to(dtype)
    if sampler.brownian:
        kwargs["noise_sampler"] = in_dtype(brownian(sigmas, x, generator), dtype)
    elif float64 and "noise_sampler" in parameters:
        kwargs["noise_sampler"] = float32_draws(generator, dtype)
    if sampler.solver_type:
        kwargs["solver_type"] = sampler.solver_type
    with hijacked_noise(generator):
        sample = function(inner_model, x.to(dtype), disable=True, **kwargs)
    return ToolRun(sample.float(), unet.timesteps)


# --- ComfyUI ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComfySampler:
    """How ComfyUI runs one sampler name: ``run(model, x, sigmas, noise_sampler)``, the kind of noise it draws, and
    the reference's arithmetic (float64 latents and sigmas, or float64 sigmas only, as its test module runs it)."""

    run: Callable[..., torch.Tensor]
    noise: str = "none"  # "none", "generator" (fresh draws) or "brownian"
    float64: bool = False
    float64_sigmas: bool = False
    guided: bool = False
    float32_latents: bool = False  # the loop needs float32 latents (SA-Solver casts its coefficients to float32)


def _k(name: str, **options: Any) -> Callable[..., torch.Tensor]:
    """ComfyUI's copy of k-diffusion's ``sample_<name>`` (the same for eps models at these options)."""
    function = getattr(sampling(), f"sample_{name}")
    takes_noise = "noise_sampler" in inspect.signature(function).parameters

    def run(model, x, sigmas, noise_sampler):
        noise = {"noise_sampler": noise_sampler} if takes_noise and noise_sampler is not None else {}
        return function(model, x, sigmas, disable=True, **noise, **options)

    return run


def _comfy_range(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's dpm_fast / dpm_adaptive wrappers: sigma_min = sigmas[-1], or sigmas[-2] when that is 0."""
    sigma_min = sigmas[-1]
    if sigma_min == 0:
        sigma_min = sigmas[-2]
    return sigma_min, sigmas[0]


def _comfy_dpm_fast(model, x, sigmas, noise_sampler):
    if len(sigmas) <= 1:
        return x
    return sampling().sample_dpm_fast(model, x, *_comfy_range(sigmas), len(sigmas) - 1, disable=True)


def _comfy_dpm_adaptive(model, x, sigmas, noise_sampler):
    if len(sigmas) <= 1:
        return x
    return sampling().sample_dpm_adaptive(model, x, *_comfy_range(sigmas), disable=True)


def _without_noise(reference: Callable, **options: Any) -> Callable[..., torch.Tensor]:
    return lambda model, x, sigmas, noise_sampler: reference(model, x, sigmas, **options)


def _sa_solver(use_pece: bool) -> Callable[..., torch.Tensor]:
    """sample_sa_solver(_pece) with ComfyUI's default tau: eta 1 between percent_to_sigma(0.2) and (0.8)."""

    def run(model, x, sigmas, noise_sampler):
        tau = comfy_tau_func(model.ms.log_sigmas)
        return reference_sa_solver(model, x, sigmas, noise_sampler, tau_func=tau, use_pece=use_pece)

    return run


def _uni_pc(variant: str) -> Callable[..., torch.Tensor]:
    return lambda model, x, sigmas, noise_sampler: comfy_unipc_reference(model, x, sigmas, variant, [])


_G, _B = "generator", "brownian"
COMFY_SAMPLERS: dict[str, ComfySampler | None] = {  # ComfyUI's SAMPLER_NAMES, in its order (None: no source)
    "euler": ComfySampler(_k("euler")),
    "euler_cfg_pp": ComfySampler(reference_euler_cfg_pp, guided=True),
    "euler_ancestral": ComfySampler(comfy_euler_ancestral, _G),
    "euler_ancestral_cfg_pp": ComfySampler(reference_euler_ancestral_cfg_pp, _G, guided=True),
    "heun": ComfySampler(_k("heun")),
    "heunpp2": ComfySampler(reference_heunpp2, _G, float64=True),
    "exp_heun_2_x0": ComfySampler(partial(reference_seeds_2, eta=0.0, s_noise=0.0, r=1.0, solver_type="phi_2"),
                                  float64_sigmas=True),
    "exp_heun_2_x0_sde": ComfySampler(partial(reference_seeds_2, r=1.0, solver_type="phi_2"), _G,
                                      float64_sigmas=True),
    "dpm_2": ComfySampler(_k("dpm_2")),
    "dpm_2_ancestral": ComfySampler(_k("dpm_2_ancestral"), _G),
    "lms": ComfySampler(_without_noise(comfy_lms)),
    "dpm_fast": ComfySampler(_comfy_dpm_fast),
    "dpm_adaptive": ComfySampler(_comfy_dpm_adaptive),
    "dpmpp_2s_ancestral": ComfySampler(_k("dpmpp_2s_ancestral"), _G),
    "dpmpp_2s_ancestral_cfg_pp": ComfySampler(reference_dpmpp_2s_ancestral_cfg_pp, _G, guided=True),
    "dpmpp_sde": ComfySampler(_k("dpmpp_sde"), _B),
    "dpmpp_sde_gpu": ComfySampler(_k("dpmpp_sde"), _B),
    "dpmpp_2m": ComfySampler(_k("dpmpp_2m")),
    "dpmpp_2m_cfg_pp": ComfySampler(reference_dpmpp_2m_cfg_pp, guided=True),
    "dpmpp_2m_sde": ComfySampler(_k("dpmpp_2m_sde"), _B),
    "dpmpp_2m_sde_gpu": ComfySampler(_k("dpmpp_2m_sde"), _B),
    "dpmpp_2m_sde_heun": ComfySampler(_k("dpmpp_2m_sde", solver_type="heun"), _B),
    "dpmpp_2m_sde_heun_gpu": ComfySampler(_k("dpmpp_2m_sde", solver_type="heun"), _B),
    "dpmpp_3m_sde": ComfySampler(_k("dpmpp_3m_sde"), _B),
    "dpmpp_3m_sde_gpu": ComfySampler(_k("dpmpp_3m_sde"), _B),
    "ddpm": ComfySampler(comfy_ddpm, _G),
    "lcm": ComfySampler(comfy_reference_lcm, _G, float64_sigmas=True),
    "ipndm": ComfySampler(reference_ipndm, float64=True),
    "ipndm_v": ComfySampler(reference_ipndm_v, float64=True),
    "deis": ComfySampler(reference_deis, float64=True),
    "res_multistep": ComfySampler(reference_res_multistep, _G, float64=True),  # draws, times sigma_up = 0
    "res_multistep_cfg_pp": ComfySampler(reference_res_multistep_cfg_pp, _G, guided=True),
    "res_multistep_ancestral": ComfySampler(partial(reference_res_multistep, eta=1.0), _G, float64=True),
    "res_multistep_ancestral_cfg_pp": ComfySampler(reference_res_multistep_ancestral_cfg_pp, _G, guided=True),
    "gradient_estimation": ComfySampler(reference_gradient_estimation, float64=True),
    "gradient_estimation_cfg_pp": ComfySampler(reference_gradient_estimation_cfg_pp, guided=True),
    "er_sde": ComfySampler(reference_er_sde, _G, float64_sigmas=True),
    "seeds_2": ComfySampler(reference_seeds_2, _G, float64_sigmas=True),
    "seeds_3": ComfySampler(reference_seeds_3, _G, float64_sigmas=True),
    "sa_solver": ComfySampler(_sa_solver(use_pece=False), _G, float64_sigmas=True, float32_latents=True),
    "sa_solver_pece": ComfySampler(_sa_solver(use_pece=True), _G, float64_sigmas=True, float32_latents=True),
    "cfgpp_ud10_ab": None,
    "ddim": ComfySampler(_k("euler")),  # ksampler("euler", inpaint_options={"random": True})
    "uni_pc": ComfySampler(_uni_pc("bh1")),
    "uni_pc_bh2": ComfySampler(_uni_pc("bh2")),
}
COMFY_DISCARD_PENULTIMATE = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})
COMFY_SCHEDULERS = tuple(COMFY_SCHEDULES)


def comfy_calculate_sigmas(name: str, scheduler: str, steps: int, ms: ComfyModelSampling) -> torch.Tensor:
    """``KSampler.calculate_sigmas``: the scheduler over steps (+ 1 for the discarding samplers), then the discard."""
    discard = name in COMFY_DISCARD_PENULTIMATE
    sigmas = COMFY_SCHEDULES[scheduler](ms, steps + discard)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas.float()


def comfy_initial_noise(z: torch.Tensor, sigmas: torch.Tensor, ms: ComfyModelSampling) -> torch.Tensor:
    """``noise_scaling`` (EPS) at ``max_denoise``: z sqrt(1 + sigma_0^2) when sampling starts at sigma_max."""
    sigma_max, sigma = float(ms.sigma_max), float(sigmas[0])
    if math.isclose(sigma_max, sigma, rel_tol=1e-05) or sigma > sigma_max:
        return z * torch.sqrt(1.0 + sigmas[0] ** 2.0)
    return z * sigmas[0]


def comfy_pipeline(name: str, scheduler: str, steps: int, tool_arithmetic: bool = True,
                   dtype: torch.dtype | None = None, model: Model = ANALYTIC) -> ToolRun:
    """ComfyUI's KSampler node for sampler ``name`` and scheduler ``scheduler`` (``model``, full denoise, seed SEED);
    ``dtype`` (float32, float64) overrides the reference's arithmetic (see ``ComfySampler``) with the same float32
    draws, to measure the tool's own rounding."""
    sampler = COMFY_SAMPLERS[name]
    if sampler is None:
        raise NotImplementedError(f"ComfyUI's {name}: no source to transcribe")
    ms = comfy_model_sampling(tool_arithmetic, model.config)
    sigmas = comfy_calculate_sigmas(name, scheduler, steps, ms)
    z, generator = _latents()
    x = comfy_initial_noise(z, sigmas, ms)  # V_PREDICTION scales the noise as EPS does
    if sampler.guided:
        denoiser = ComfyGuided(ms, model)
    else:
        denoiser = ComfyDenoiser(model.plain(), ms, model.v_prediction)
    if dtype is None:
        dtype = torch.float64 if sampler.float64 else torch.float32
        grid = sigmas.double() if sampler.float64 or sampler.float64_sigmas else sigmas
    else:
        grid = sigmas.to(dtype)
        dtype = torch.float32 if sampler.float32_latents else dtype
    if sampler.noise == _B:
        noise = in_dtype(brownian(sigmas, x, generator), dtype)
    elif sampler.noise == _G:
        noise = float32_draws(generator, dtype) if dtype == torch.float64 else generator_noise_sampler(generator, x)
    else:
        noise = None
    sample = sampler.run(denoiser, x.to(dtype), grid, noise)
    return ToolRun(sample.float(), denoiser.unet.timesteps)
