"""DPM-Solver and DPM-Solver++ multistep (ODE and SDE, orders 1-3) in jax.numpy.

Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"
(arXiv:2211.01095), Alg. 2 and its third-order and SDE counterparts. Every update is a fixed linear combination
of the sample, the newest model output and its differences (and noise for the SDE variants); the torch core
computes those weights per step and order in ``set_timesteps`` (``dpmsolver.update_weights``), and the state
carries them, so every option of the torch class (grids, ``final_sigmas_type``, ``lambda_min_clipped``,
``euler_at_final``, ...) holds here unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from ..schedulers.dpmsolver_multistep import DPMSolverMultistepScheduler
from .scheduling import FlaxSchedulerMixin, padded
from .thresholding import dynamic_threshold, x0_bounds


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class DPMSolverMultistepSchedulerState:
    """The schedule's tables (one row per step, padded past ``num_inference_steps``) and the running values."""

    alphas_cumprod: jax.Array  # [T] the training schedule, for add_noise
    timesteps: jax.Array  # [N] int32
    num_inference_steps: jax.Array  # int32
    init_noise_sigma: jax.Array
    alpha: jax.Array  # [N] VP signal scale at each step's start
    sigma: jax.Array  # [N] VP noise scale at each step's start
    weights: jax.Array  # [N, order, 5] (x_s, D0, first difference, second difference, z) for each order
    max_order: jax.Array  # [N] int32: the order each step may reach
    model_outputs: jax.Array  # [order, *shape] converted outputs, oldest first
    lower_order_nums: jax.Array  # int32: outputs gathered so far, up to the order
    step_index: jax.Array  # int32
    solver_order: int = field(default=2, metadata={"static": True})
    prediction_type: str = field(default="epsilon", metadata={"static": True})
    algorithm_type: str = field(default="dpmsolver++", metadata={"static": True})
    threshold: tuple[float, float] | None = field(default=None, metadata={"static": True})


class FlaxDPMSolverMultistepScheduler(FlaxSchedulerMixin):
    """DPM-Solver(++) multistep, the "DPM++ 2M (Karras)" sampler; the SDE variants draw noise from ``key``."""

    torch_class = DPMSolverMultistepScheduler
    # learned variances split the model output's channels; the jnp step takes the whole output
    refused: ClassVar[Mapping[str, tuple[Any, ...]]] = {"variance_type": ("learned", "learned_range")}

    def create_state(self) -> DPMSolverMultistepSchedulerState:
        """The state before ``set_timesteps``: the training schedule and empty tables."""
        config = self.config
        order = config.solver_order
        return DPMSolverMultistepSchedulerState(
            alphas_cumprod=jnp.asarray(self._torch.alphas_cumprod.numpy(), jnp.float32),
            timesteps=jnp.zeros((0,), jnp.int32), num_inference_steps=jnp.int32(0),
            init_noise_sigma=jnp.float32(1.0), alpha=jnp.zeros((0,), jnp.float32),
            sigma=jnp.zeros((0,), jnp.float32), weights=jnp.zeros((0, order, 5), jnp.float32),
            max_order=jnp.zeros((0,), jnp.int32), model_outputs=jnp.zeros((order,), self.dtype),
            lower_order_nums=jnp.int32(0), step_index=jnp.int32(0), solver_order=order,
            prediction_type=config.prediction_type, algorithm_type=config.algorithm_type,
            threshold=x0_bounds(config)["threshold"])

    def set_timesteps(self, state: DPMSolverMultistepSchedulerState, num_inference_steps: int,
                      shape: tuple[int, ...] = (), pad_to: int | None = None) -> DPMSolverMultistepSchedulerState:
        """The state for ``num_inference_steps`` on samples of ``shape``: every step's timestep, scales, order
        cap and update weights (Lu et al. 2022b Alg. 2); ``pad_to`` rows, so states of any step count up to it
        share one shape and a loop over them compiles once."""
        torch_scheduler = self._host_schedule(num_inference_steps)
        count = len(torch_scheduler._max_order)
        rows = pad_to or count
        order = state.solver_order
        weights = [[list(w) if w is not None else [0.0] * 5 for w in step[:order]]
                   for step in torch_scheduler._weights]
        return self.replace(
            state, timesteps=padded(torch_scheduler.timesteps.numpy(), rows, jnp.int32),
            num_inference_steps=jnp.int32(count), init_noise_sigma=jnp.float32(torch_scheduler.init_noise_sigma),
            alpha=padded(torch_scheduler._alpha, rows, jnp.float32, 1.0),
            sigma=padded(torch_scheduler._sigma, rows, jnp.float32, 1.0),
            weights=padded(weights, rows, jnp.float32),
            max_order=padded(torch_scheduler._max_order, rows, jnp.int32, 1),
            model_outputs=jnp.zeros((order, *shape), self.dtype), lower_order_nums=jnp.int32(0),
            step_index=jnp.int32(0))

    def step(self, state: DPMSolverMultistepSchedulerState, model_output: jax.Array, timestep: Any,
             sample: jax.Array, key: jax.Array | None = None, noise: jax.Array | None = None,
             return_dict: bool = True) -> Any:
        """One multistep DPM-Solver(++) update from the state's step to the next (Lu et al. 2022b Alg. 2); the step
        is the state's counter (``timestep`` is taken for diffusers' signature). The SDE variants draw z from
        ``fold_in(key, step)`` (or take ``noise``)."""
        # Notation (Lu et al. 2022b): x_s the sample at this step; alpha, sigma its VP scales; m_j the converted
        # outputs (x0 for DPM-Solver++, eps for DPM-Solver), m_0 the newest; z standard normal noise.
        i = state.step_index
        alpha, sigma = state.alpha[i], state.sigma[i]
        x = sample.astype(jnp.float32)

        # 1. the model output as the solver's target (Lu et al. 2022b Sec. 3), thresholded if asked
        converted = _converted(state, model_output.astype(jnp.float32), x, alpha, sigma)
        history = jnp.concatenate([state.model_outputs[1:], converted[None].astype(state.model_outputs.dtype)])

        # 2. order: limited by the outputs gathered so far and by the lower-order rule near the end
        order = jnp.minimum(state.max_order[i], state.lower_order_nums + 1)
        weights = state.weights[i, order - 1]  # [5]

        # 3. x_t = w_x x_s + w_D0 m_0 + w_a (m_0 - m_1) + w_b (m_1 - m_2) (+ w_z z); a zero weight adds nothing,
        #    so coinciding timesteps (an infinite difference) do not turn the sample into NaN
        m = history[::-1].astype(jnp.float32)  # newest first
        terms = [m[0], *([m[0] - m[1]] if state.solver_order >= 2 else []),
                 *([m[1] - m[2]] if state.solver_order >= 3 else [])]
        prev = x * weights[0]
        for term, weight in zip(terms, (weights[1], weights[2], weights[3]), strict=False):
            prev = prev + jnp.where(weight != 0, weight * term, 0.0)
        if state.algorithm_type in ("sde-dpmsolver", "sde-dpmsolver++"):
            if noise is None:
                if key is None:
                    raise ValueError(f"{type(self).__name__}: algorithm_type={state.algorithm_type!r} draws noise at "
                                     "every step; pass key= (jax.random.key(seed), split per run)")
                noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float32)
            prev = prev + weights[4] * noise.astype(jnp.float32)

        new_state = self.replace(state, model_outputs=history, step_index=i + 1,
                                 lower_order_nums=jnp.minimum(state.lower_order_nums + 1, state.solver_order))
        return self._output(prev.astype(sample.dtype), new_state, return_dict)


def _converted(state: DPMSolverMultistepSchedulerState, output: jax.Array, x: jax.Array, alpha: jax.Array,
               sigma: jax.Array) -> jax.Array:
    """x0 (DPM-Solver++) or eps (DPM-Solver) from an eps, sample or v prediction, x_t = alpha x0 + sigma eps and
    v = alpha eps - sigma x0 (Salimans & Ho 2022); Imagen's dynamic thresholding on x0 where configured."""
    prediction = state.prediction_type
    if prediction == "epsilon":
        x0, eps = (x - sigma * output) / alpha, output
    elif prediction == "sample":
        x0, eps = output, (x - alpha * output) / sigma
    else:  # v_prediction
        x0, eps = alpha * x - sigma * output, alpha * output + sigma * x
    if state.algorithm_type in ("dpmsolver++", "sde-dpmsolver++"):
        return x0 if state.threshold is None else dynamic_threshold(x0, *state.threshold)
    if state.threshold is None:
        return eps
    x0 = dynamic_threshold((x - sigma * eps) / alpha, *state.threshold)
    return (x - alpha * x0) / sigma
