"""One pipeline call with diffusers' semantics: latents from the generator, the pipeline's own scheduler stepping
them under classifier-free guidance, then decoding (the order of operations of diffusers' ``__call__``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from .conditioning import Conditioning
from .schedulers.base import randn_tensor

if TYPE_CHECKING:
    from .pipeline import DiffusionPipeline

StepCallback = Callable[[Any, int, torch.Tensor, dict[str, torch.Tensor]], dict[str, torch.Tensor] | None]


@dataclass(frozen=True)
class Sampling:
    """The settings of one call that shape the loop (diffusers' ``__call__`` arguments of the same names)."""

    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    guidance_rescale: float = 0.0
    eta: float = 0.0
    generator: torch.Generator | list[torch.Generator] | None = None
    latents: torch.Tensor | None = None
    callback_on_step_end: StepCallback | None = None
    callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",)
    set_begin_index: bool = False  # SDXL's pipeline starts the scheduler at index 0 explicitly

    @property
    def guided(self) -> bool:
        """Classifier-free guidance runs only above a scale of 1 (diffusers' ``do_classifier_free_guidance``)."""
        return self.guidance_scale > 1


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", eq. 15-16):
    match the guided prediction's per-sample std to the conditional one's, mixed by ``rescale``."""
    dims = list(range(1, cond.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1 - rescale) * guided


def step_kwargs(scheduler: Any, generator: Any, eta: float) -> dict[str, Any]:
    """``eta`` and ``generator`` for the scheduler's ``step``, each only if it takes it (diffusers'
    ``prepare_extra_step_kwargs``)."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


def check_callback_inputs(names: Sequence[str], allowed: Sequence[str]) -> None:
    """Refuse tensor names a step callback cannot be given."""
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs: {', '.join(unknown)} not available; "
                         f"allowed: {', '.join(allowed)}")


def sample(
    pipeline: DiffusionPipeline,
    cond: Conditioning,
    uncond: Conditioning | None,
    latent_shape: tuple[int, ...],
    settings: Sampling,
    callback_names: dict[str, str],
) -> torch.Tensor:
    """Final latents [B, ...] for ``cond`` [B, ...] (``uncond`` [B, ...] under guidance), stepped by
    ``pipeline.scheduler``. ``callback_names`` maps the tensor names a step callback may read and replace to
    "latents", "negative" or a field of the (batched, [uncond, cond]) conditioning."""
    scheduler = pipeline.scheduler
    device = pipeline.device
    conditioning = Conditioning.concat([uncond, cond]) if settings.guided and uncond is not None else cond
    scheduler.set_timesteps(settings.num_inference_steps, device=device)
    dtype = cond.embeddings.dtype
    if settings.latents is None:
        latents = randn_tensor((cond.batch_size, *latent_shape), settings.generator, device, dtype)
    else:
        latents = settings.latents.to(device)
    latents = latents * scheduler.init_noise_sigma
    extra = step_kwargs(scheduler, settings.generator, settings.eta)
    if settings.set_begin_index:
        scheduler.set_begin_index(0)
    pipeline._num_timesteps, pipeline._interrupt = len(scheduler.timesteps), False
    # pipeline.scheduler may be any object with diffusers' contract, ours or not: read our extras forgivingly
    needs_uncond = getattr(scheduler, "needs_uncond", False)
    with torch.no_grad():
        i = 0
        while i < len(scheduler.timesteps):  # a dynamic sampler (DPM adaptive) adds calls as it goes
            t = scheduler.timesteps[i]
            if pipeline.interrupt:  # set by a step callback: the remaining steps are skipped, as in diffusers
                i += 1
                continue
            model_input = torch.cat([latents] * 2) if settings.guided else latents
            model_input = scheduler.scale_model_input(model_input, t)
            output = pipeline.denoise(model_input, t, conditioning)
            output_uncond = output
            if settings.guided:
                output_uncond, output_cond = output.chunk(2)
                scale = settings.guidance_scale * getattr(scheduler, "guidance_scale_multiplier", 1.0)
                output = output_uncond + scale * (output_cond - output_uncond)
                if settings.guidance_rescale > 0:
                    output = rescale_guidance(output, output_cond, settings.guidance_rescale)
            uncond_kwargs = {"uncond_output": output_uncond} if needs_uncond else {}  # CFG++ samplers
            latents = scheduler.step(output, t, latents, **extra, **uncond_kwargs).prev_sample
            if settings.callback_on_step_end is not None:
                latents, conditioning = _call_back(pipeline, settings, i, t, latents, conditioning, uncond,
                                                   callback_names)
            i += 1
    pipeline._num_timesteps = len(scheduler.timesteps)  # a dynamic sampler's calls are known only now
    return latents


def _call_back(pipeline: DiffusionPipeline, settings: Sampling, i: int, t: torch.Tensor, latents: torch.Tensor,
               conditioning: Conditioning, uncond: Conditioning | None,
               names: dict[str, str]) -> tuple[torch.Tensor, Conditioning]:
    """Hand the step callback the tensors it asked for; take back the latents and conditioning it returns (a
    returned negative is dropped, as in diffusers: it was already batched into the conditioning)."""
    def read(name: str) -> torch.Tensor | None:
        where = names[name]
        if where == "latents":
            return latents
        if where == "negative":
            return None if uncond is None else uncond.embeddings
        return getattr(conditioning, where)

    given = {name: read(name) for name in settings.callback_on_step_end_tensor_inputs}
    returned = dict(settings.callback_on_step_end(pipeline, i, t, given) or {})
    latents = returned.pop("latents", latents)
    fields = {names[name]: value for name, value in returned.items() if names.get(name) not in (None, "negative")}
    return latents, (replace(conditioning, **fields) if fields else conditioning)
