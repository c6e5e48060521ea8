"""Linear multistep (LMS) on the probability-flow ODE in sigma space, in jax.numpy: k-diffusion's ``sample_lms``
(Karras et al. 2022, arXiv:2206.00364, eq. 3 integrated with Lagrange polynomials through the past slopes). The
weights are the torch core's, computed once per schedule; unlike diffusers' Flax LMS (whose step could not be
jitted and mixed up step indices and timesteps) this one runs under jit, scan and fori_loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

from ..errors import ConfigError
from ..schedulers.lms import LMSDiscreteScheduler, lms_coefficients
from .euler import sigma_space_tables, sigma_space_x0
from .scheduling import FlaxSchedulerMixin, padded


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class LMSDiscreteSchedulerState:
    """Per-step sigma factors and LMS weights for each order (padded), the past slopes and the step."""

    alphas_cumprod: jax.Array  # [T]
    timesteps: jax.Array  # [N] float32
    sigmas: jax.Array  # [N + 1]
    num_inference_steps: jax.Array
    init_noise_sigma: jax.Array
    sigma: jax.Array  # [N]
    input_scale: jax.Array  # [N]
    c_out: jax.Array  # [N]
    c_den: jax.Array  # [N]
    weights: jax.Array  # [N, max_order, max_order]: step, order used, slope k steps back
    derivatives: jax.Array  # [max_order, *shape] past slopes, oldest first
    step_index: jax.Array
    prediction_type: str = field(default="epsilon", metadata={"static": True})


class FlaxLMSDiscreteScheduler(FlaxSchedulerMixin):
    """LMS, orders 1 to ``max_order`` (4 by default, chosen per step with ``step(..., order=)``)."""

    torch_class = LMSDiscreteScheduler

    def create_state(self) -> LMSDiscreteSchedulerState:
        """The state before ``set_timesteps``: the training schedule and empty tables."""
        empty = jnp.zeros((0,), jnp.float32)
        return LMSDiscreteSchedulerState(
            alphas_cumprod=jnp.asarray(self._torch.alphas_cumprod.numpy(), jnp.float32), timesteps=empty,
            sigmas=empty, num_inference_steps=jnp.int32(0), init_noise_sigma=jnp.float32(1.0), sigma=empty,
            input_scale=empty, c_out=empty, c_den=empty, weights=jnp.zeros((0, 4, 4), jnp.float32),
            derivatives=jnp.zeros((4,), self.dtype), step_index=jnp.int32(0),
            prediction_type=self.config.prediction_type)

    def set_timesteps(self, state: LMSDiscreteSchedulerState, num_inference_steps: int, shape: tuple[int, ...] = (),
                      pad_to: int | None = None, max_order: int = 4) -> LMSDiscreteSchedulerState:
        """The sigmas and the LMS weights of orders 1 to ``max_order`` for every step (``pad_to``: see the
        DPM-Solver state)."""
        lms = self._host_schedule(num_inference_steps)
        sigmas = lms.sigmas.numpy()
        count = len(lms.timesteps)
        rows = pad_to or count
        weights = [[[0.0] * max_order for _ in range(max_order)] for _ in range(count)]
        for order in range(1, max_order + 1):
            for i, row in enumerate(lms._weights.get(order) or lms_coefficients(lms._sigmas64, order)):
                weights[i][order - 1][:len(row)] = row
        return self.replace(
            state, timesteps=padded(lms.timesteps.numpy(), rows, jnp.float32),
            sigmas=padded(sigmas, rows + len(sigmas) - count, jnp.float32), num_inference_steps=jnp.int32(count),
            init_noise_sigma=jnp.float32(lms.init_noise_sigma), weights=padded(weights, rows, jnp.float32),
            derivatives=jnp.zeros((max_order, *shape), self.dtype), step_index=jnp.int32(0),
            **sigma_space_tables(sigmas[:count], rows))

    def scale_model_input(self, state: LMSDiscreteSchedulerState, sample: jax.Array, timestep: Any = None) -> jax.Array:
        """x / sqrt(sigma^2 + 1) at the state's step (Karras et al. 2022 Table 1, c_in)."""
        return sample / state.input_scale[state.step_index]

    def step(self, state: LMSDiscreteSchedulerState, model_output: jax.Array, timestep: Any, sample: jax.Array,
             order: int = 4, return_dict: bool = True) -> Any:
        """One linear multistep step x_{t+1} = x_t + sum_k w_k d_{t-k} (k-diffusion ``sample_lms``), in the
        inputs' dtype as the torch class computes."""
        # Notation: x the sample at sigma_t; x0 the denoised estimate; d_t = (x - x0) / sigma_t the ODE slope;
        # w_k the integral over [sigma_t, sigma_{t+1}] of the Lagrange basis polynomial of node sigma_{t-k}.
        kept = state.derivatives.shape[0]
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= kept:
            raise ConfigError(f"{type(self).__name__}.step: order must be a whole number from 1 to {kept} (the "
                              f"max_order of set_timesteps), got {order!r}")
        i = state.step_index

        # 1. x0 from the model output: eps, v (Salimans & Ho 2022 sec. 4) or x0 itself
        x0 = sigma_space_x0(state, model_output, sample, i)

        # 2. the slope d_t, newest last among the kept ones
        derivatives = jnp.concatenate([state.derivatives[1:], ((sample - x0) / state.sigma[i])[None]])

        # 3. x_{t+1} = x_t + sum_k w_k d_{t-k}, the order capped by the steps taken so far
        weights = state.weights[i, jnp.minimum(i + 1, order) - 1]  # [max_order]
        increment = weights[0] * derivatives[-1]
        for k in range(1, order):
            increment = increment + jnp.where(weights[k] != 0, weights[k] * derivatives[-1 - k], 0.0)
        prev = sample + increment
        return self._output(prev, self.replace(state, derivatives=derivatives, step_index=i + 1), return_dict)
