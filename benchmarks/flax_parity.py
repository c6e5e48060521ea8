"""The JAX schedulers against the torch core, class by class: the worst step-by-step difference over the parity
table's configs and step counts (what tests/test_flax_schedulers.py bounds by 1e-5), for the README's figures.

    .venv/bin/python benchmarks/flax_parity.py
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).parents[1] / "tests")]

import test_flax_schedulers as cases  # noqa: E402

from schedcmp.core.errors import ConfigError  # noqa: E402


def worst_step(case) -> float | None:
    """The largest relative difference of one case's steps (None when the torch class refuses the config)."""
    torch_class, flax_class = cases.PAIRS[case.class_name]
    try:
        reference = torch_class.from_config(case.config)
        scheduler = flax_class.from_config(case.config)
        reference.set_timesteps(case.steps)
    except ConfigError:
        return None
    state = scheduler.set_timesteps(scheduler.create_state(), case.steps, cases.SHAPE)
    sample = torch.randn(cases.SHAPE, generator=torch.Generator().manual_seed(0)) * reference.init_noise_sigma
    options = dict(case.step_kwargs)
    learned = reference.config.get("variance_type") in ("learned", "learned_range")
    stochastic = (reference.config.get("algorithm_type") in cases.SDE or options.get("eta", 0) > 0
                  or isinstance(reference, cases.ANCESTRAL))
    worst = 0.0
    for k, timestep in enumerate(reference.timesteps):
        reference.scale_model_input(sample, timestep)
        output = cases.model_output(sample, k)
        if learned:
            output = torch.cat([output, 0.05 * (1 + torch.tanh(sample))], dim=1)
        noise = torch.randn(cases.SHAPE, generator=torch.Generator().manual_seed(100 + k)) if stochastic else None
        expected = cases._torch_step(reference, output, timestep, sample, options, noise, 100 + k)
        step = scheduler.step(state, jnp.asarray(output.numpy()), timestep, jnp.asarray(sample.numpy()), **options,
                              **({"noise": jnp.asarray(noise.numpy())} if stochastic else {}))
        got, want = np.asarray(step.prev_sample), expected.numpy()
        finite = np.isfinite(want)
        if finite.any():
            worst = max(worst, float(np.abs(got[finite] - want[finite]).max() / max(np.abs(want[finite]).max(), 1e-30)))
        sample, state = expected, step.state
    return worst


def main() -> None:
    worst: dict[str, float] = collections.defaultdict(float)
    counted: collections.Counter[str] = collections.Counter()
    for case in cases._cases():
        value = worst_step(case)
        if value is not None:
            worst[case.class_name] = max(worst[case.class_name], value)
            counted[case.class_name] += 1
    print(f"{'class':34} {'cases':>6} {'worst step (relative)':>22}")
    for name, value in worst.items():
        print(f"{name:34} {counted[name]:>6} {value:>22.1e}")


if __name__ == "__main__":
    main()
