"""DDPM ancestral sampling in jax.numpy: Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models"
(arXiv:2006.11239), eqs. 6-7 and Algorithm 2, with the learned variances of Nichol & Dhariwal 2021 (eq. 15); the
noise comes from an explicit key (diffusers' Flax DDPM drew the same key(0) noise at every step). The torch
core's DDPMScheduler supplies the posterior coefficients of every step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

from ..schedulers.ddpm import DDPMScheduler
from .scheduling import FlaxSchedulerMixin, padded
from .thresholding import bounded_x0, x0_bounds


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class DDPMSchedulerState:
    """Per-step posterior coefficients (Ho et al. 2020 eq. 7) and noise scales, padded, and the step."""

    alphas_cumprod: jax.Array  # [T]
    timesteps: jax.Array  # [N] int32
    num_inference_steps: jax.Array
    init_noise_sigma: jax.Array
    sqrt_alpha_bar: jax.Array  # [N]
    sqrt_beta_bar: jax.Array  # [N]
    x0_coeff: jax.Array  # [N] of x0_hat in mu_t
    xt_coeff: jax.Array  # [N] of x_t in mu_t
    noise_std: jax.Array  # [N] sigma_t of a fixed variance
    min_log: jax.Array  # [N] log beta-tilde (learned_range)
    max_log: jax.Array  # [N] log beta (learned_range)
    adds_noise: jax.Array  # [N] bool: no noise on the step from t = 0
    step_index: jax.Array
    prediction_type: str = field(default="epsilon", metadata={"static": True})
    variance_type: str = field(default="fixed_small", metadata={"static": True})
    threshold: tuple[float, float] | None = field(default=None, metadata={"static": True})
    clip_range: float | None = field(default=None, metadata={"static": True})


class FlaxDDPMScheduler(FlaxSchedulerMixin):
    """DDPM's ancestral sampler (every variance type of the torch class)."""

    torch_class = DDPMScheduler

    def create_state(self) -> DDPMSchedulerState:
        """The state before ``set_timesteps``: the training schedule and empty tables."""
        config, empty = self.config, jnp.zeros((0,), jnp.float32)
        return DDPMSchedulerState(
            alphas_cumprod=jnp.asarray(self._torch.alphas_cumprod.numpy(), jnp.float32),
            timesteps=jnp.zeros((0,), jnp.int32), num_inference_steps=jnp.int32(0), init_noise_sigma=jnp.float32(1.0),
            sqrt_alpha_bar=empty, sqrt_beta_bar=empty, x0_coeff=empty, xt_coeff=empty, noise_std=empty,
            min_log=empty, max_log=empty, adds_noise=jnp.zeros((0,), bool), step_index=jnp.int32(0),
            prediction_type=config.prediction_type, variance_type=config.variance_type,
            **x0_bounds(config))

    def set_timesteps(self, state: DDPMSchedulerState, num_inference_steps: int, shape: tuple[int, ...] = (),
                      pad_to: int | None = None) -> DDPMSchedulerState:
        """The (strided) timesteps and each step's posterior coefficients (``pad_to``: see the DPM-Solver state)."""
        ddpm = self._host_schedule(num_inference_steps)
        count = len(ddpm.timesteps)
        rows = pad_to or count
        learned = ddpm.config.variance_type in ("learned", "learned_range")

        def table(values: Any, fill: float = 0.0) -> jax.Array:
            return padded([float(v) for v in values], rows, jnp.float32, fill)

        return self.replace(
            state, timesteps=padded(ddpm.timesteps.numpy(), rows, jnp.int32), num_inference_steps=jnp.int32(count),
            init_noise_sigma=jnp.float32(ddpm.init_noise_sigma), sqrt_alpha_bar=table(ddpm._sqrt_alpha_bar, 1.0),
            sqrt_beta_bar=table(ddpm._sqrt_beta_bar, 1.0), x0_coeff=table(ddpm._x0_coeff),
            xt_coeff=table(ddpm._xt_coeff), noise_std=table([0.0] * count if learned else ddpm._noise_std),
            min_log=table(ddpm._min_log if learned else [0.0] * count),
            max_log=table(ddpm._max_log if learned else [0.0] * count),
            adds_noise=padded(ddpm._adds_noise, rows, jnp.int32).astype(bool), step_index=jnp.int32(0))

    def step(self, state: DDPMSchedulerState, model_output: jax.Array, timestep: Any, sample: jax.Array,
             key: jax.Array | None = None, noise: jax.Array | None = None, return_dict: bool = True) -> Any:
        """One ancestral step x_t -> x_{t-1} (Ho et al. 2020 eqs. 6-7, Algorithm 2); z from ``fold_in(key, step)``
        (or ``noise``), none on the step from t = 0."""
        # Notation (Ho et al. 2020): x0_hat the model's estimate of x_0; mu_t, sigma_t the mean and std of
        # q(x_{t-1} | x_t, x0_hat); z standard normal noise.
        i = state.step_index
        a, b = state.sqrt_alpha_bar[i], state.sqrt_beta_bar[i]

        # 1. split off the predicted variance of learned-variance models (2C output channels)
        variance = None
        if state.variance_type in ("learned", "learned_range"):
            if model_output.shape[1] != 2 * sample.shape[1]:
                raise ValueError(f"{type(self).__name__}: variance_type={state.variance_type!r} needs a model output "
                                 f"with twice the sample's {sample.shape[1]} channels, got {model_output.shape[1]}")
            model_output, variance = jnp.split(model_output, 2, axis=1)

        # 2. x0_hat from the model output (eq. 15 for epsilon; Salimans & Ho 2022 for v)
        if state.prediction_type == "epsilon":
            x0 = (sample - model_output * b) / a
        elif state.prediction_type == "sample":
            x0 = model_output
        else:  # v_prediction
            x0 = sample * a - model_output * b

        # 3. keep x0_hat in range: dynamic thresholding (Imagen sec. 2.3) or plain clipping
        x0 = bounded_x0(state, x0)

        # 4. posterior mean mu_t(x_t, x0_hat) (eq. 7)
        prev = x0 * state.x0_coeff[i] + sample * state.xt_coeff[i]

        # 5. add sigma_t z, except on the step from t = 0 (Algorithm 2, line 4)
        if noise is None:
            if key is None:
                raise ValueError(f"{type(self).__name__} draws noise at every step; pass key= "
                                 "(jax.random.key(seed), split per run)")
            noise = jax.random.normal(jax.random.fold_in(key, i), model_output.shape, model_output.dtype)
        if state.variance_type == "learned":
            std = variance**0.5
        elif state.variance_type == "learned_range":  # v in [-1, 1] interpolates log beta-tilde .. log beta
            fraction = (variance + 1) / 2
            std = jnp.exp(0.5 * (fraction * state.max_log[i] + (1 - fraction) * state.min_log[i]))
        else:
            std = state.noise_std[i]
        prev = jnp.where(state.adds_noise[i], prev + noise * std, prev)
        return self._output(prev.astype(sample.dtype), self.replace(state, step_index=i + 1), return_dict)
