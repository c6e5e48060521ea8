"""Euler on the probability-flow ODE in sigma space, in jax.numpy: Karras, Aittala, Aila & Laine 2022,
"Elucidating the Design Space of Diffusion-Based Generative Models" (arXiv:2206.00364), Algorithm 2 without the
Heun correction or churn; and its ancestral form (k-diffusion's ``sample_euler_ancestral``, "Euler a"), noise from
an explicit key. The torch core's schedulers supply the sigmas and the per-step factors, so every option (grids,
interpolation, continuous timesteps, final_sigmas_type) holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..schedulers.euler import EulerDiscreteScheduler
from ..schedulers.euler_ancestral import EulerAncestralDiscreteScheduler
from .scheduling import FlaxSchedulerMixin, padded


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class EulerDiscreteSchedulerState:
    """Per-step sigma, c_in's divisor, the step to the next sigma and v-prediction's factors, padded."""

    alphas_cumprod: jax.Array  # [T] the training schedule
    timesteps: jax.Array  # [N] float32 (fractional where the grid is)
    sigmas: jax.Array  # [N + 1]
    num_inference_steps: jax.Array
    init_noise_sigma: jax.Array
    sigma: jax.Array  # [N] the noise level the model sees at each step
    input_scale: jax.Array  # [N] sqrt(sigma^2 + 1), Karras et al. 2022 Table 1's 1 / c_in
    dt: jax.Array  # [N] sigma_{i+1} - sigma_i (ancestral: sigma_down - sigma_i)
    sigma_up: jax.Array  # [N] the std of the ancestral noise (0 for Euler)
    c_out: jax.Array  # [N] v-prediction: -sigma / sqrt(sigma^2 + 1)
    c_den: jax.Array  # [N] v-prediction: sigma^2 + 1
    step_index: jax.Array
    prediction_type: str = field(default="epsilon", metadata={"static": True})
    ancestral: bool = field(default=False, metadata={"static": True})


def sigma_space_x0(state: Any, model_output: jax.Array, x: jax.Array, i: jax.Array) -> jax.Array:
    """x0 at step ``i`` from an eps prediction (x - sigma eps), a v prediction (Salimans & Ho 2022 sec. 4, in sigma
    form: out c_out + x / c_den) or x0 itself; ``state`` has the per-step ``sigma``, ``c_out`` and ``c_den``."""
    if state.prediction_type == "epsilon":
        return x - model_output * state.sigma[i]
    if state.prediction_type == "v_prediction":
        return model_output * state.c_out[i] + x / state.c_den[i]
    return model_output


def sigma_space_tables(model_sigmas: np.ndarray, rows: int) -> dict[str, jax.Array]:
    """The per-step model sigma, c_in's divisor and v-prediction's factors, float32 as the torch core makes them."""
    sigmas = np.asarray(model_sigmas, np.float32)
    return {"sigma": padded(sigmas, rows, jnp.float32, 1.0),
            "input_scale": padded((sigmas**2 + 1) ** 0.5, rows, jnp.float32, 1.0),
            "c_out": padded(-sigmas / (sigmas**2 + 1) ** 0.5, rows, jnp.float32),
            "c_den": padded(sigmas**2 + 1, rows, jnp.float32, 1.0)}


class FlaxEulerDiscreteScheduler(FlaxSchedulerMixin):
    """Euler steps on sigma = sqrt((1 - abar) / abar), the "Euler" sampler of k-diffusion and A1111."""

    torch_class = EulerDiscreteScheduler
    ancestral = False

    @staticmethod
    def _step_tables(torch_scheduler: Any, count: int) -> tuple[Any, Any, Any]:
        """Per step: the model's sigma, the step in sigma and the ancestral noise's std."""
        sigmas = torch_scheduler.sigmas.numpy()
        return sigmas[:count], sigmas[1:count + 1] - sigmas[:count], [0.0] * count

    def create_state(self) -> EulerDiscreteSchedulerState:
        """The state before ``set_timesteps``: the training schedule and empty tables."""
        empty = jnp.zeros((0,), jnp.float32)
        return EulerDiscreteSchedulerState(
            alphas_cumprod=jnp.asarray(self._torch.alphas_cumprod.numpy(), jnp.float32), timesteps=empty,
            sigmas=empty, num_inference_steps=jnp.int32(0), init_noise_sigma=jnp.float32(1.0), sigma=empty,
            input_scale=empty, dt=empty, sigma_up=empty, c_out=empty, c_den=empty, step_index=jnp.int32(0),
            prediction_type=self.config.prediction_type, ancestral=self.ancestral)

    def set_timesteps(self, state: EulerDiscreteSchedulerState, num_inference_steps: int,
                      shape: tuple[int, ...] = (), pad_to: int | None = None) -> EulerDiscreteSchedulerState:
        """The sampling sigmas and every step's factors (``pad_to`` rows: see the DPM-Solver state)."""
        euler = self._host_schedule(num_inference_steps)
        sigmas = euler.sigmas.numpy()  # [N + 1] (one more with a log-linear grid of one step, as in diffusers)
        count = len(euler.timesteps)
        rows = pad_to or count
        model_sigmas, dt, sigma_up = self._step_tables(euler, count)
        return self.replace(
            state, timesteps=padded(euler.timesteps.numpy(), rows, jnp.float32),
            sigmas=padded(sigmas, rows + len(sigmas) - count, jnp.float32), num_inference_steps=jnp.int32(count),
            init_noise_sigma=jnp.float32(euler.init_noise_sigma), dt=padded(dt, rows, jnp.float32),
            sigma_up=padded(sigma_up, rows, jnp.float32), step_index=jnp.int32(0),
            **sigma_space_tables(model_sigmas, rows))

    def scale_model_input(self, state: EulerDiscreteSchedulerState, sample: jax.Array,
                          timestep: Any = None) -> jax.Array:
        """x / sqrt(sigma^2 + 1) at the state's step (Karras et al. 2022 Table 1, c_in)."""
        return sample / state.input_scale[state.step_index]

    def step(self, state: EulerDiscreteSchedulerState, model_output: jax.Array, timestep: Any, sample: jax.Array,
             key: jax.Array | None = None, noise: jax.Array | None = None, return_dict: bool = True) -> Any:
        """One Euler step from sigma_i to sigma_{i+1} (Karras et al. 2022 Alg. 2 lines 7-8, no churn); the
        ancestral form steps to sigma_down and adds sigma_up z, z from ``fold_in(key, step)`` (or ``noise``)."""
        # Notation (Karras et al. 2022): x the sample at sigma_i; x0 = D(x; sigma_i); d = (x - x0) / sigma_i;
        # sigma_up = sqrt(sigma_{i+1}^2 (sigma_i^2 - sigma_{i+1}^2) / sigma_i^2),
        # sigma_down^2 = sigma_{i+1}^2 - sigma_up^2.
        i = state.step_index
        sigma = state.sigma[i]
        x = sample.astype(jnp.float32)

        # 1. x0 from the model output: eps, v (Salimans & Ho 2022 sec. 4, in sigma form) or x0 itself
        x0 = sigma_space_x0(state, model_output, x, i)

        # 2. x_{i+1} = x + (sigma_{i+1} - sigma_i) d, d = (x - x0) / sigma_i (eq. 3), in diffusers' order
        prev = ((x - x0) / sigma) * state.dt[i] + x

        # 3. ancestral noise: x_{i+1} = x_down + sigma_up z, z ~ N(0, I)
        if state.ancestral:
            if noise is None:
                if key is None:
                    raise ValueError(f"{type(self).__name__} draws noise at every step; pass key= "
                                     "(jax.random.key(seed), split per run)")
                noise = jax.random.normal(jax.random.fold_in(key, i), model_output.shape, model_output.dtype)
            prev = prev + noise * state.sigma_up[i]
        return self._output(prev.astype(model_output.dtype), self.replace(state, step_index=i + 1), return_dict)


class FlaxEulerAncestralDiscreteScheduler(FlaxEulerDiscreteScheduler):
    """Ancestral Euler ("Euler a"): an Euler step to sigma_down, then fresh noise of std sigma_up (k-diffusion)."""

    torch_class = EulerAncestralDiscreteScheduler
    ancestral = True

    @staticmethod
    def _step_tables(torch_scheduler: Any, count: int) -> tuple[Any, Any, Any]:
        """The torch class's own sigma, sigma_down - sigma and sigma_up per step."""
        return (np.asarray([float(v) for v in torch_scheduler._model_sigma][:count], np.float32),
                [float(v) for v in torch_scheduler._dt], [float(v) for v in torch_scheduler._sigma_up])
