"""DDIM in jax.numpy: Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models" (arXiv:2010.02502), eq. 12
with sigma_t of eq. 16; ``eta > 0`` draws its noise from an explicit key. The torch core's DDIMScheduler supplies
the timesteps and the per-step alpha-bars, so every option (spacings, zero-SNR, set_alpha_to_one) holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

from ..schedulers.ddim import DDIMScheduler
from .scheduling import FlaxSchedulerMixin, padded
from .thresholding import bounded_x0, x0_bounds


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class DDIMSchedulerState:
    """Per-step sqrt(abar_t), sqrt(1 - abar_t), sqrt(abar_prev) and sigma_t^2 / eta^2, padded, and the step."""

    alphas_cumprod: jax.Array  # [T] the training schedule, for add_noise
    timesteps: jax.Array  # [N] int32
    num_inference_steps: jax.Array
    init_noise_sigma: jax.Array
    sqrt_alpha_bar: jax.Array  # [N]
    sqrt_beta_bar: jax.Array  # [N]
    alpha_bar_prev: jax.Array  # [N]
    variance: jax.Array  # [N] sigma_t^2 / eta^2 (eq. 16)
    step_index: jax.Array
    prediction_type: str = field(default="epsilon", metadata={"static": True})
    threshold: tuple[float, float] | None = field(default=None, metadata={"static": True})
    clip_range: float | None = field(default=None, metadata={"static": True})


class FlaxDDIMScheduler(FlaxSchedulerMixin):
    """Generalised DDIM (eta = 0: the deterministic sampler; eta = 1: DDPM-like ancestral steps)."""

    torch_class = DDIMScheduler

    def create_state(self) -> DDIMSchedulerState:
        """The state before ``set_timesteps``: the training schedule and empty tables."""
        config, empty = self.config, jnp.zeros((0,), jnp.float32)
        return DDIMSchedulerState(
            alphas_cumprod=jnp.asarray(self._torch.alphas_cumprod.numpy(), jnp.float32),
            timesteps=jnp.zeros((0,), jnp.int32), num_inference_steps=jnp.int32(0), init_noise_sigma=jnp.float32(1.0),
            sqrt_alpha_bar=empty, sqrt_beta_bar=empty, alpha_bar_prev=empty, variance=empty, step_index=jnp.int32(0),
            prediction_type=config.prediction_type,
            **x0_bounds(config))

    def set_timesteps(self, state: DDIMSchedulerState, num_inference_steps: int, shape: tuple[int, ...] = (),
                      pad_to: int | None = None) -> DDIMSchedulerState:
        """The sub-sequence tau of training timesteps and its alpha-bars (Song et al. 2021 sec. 4.2), ``pad_to``
        rows (see FlaxDPMSolverMultistepScheduler.set_timesteps)."""
        ddim = self._host_schedule(num_inference_steps)
        rows = pad_to or len(ddim.timesteps)
        return self.replace(
            state, timesteps=padded(ddim.timesteps.numpy(), rows, jnp.int32),
            num_inference_steps=jnp.int32(len(ddim.timesteps)), init_noise_sigma=jnp.float32(ddim.init_noise_sigma),
            sqrt_alpha_bar=padded(ddim._sqrt_alpha_bar, rows, jnp.float32, 1.0),
            sqrt_beta_bar=padded(ddim._sqrt_beta_bar, rows, jnp.float32, 1.0),
            alpha_bar_prev=padded(ddim._alpha_bar_prev.numpy(), rows, jnp.float32, 1.0),
            variance=padded(ddim._variance.numpy(), rows, jnp.float32), step_index=jnp.int32(0))

    def step(self, state: DDIMSchedulerState, model_output: jax.Array, timestep: Any, sample: jax.Array,
             eta: float = 0.0, use_clipped_model_output: bool = False, key: jax.Array | None = None,
             noise: jax.Array | None = None, return_dict: bool = True) -> Any:
        """One generalised DDIM step x_t -> x_{t-1} (Song et al. 2021 eq. 12, sigma_t of eq. 16); with eta > 0,
        z from ``fold_in(key, step)`` (or ``noise``)."""
        # Notation (Song et al. 2021, whose "alpha_t" is our abar_t): x0_hat, eps_hat the model's estimates;
        # sigma_t = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev).
        i = state.step_index
        a, b = state.sqrt_alpha_bar[i], state.sqrt_beta_bar[i]

        # 1. x0_hat and eps_hat from the model output (v: Salimans & Ho 2022)
        if state.prediction_type == "epsilon":
            x0, eps = (sample - model_output * b) / a, model_output
        elif state.prediction_type == "sample":
            x0 = model_output
            eps = (sample - a * x0) / b
        else:  # v_prediction
            x0, eps = a * sample - b * model_output, a * model_output + b * sample

        # 2. keep x0_hat in range: dynamic thresholding (Imagen sec. 2.3) or plain clipping
        x0 = bounded_x0(state, x0)

        # 3. sigma_t (eq. 16) and the weight of the direction term
        std = eta * jnp.sqrt(state.variance[i])
        direction = jnp.sqrt(1 - state.alpha_bar_prev[i] - std**2)

        # 4. eps_hat from the clipped x0_hat if asked (the Glide / DDIM reference code)
        if use_clipped_model_output:
            eps = (sample - a * x0) / b

        # 5-6. "direction pointing to x_t" plus the rescaled "predicted x_0" (eq. 12)
        prev = jnp.sqrt(state.alpha_bar_prev[i]) * x0 + direction * eps

        # 7. "random noise" sigma_t z (eq. 12) when eta > 0
        if not (isinstance(eta, int | float) and eta == 0):
            if noise is None:
                if key is None:
                    raise ValueError(f"{type(self).__name__}: eta > 0 draws noise at every step; pass key= "
                                     "(jax.random.key(seed), split per run)")
                noise = jax.random.normal(jax.random.fold_in(key, i), sample.shape, sample.dtype)
            prev = prev + std * noise
        return self._output(prev.astype(sample.dtype), self.replace(state, step_index=i + 1), return_dict)
