"""Imagen's dynamic thresholding in jax.numpy (Saharia et al. 2022, sec. 2.3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dynamic_threshold(x0: jax.Array, ratio: float, max_value: float) -> jax.Array:
    """Per sample, clamp x0 to [-s, s] and divide by s, s the ``ratio`` quantile of |x0| within [1, max_value]."""
    flat = x0.reshape(x0.shape[0], -1)  # [B, C*H*W]
    s = jnp.clip(jnp.quantile(jnp.abs(flat), ratio, axis=1), 1.0, max_value)[:, None]  # [B, 1]
    return (jnp.clip(flat, -s, s) / s).reshape(x0.shape)
