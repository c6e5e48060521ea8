"""The noise schedules of A1111 1.10 and ComfyUI, written out from their source as each tool computes them.

- A1111 1.10 ``modules/sd_schedulers.py``: every schedule function takes (n, sigma_min, sigma_max) and, where it
  needs one, the sampler's ``inner_model`` (k-diffusion's CompVisDenoiser, a ``DiscreteEpsDDPMDenoiser``; LCM's
  own wrapper for A1111's LCM); "Automatic" is the sampler's own default and is the sampler's business.
- ComfyUI ``comfy/samplers.py`` ``SCHEDULER_HANDLERS``: each handler takes the model's ``model_sampling``
  (``comfy/model_sampling.py``: integer ``timestep()``, log-linear ``sigma()``) or just its sigma range.

Each tool also has its own view of the model's training sigmas: A1111's come from the LDM model's float32
alphas_cumprod (a float64 cumprod rounded), ComfyUI's ``ModelSamplingDiscrete`` computes them in float64 and
rounds the sigmas. ``ldm_alphas_cumprod`` and ``ComfyModelSampling`` reproduce both for a scaled-linear model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.stats
import torch
from kdiffusion_oracle import external, sampling

# --- the tools' view of the model ------------------------------------------------------------------------------


def ldm_betas(config: dict) -> torch.Tensor:
    """float64 betas of an LDM ``linear`` schedule (diffusers' "scaled_linear"): linspace of sqrt(beta), squared."""
    if config.get("beta_schedule", "scaled_linear") != "scaled_linear":
        raise ValueError("the tools' SD models use the scaled-linear (LDM 'linear') schedule")
    start, end = config["beta_start"] ** 0.5, config["beta_end"] ** 0.5
    return torch.linspace(start, end, config["num_train_timesteps"], dtype=torch.float64) ** 2


def ldm_alphas_cumprod(config: dict) -> torch.Tensor:
    """The LDM model's ``alphas_cumprod`` buffer that A1111's CompVisDenoiser reads: a float64 cumprod, float32."""
    return torch.cumprod(1.0 - ldm_betas(config), dim=0).float()


def a1111_model_wrap(model: Callable | None, alphas_cumprod: torch.Tensor) -> torch.nn.Module:
    """A1111's ``CompVisDenoiser`` (k-diffusion's DiscreteEpsDDPMDenoiser, fractional timesteps: quantize=False)."""
    return external().DiscreteEpsDDPMDenoiser(model, alphas_cumprod, quantize=False)


class ComfyModelSampling:
    """ComfyUI's ``ModelSamplingDiscrete`` (EPS): float32 sigmas and log sigmas, ``timestep`` the nearest training
    step in log sigma, ``sigma`` log-linear interpolation, ``percent_to_sigma`` over the 999 steps."""

    def __init__(self, sigmas: torch.Tensor, log_sigmas: torch.Tensor | None = None):
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float() if log_sigmas is None else log_sigmas.float()

    @classmethod
    def from_config(cls, config: dict) -> ComfyModelSampling:
        """``_register_schedule``: float64 betas, cumprod and sigmas; float32 buffers of sigma and log sigma."""
        alphas_cumprod = torch.cumprod(1.0 - ldm_betas(config), dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        return cls(sigmas.float(), sigmas.log().float())

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma)
        return (sigma.log() - self.log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = torch.clamp(torch.as_tensor(timestep).float(), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()


# --- A1111 1.10, modules/sd_schedulers.py ------------------------------------------------------------------------

AYS_SD15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
AYS_SDXL = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]


def a1111_uniform(n, sigma_min, sigma_max, inner_model):
    """``uniform``: the model wrapper's get_sigmas."""
    return inner_model.get_sigmas(n)


def a1111_karras(n, sigma_min, sigma_max, inner_model=None, rho=7.0):
    """k-diffusion's get_sigmas_karras (A1111's default rho 7)."""
    return sampling().get_sigmas_karras(n, sigma_min, sigma_max, rho=rho)


def a1111_exponential(n, sigma_min, sigma_max, inner_model=None):
    """k-diffusion's get_sigmas_exponential."""
    return sampling().get_sigmas_exponential(n, sigma_min, sigma_max)


def a1111_polyexponential(n, sigma_min, sigma_max, inner_model=None, rho=1.0):
    """k-diffusion's get_sigmas_polyexponential (A1111's default rho 1)."""
    return sampling().get_sigmas_polyexponential(n, sigma_min, sigma_max, rho=rho)


def a1111_normal(n, sigma_min, sigma_max, inner_model, sgm=False):
    """``normal_scheduler``: linspace between the wrapper's (fractional) timesteps of sigma_max and sigma_min."""
    start = inner_model.sigma_to_t(torch.tensor(sigma_max))
    end = inner_model.sigma_to_t(torch.tensor(sigma_min))
    timesteps = torch.linspace(start, end, n + 1)[:-1] if sgm else torch.linspace(start, end, n)
    return torch.FloatTensor([*(inner_model.t_to_sigma(ts) for ts in timesteps), 0.0])


def a1111_sgm_uniform(n, sigma_min, sigma_max, inner_model):
    """``sgm_uniform``: n of n + 1 timesteps."""
    return a1111_normal(n, sigma_min, sigma_max, inner_model, sgm=True)


def a1111_simple(n, sigma_min, sigma_max, inner_model):
    """``simple_scheduler``: every (T / n)-th sigma of the wrapper from the top."""
    stride = len(inner_model.sigmas) / n
    return torch.FloatTensor([float(inner_model.sigmas[-(1 + int(x * stride))]) for x in range(n)] + [0.0])


def a1111_ddim(n, sigma_min, sigma_max, inner_model):
    """``ddim_scheduler``: the wrapper's sigmas at 1, 1 + T // n, ..., reversed."""
    stride, sigs, x = max(len(inner_model.sigmas) // n, 1), [], 1
    while x < len(inner_model.sigmas):
        sigs.append(float(inner_model.sigmas[x]))
        x += stride
    return torch.FloatTensor([*sigs[::-1], 0.0])


def a1111_beta(n, sigma_min, sigma_max, inner_model=None, alpha=0.6, beta=0.6):
    """``beta_scheduler`` (alpha, beta: the "Beta schedule" settings, default 0.6)."""
    quantiles = [scipy.stats.beta.ppf(x, alpha, beta) for x in 1 - np.linspace(0, 1, n)]
    return torch.FloatTensor([sigma_min + q * (sigma_max - sigma_min) for q in quantiles] + [0.0])


def a1111_kl_optimal(n, sigma_min, sigma_max, inner_model=None):
    """``kl_optimal``: n + 1 points of the tan ramp, ending at sigma_min (no 0)."""
    alpha_min, alpha_max = torch.arctan(torch.tensor(sigma_min)), torch.arctan(torch.tensor(sigma_max))
    index = torch.arange(n + 1)
    return torch.tan(index / n * alpha_min + (1.0 - index / n) * alpha_max)


def a1111_align_your_steps(n, sigma_min, sigma_max, inner_model=None, is_sdxl=False):
    """``get_align_your_steps_sigmas``: the model family's 11 levels, log-linearly interpolated when n != 11."""
    table = list(AYS_SDXL if is_sdxl else AYS_SD15)
    if n == len(table):
        return torch.FloatTensor([*table, 0.0])
    xs, ys = np.linspace(0, 1, len(table)), np.log(table[::-1])
    interpolated = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].copy()
    return torch.FloatTensor(np.append(interpolated, [0.0]))


# A1111's Schedule type labels (``schedulers``, minus "Automatic") and their functions.
A1111_SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {
    "Uniform": a1111_uniform,
    "Karras": a1111_karras,
    "Exponential": a1111_exponential,
    "Polyexponential": a1111_polyexponential,
    "SGM Uniform": a1111_sgm_uniform,
    "KL Optimal": a1111_kl_optimal,
    "Align Your Steps": a1111_align_your_steps,
    "Simple": a1111_simple,
    "Normal": a1111_normal,
    "DDIM": a1111_ddim,
    "Beta": a1111_beta,
}
A1111_SCHEDULE_NAMES = {  # ``schedulers_map`` holds names too: the ones samplers' "scheduler" options use
    "karras": "Karras",
    "exponential": "Exponential",
}


def a1111_schedule(label: str, n: int, inner_model) -> torch.Tensor:
    """``get_sigmas``' call of a Schedule type: sigma_min / sigma_max are the wrapper's training range."""
    sigma_min, sigma_max = inner_model.sigmas[0].item(), inner_model.sigmas[-1].item()
    return A1111_SCHEDULES[A1111_SCHEDULE_NAMES.get(label, label)](n, sigma_min, sigma_max, inner_model).float()


# --- ComfyUI, comfy/samplers.py ----------------------------------------------------------------------------------


def comfy_simple(ms: ComfyModelSampling, steps: int) -> torch.Tensor:
    stride = len(ms.sigmas) / steps
    return torch.FloatTensor([float(ms.sigmas[-(1 + int(x * stride))]) for x in range(steps)] + [0.0])


def comfy_normal(ms: ComfyModelSampling, steps: int, sgm: bool = False) -> torch.Tensor:
    """``normal_scheduler``: linspace between the integer timesteps of sigma_max and sigma_min (SGM: n of n + 1);
    a model whose smallest sigma is 0 (zero terminal SNR) takes one more timestep and no appended 0."""
    start, end = ms.timestep(ms.sigma_max), ms.timestep(ms.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigs = [float(ms.sigma(ts)) for ts in timesteps]
    return torch.FloatTensor(sigs + [0.0] * append_zero)


def comfy_sgm_uniform(ms: ComfyModelSampling, steps: int) -> torch.Tensor:
    return comfy_normal(ms, steps, sgm=True)


def comfy_karras(ms: ComfyModelSampling, steps: int) -> torch.Tensor:
    return sampling().get_sigmas_karras(n=steps, sigma_min=float(ms.sigma_min), sigma_max=float(ms.sigma_max))


def comfy_exponential(ms: ComfyModelSampling, steps: int) -> torch.Tensor:
    return sampling().get_sigmas_exponential(n=steps, sigma_min=float(ms.sigma_min), sigma_max=float(ms.sigma_max))


def comfy_ddim_uniform(ms: ComfyModelSampling, steps: int) -> torch.Tensor:
    """``ddim_scheduler``: as A1111's, but a model whose sigma at t = 1 is 0 takes one more step."""
    x = 1
    if math.isclose(float(ms.sigmas[x]), 0, abs_tol=0.00001):
        steps, sigs = steps + 1, []
    else:
        sigs = [0.0]
    stride = max(len(ms.sigmas) // steps, 1)
    while x < len(ms.sigmas):
        sigs.append(float(ms.sigmas[x]))
        x += stride
    return torch.FloatTensor(sigs[::-1])


def comfy_beta(ms: ComfyModelSampling, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """``beta_scheduler``: rounded Beta quantiles of the timesteps, repeats dropped."""
    total = len(ms.sigmas) - 1
    ts = np.rint(scipy.stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), alpha, beta) * total)
    sigs, last = [], -1
    for t in ts:
        if t != last:
            sigs.append(float(ms.sigmas[int(t)]))
        last = t
    return torch.FloatTensor([*sigs, 0.0])


def comfy_linear_quadratic(ms: ComfyModelSampling, steps: int, threshold_noise: float = 0.025) -> torch.Tensor:
    """``linear_quadratic_schedule`` (linear_steps = steps // 2)."""
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        linear_steps = steps // 2
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = step_diff / (linear_steps * quadratic_steps**2)
        linear_coef = threshold_noise / linear_steps - 2 * step_diff / (quadratic_steps**2)
        const = quadratic_coef * (linear_steps**2)
        quadratic = [quadratic_coef * i**2 + linear_coef * i + const for i in range(linear_steps, steps)]
        schedule = [1.0 - x for x in linear + quadratic + [1.0]]
    return torch.FloatTensor(schedule) * ms.sigma_max


def comfy_kl_optimal(ms: ComfyModelSampling, steps: int) -> torch.Tensor:
    """``kl_optimal_scheduler``: the tan ramp over n points (divided by n - 1: NaN at one step), then 0."""
    sigma_min, sigma_max = float(ms.sigma_min), float(ms.sigma_max)
    ramp = torch.arange(steps, dtype=torch.float).div_(steps - 1)
    sigmas = ramp.new_zeros(steps + 1)
    sigmas[:-1] = (ramp * math.atan(sigma_min) + (1 - ramp) * math.atan(sigma_max)).tan_()
    return sigmas


# ``SCHEDULER_HANDLERS``, in ComfyUI's order.
COMFY_SCHEDULES: dict[str, Callable[[ComfyModelSampling, int], torch.Tensor]] = {
    "simple": comfy_simple,
    "sgm_uniform": comfy_sgm_uniform,
    "karras": comfy_karras,
    "exponential": comfy_exponential,
    "ddim_uniform": comfy_ddim_uniform,
    "beta": comfy_beta,
    "normal": comfy_normal,
    "linear_quadratic": comfy_linear_quadratic,
    "kl_optimal": comfy_kl_optimal,
}
