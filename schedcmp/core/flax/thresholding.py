"""Keeping x0 in range in jax.numpy: Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3) or plain
clipping, as a VP scheduler's config asks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp


def x0_bounds(config: Mapping[str, Any]) -> dict[str, Any]:
    """A state's static ``threshold`` (ratio, max value) and ``clip_range`` from the config (thresholding wins)."""
    threshold = (config.dynamic_thresholding_ratio, config.sample_max_value) if config.thresholding else None
    clipping = config.get("clip_sample") and not config.thresholding
    return {"threshold": threshold, "clip_range": config.clip_sample_range if clipping else None}


def bounded_x0(state: Any, x0: jax.Array) -> jax.Array:
    """x0 thresholded or clipped as the state's ``threshold`` / ``clip_range`` say (unchanged when neither)."""
    if state.threshold is not None:
        return dynamic_threshold(x0, *state.threshold)
    if state.clip_range is not None:
        return jnp.clip(x0, -state.clip_range, state.clip_range)
    return x0


def dynamic_threshold(x0: jax.Array, ratio: float, max_value: float) -> jax.Array:
    """Per sample, clamp x0 to [-s, s] and divide by s, s the ``ratio`` quantile of |x0| within [1, max_value]."""
    flat = x0.reshape(x0.shape[0], -1)  # [B, C*H*W]
    s = jnp.clip(jnp.quantile(jnp.abs(flat), ratio, axis=1), 1.0, max_value)[:, None]  # [B, 1]
    return (jnp.clip(flat, -s, s) / s).reshape(x0.shape)
