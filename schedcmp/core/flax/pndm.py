"""PNDM in jax.numpy: Liu, Ren, Lin & Zhao 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds"
(arXiv:2202.09778), sec. 3: Runge-Kutta warm-up calls (PRK) then linear multistep (PLMS) steps, each moved through
the transfer phi of eq. 9. The torch core's PNDMScheduler lays out every call (which combination it takes and its
coefficients); the state carries that layout, so each call is one ``lax.switch`` over the kinds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

from ..schedulers.pndm import PNDMScheduler
from .scheduling import FlaxSchedulerMixin, padded

KINDS = ("rk1", "rk2", "rk3", "rk4", "first", "redo", "ab2", "ab3", "ab4")
Combined = tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]  # eps, x_t, ets, cur_sample, rk_sum


def _pushed(ets: jax.Array, out: jax.Array) -> jax.Array:
    return jnp.concatenate([ets[1:], out[None]])  # e_1 appended, the oldest dropped


def _rk1(out: jax.Array, x: jax.Array, ets: jax.Array, cur: jax.Array, rk_sum: jax.Array) -> Combined:
    """First RK stage: keep x_t and e_1, start the sum e_1 / 6."""
    return out, x, _pushed(ets, out), x, out * jnp.float32(1 / 6)


def _rk_middle(out: jax.Array, x: jax.Array, ets: jax.Array, cur: jax.Array, rk_sum: jax.Array) -> Combined:
    """Second and third RK stages: from x_t with their own eps, adding e / 3 to the sum."""
    return out, cur, ets, cur, rk_sum + out * jnp.float32(1 / 3)


def _rk4(out: jax.Array, x: jax.Array, ets: jax.Array, cur: jax.Array, rk_sum: jax.Array) -> Combined:
    """Last RK stage: e' = (e_1 + 2 e_2 + 2 e_3 + e_4) / 6, from x_t."""
    return rk_sum + out * jnp.float32(1 / 6), cur, ets, cur, rk_sum


def _first(out: jax.Array, x: jax.Array, ets: jax.Array, cur: jax.Array, rk_sum: jax.Array) -> Combined:
    """PLMS start: a plain first-order step, x_t kept for the redo."""
    return out, x, _pushed(ets, out), x, rk_sum


def _redo(out: jax.Array, x: jax.Array, ets: jax.Array, cur: jax.Array, rk_sum: jax.Array) -> Combined:
    """The first step again from x_t, with the mean of both ends' outputs (not kept)."""
    return (out + ets[-1]) / 2.0, cur, ets, cur, rk_sum


def _ab2(out: jax.Array, x: jax.Array, ets: jax.Array, cur: jax.Array, rk_sum: jax.Array) -> Combined:
    """(3 e_1 - e_2) / 2."""
    e = _pushed(ets, out)
    return (e[-1] * 3.0 - e[-2]) / 2.0, x, e, cur, rk_sum


def _ab3(out: jax.Array, x: jax.Array, ets: jax.Array, cur: jax.Array, rk_sum: jax.Array) -> Combined:
    """(23 e_1 - 16 e_2 + 5 e_3) / 12."""
    e = _pushed(ets, out)
    return (e[-1] * 23.0 - e[-2] * 16.0 + e[-3] * 5.0) / 12.0, x, e, cur, rk_sum


def _ab4(out: jax.Array, x: jax.Array, ets: jax.Array, cur: jax.Array, rk_sum: jax.Array) -> Combined:
    """(55 e_1 - 59 e_2 + 37 e_3 - 9 e_4) / 24, written (1 / 24) (...) as diffusers does."""
    e = _pushed(ets, out)
    return (e[-1] * 55.0 - e[-2] * 59.0 + e[-3] * 37.0 - e[-4] * 9.0) * jnp.float32(1 / 24), x, e, cur, rk_sum


# One function per kind, in KINDS' order; module-level, so jax traces the switch once rather than every call.
_COMBINE = (_rk1, _rk_middle, _rk_middle, _rk4, _first, _redo, _ab2, _ab3, _ab4)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class PNDMSchedulerState:
    """Per model call: its kind and the coefficients of phi (eq. 9), padded; the past outputs, the sample the
    current RK block (or the PLMS start) moves from, the running RK sum, and the call's index."""

    alphas_cumprod: jax.Array  # [T]
    timesteps: jax.Array  # [C] int32, a row per model call
    num_inference_steps: jax.Array  # model calls (C), what a loop over the state runs
    init_noise_sigma: jax.Array
    kind: jax.Array  # [C] int32 index into KINDS
    sample_coeff: jax.Array  # [C] sqrt(abar_prev / abar_t)
    eps_numerator: jax.Array  # [C] abar_prev - abar_t
    eps_denominator: jax.Array  # [C] abar_t sqrt(1 - abar_prev) + sqrt(abar_t (1 - abar_t) abar_prev)
    sqrt_alpha_bar: jax.Array  # [C] for v-prediction
    sqrt_beta_bar: jax.Array  # [C] for v-prediction
    ets: jax.Array  # [4, *shape] past model outputs, newest last
    cur_sample: jax.Array  # [*shape]
    rk_sum: jax.Array  # [*shape]
    step_index: jax.Array
    prediction_type: str = field(default="epsilon", metadata={"static": True})


class FlaxPNDMScheduler(FlaxSchedulerMixin):
    """PNDM: F-PNDM with its PRK warm-up, or PLMS alone (``skip_prk_steps``, Stable Diffusion's default)."""

    torch_class = PNDMScheduler

    def create_state(self) -> PNDMSchedulerState:
        """The state before ``set_timesteps``: the training schedule and empty tables."""
        empty, scalar = jnp.zeros((0,), jnp.float32), jnp.zeros((), self.dtype)
        return PNDMSchedulerState(
            alphas_cumprod=jnp.asarray(self._torch.alphas_cumprod.numpy(), jnp.float32),
            timesteps=jnp.zeros((0,), jnp.int32), num_inference_steps=jnp.int32(0), init_noise_sigma=jnp.float32(1.0),
            kind=jnp.zeros((0,), jnp.int32), sample_coeff=empty, eps_numerator=empty, eps_denominator=empty,
            sqrt_alpha_bar=empty, sqrt_beta_bar=empty, ets=jnp.zeros((4,), self.dtype), cur_sample=scalar,
            rk_sum=scalar, step_index=jnp.int32(0), prediction_type=self.config.prediction_type)

    def set_timesteps(self, state: PNDMSchedulerState, num_inference_steps: int, shape: tuple[int, ...] = (),
                      pad_to: int | None = None) -> PNDMSchedulerState:
        """Every model call of the PRK warm-up and the PLMS steps (Liu et al. 2022 sec. 3); ``pad_to`` rows of
        model calls (see the DPM-Solver state)."""
        pndm = self._host_schedule(num_inference_steps)
        stages = pndm._stages
        rows = pad_to or len(stages)

        def column(values: Any, fill: float = 1.0) -> jax.Array:
            return padded([float(v) for v in values], rows, jnp.float32, fill)

        square = [(s.sqrt_alpha_bar, s.sqrt_beta_bar) if s.sqrt_alpha_bar is not None else (1.0, 0.0) for s in stages]
        return self.replace(
            state, timesteps=padded(pndm.timesteps.numpy(), rows, jnp.int32),
            num_inference_steps=jnp.int32(len(stages)), init_noise_sigma=jnp.float32(pndm.init_noise_sigma),
            kind=padded([KINDS.index(s.kind) for s in stages], rows, jnp.int32, KINDS.index("ab4")),
            sample_coeff=column(s.sample_coeff for s in stages), eps_numerator=column(s.eps_numerator for s in stages),
            eps_denominator=column(s.eps_denominator for s in stages), sqrt_alpha_bar=column(a for a, _ in square),
            sqrt_beta_bar=column((b for _, b in square), 0.0), ets=jnp.zeros((4, *shape), self.dtype),
            cur_sample=jnp.zeros(shape, self.dtype), rk_sum=jnp.zeros(shape, self.dtype), step_index=jnp.int32(0))

    def step(self, state: PNDMSchedulerState, model_output: jax.Array, timestep: Any, sample: jax.Array,
             return_dict: bool = True) -> Any:
        """One model call of PRK or PLMS (Liu et al. 2022 sec. 3) moved through phi (eq. 9)."""
        # Notation (Liu et al. 2022): e_k the model outputs, newest e_1; x_t the sample the transfer starts from
        # (the block start for RK stages and the PLMS redo); phi(x, e) = sqrt(abar_prev / abar_t) x
        # - (abar_prev - abar_t) e / denominator (eq. 9).
        i = state.step_index

        # 1. combine the model outputs into the eps phi takes, and what the history keeps, per kind of call
        eps, base, ets, cur, rk_sum = jax.lax.switch(state.kind[i], _COMBINE, model_output, sample, state.ets,
                                                     state.cur_sample, state.rk_sum)

        # 2. v-prediction: the combined output as eps at t (diffusers converts after combining)
        if state.prediction_type == "v_prediction":
            eps = eps * state.sqrt_alpha_bar[i] + base * state.sqrt_beta_bar[i]

        # 3. transfer x_t -> x_{t - delta} with phi (eq. 9)
        prev = base * state.sample_coeff[i] - (eps * state.eps_numerator[i]) / state.eps_denominator[i]
        new_state = self.replace(state, ets=ets, cur_sample=cur, rk_sum=rk_sum, step_index=i + 1)
        return self._output(prev.astype(sample.dtype), new_state, return_dict)
