"""The JAX backend's schedulers: step by step equal to the torch core of the same config (which equals diffusers),
over the parity table's configs; usable under jit, lax.scan and lax.fori_loop, one compile for every step count;
immutable states; noise from explicit keys; diffusers' Flax API (from_pretrained -> (scheduler, state))."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scheduler_cases import BASE_CONFIGS, cases_for

jax = pytest.importorskip("jax", reason="the JAX backend is the optional extra 'jax' (pip install 'schedcmp[jax]')")
import jax.numpy as jnp  # noqa: E402

from schedcmp.core.errors import ConfigError  # noqa: E402
from schedcmp.core.flax import (  # noqa: E402
    FlaxDDIMScheduler,
    FlaxDDPMScheduler,
    FlaxDPMSolverMultistepScheduler,
    FlaxEulerAncestralDiscreteScheduler,
    FlaxEulerDiscreteScheduler,
    FlaxLMSDiscreteScheduler,
    FlaxPNDMScheduler,
)
from schedcmp.core.schedulers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)

PAIRS = {
    "DPMSolverMultistepScheduler": (DPMSolverMultistepScheduler, FlaxDPMSolverMultistepScheduler),
    "DDIMScheduler": (DDIMScheduler, FlaxDDIMScheduler),
    "EulerDiscreteScheduler": (EulerDiscreteScheduler, FlaxEulerDiscreteScheduler),
    "EulerAncestralDiscreteScheduler": (EulerAncestralDiscreteScheduler, FlaxEulerAncestralDiscreteScheduler),
    "LMSDiscreteScheduler": (LMSDiscreteScheduler, FlaxLMSDiscreteScheduler),
    "DDPMScheduler": (DDPMScheduler, FlaxDDPMScheduler),
    "PNDMScheduler": (PNDMScheduler, FlaxPNDMScheduler),
}
ANCESTRAL = (EulerAncestralDiscreteScheduler, DDPMScheduler)  # they draw their noise from a generator only
# Step options of the torch classes their Flax twins take too (Euler's churn is the torch class's alone).
FLAX_STEP_OPTIONS = {"eta", "use_clipped_model_output"}
SHAPE = (1, 4, 8, 8)
SDE = ("sde-dpmsolver", "sde-dpmsolver++")


def _cases() -> list:
    """The parity table's configs and step counts for each class with a JAX twin (its two models are one here)."""
    seen, cases = set(), []
    for name in PAIRS:
        for case in cases_for(name):
            key = case.id.rsplit("-", 1)[0]  # the id without its model
            if key not in seen and set(dict(case.step_kwargs)) <= FLAX_STEP_OPTIONS:
                seen.add(key)
                cases.append(case)
    return cases


def model_output(sample: torch.Tensor, k: int) -> torch.Tensor:
    """A smooth, bounded stand-in for a denoiser, different at every step (so every sampler stays finite)."""
    return 0.8 * torch.tanh(sample) + 0.05 * torch.sin(sample * (k + 1))


def assert_close(got: jax.Array, expected: torch.Tensor, where: str, rel: float = 1e-5) -> None:
    """Equal within ``rel`` of the largest finite value, with infinities and NaNs in the same places (where the
    torch class overflows, the same config overflows here)."""
    got, want = np.asarray(got), expected.numpy()
    assert np.array_equal(np.isfinite(got), np.isfinite(want)), where
    finite = np.isfinite(want)
    scale = float(np.abs(want[finite]).max(initial=0.0)) or 1.0
    assert np.abs(got[finite] - want[finite]).max(initial=0.0) / scale <= rel, where


@pytest.mark.parametrize("case", _cases(), ids=lambda case: case.id)
def test_steps_match_the_torch_scheduler(case) -> None:
    torch_class, flax_class = PAIRS[case.class_name]
    try:
        reference = torch_class.from_config(case.config)
    except ConfigError as err:  # the torch class refuses it: so does its twin, in the same words
        with pytest.raises(ConfigError, match="^" + str(err).split(":")[0]):
            flax_class.from_config(case.config)
        return
    learned = reference.config.get("variance_type") in ("learned", "learned_range")
    if reference.config.get("variance_type") in flax_class.refused.get("variance_type", ()):
        with pytest.raises(ConfigError, match="is not available in the JAX backend"):
            flax_class.from_config(case.config)
        return
    scheduler = flax_class.from_config(case.config)
    try:
        reference.set_timesteps(case.steps)
    except ConfigError as err:  # a schedule the torch class refuses is refused here in the same words
        with pytest.raises(ConfigError) as refused:
            scheduler.set_timesteps(scheduler.create_state(), case.steps, SHAPE)
        assert str(refused.value) == str(err)
        return
    state = scheduler.set_timesteps(scheduler.create_state(), case.steps, SHAPE)
    assert np.array_equal(np.asarray(state.timesteps), reference.timesteps.numpy())
    assert float(state.init_noise_sigma) == pytest.approx(float(reference.init_noise_sigma), rel=1e-6)
    sample = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * reference.init_noise_sigma
    options = dict(case.step_kwargs)
    stochastic = (reference.config.get("algorithm_type") in SDE or options.get("eta", 0) > 0
                  or isinstance(reference, ANCESTRAL))
    for k, timestep in enumerate(reference.timesteps):
        scaled = scheduler.scale_model_input(state, jnp.asarray(sample.numpy()), timestep)
        assert_close(scaled, reference.scale_model_input(sample, timestep), f"input {k}")
        output = model_output(sample, k)
        if learned:  # a learned-variance model's second half of channels: a variance, or v in [-1, 1]
            output = torch.cat([output, 0.05 * (1 + torch.tanh(sample))], dim=1)
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(100 + k)) if stochastic else None
        expected = _torch_step(reference, output, timestep, sample, options, noise, 100 + k)
        step = scheduler.step(state, jnp.asarray(output.numpy()), timestep, jnp.asarray(sample.numpy()), **options,
                              **({"noise": jnp.asarray(noise.numpy())} if stochastic else {}))
        assert_close(step.prev_sample, expected, f"step {k}")
        sample, state = expected, step.state  # step by step: both go on from the torch sample


def _torch_step(reference, output, timestep, sample, options, noise, seed):
    """The torch class's step with the given noise: as variance_noise, or (Euler a and DDPM, which have no such
    argument) from a generator seeded as the noise's was (``seed``), which yields exactly it."""
    if noise is None:
        return reference.step(output, timestep, sample, **options).prev_sample
    if isinstance(reference, ANCESTRAL):
        generator = torch.Generator().manual_seed(seed)
        return reference.step(output, timestep, sample, generator=generator).prev_sample
    return reference.step(output, timestep, sample, **options, variance_noise=noise).prev_sample


def _sampler(scheduler, key=None):
    """A whole loop as one function of the state: lax.fori_loop over the state's own step count."""
    def sample(state, x):
        def body(k, carry):
            x, state = carry
            out = scheduler.step(state, 0.1 * x + 0.05 * jnp.sin(x * (k + 1)), state.timesteps[k], x,
                                 **({} if key is None else {"key": key}))
            return out.prev_sample, out.state
        return jax.lax.fori_loop(0, state.num_inference_steps, body, (x, state))[0]
    return sample


def _noise() -> jax.Array:
    return jnp.asarray(torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)).numpy())


def _sd15(**options) -> FlaxDPMSolverMultistepScheduler:
    return FlaxDPMSolverMultistepScheduler.from_config(BASE_CONFIGS["sd15"], **options)


@pytest.mark.parametrize(("flax_class", "options"), [
    (FlaxDPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    (FlaxDDIMScheduler, {"timestep_spacing": "trailing"}),
    (FlaxEulerDiscreteScheduler, {"prediction_type": "v_prediction"}),
    (FlaxLMSDiscreteScheduler, {"use_karras_sigmas": True}),
    (FlaxDDPMScheduler, {"variance_type": "fixed_large"}),
    (FlaxPNDMScheduler, {"skip_prk_steps": False}),
], ids=lambda value: getattr(value, "__name__", str(value)))
def test_one_compile_serves_every_step_count(flax_class, options) -> None:
    scheduler = flax_class.from_config(BASE_CONFIGS["sd15"], **options)
    key = jax.random.key(0) if flax_class is FlaxDDPMScheduler else None  # the one that draws noise
    compiled = jax.jit(_sampler(scheduler, key))
    for steps in (10, 20, 30):
        state = scheduler.set_timesteps(scheduler.create_state(), steps, SHAPE, pad_to=50)
        eager = _sampler(scheduler, key)(scheduler.set_timesteps(scheduler.create_state(), steps, SHAPE), _noise())
        assert np.abs(np.asarray(compiled(state, _noise())) - np.asarray(eager)).max() <= 1e-5
    assert compiled._cache_size() == 1


def test_scan_gives_the_eager_loop() -> None:
    scheduler = _sd15(solver_order=3)
    state = scheduler.set_timesteps(scheduler.create_state(), 12, SHAPE)

    def body(carry, k):
        x, state = carry
        out = scheduler.step(state, 0.1 * x + 0.05 * jnp.sin(x * (k + 1)), state.timesteps[k], x)
        return (out.prev_sample, out.state), None

    scanned = jax.jit(lambda s, x: jax.lax.scan(body, (x, s), jnp.arange(12))[0][0])(state, _noise())
    assert np.abs(np.asarray(scanned) - np.asarray(_sampler(scheduler)(state, _noise()))).max() <= 1e-5


def test_a_state_is_immutable_so_a_step_replays_bit_for_bit() -> None:
    scheduler = _sd15()
    state = scheduler.set_timesteps(scheduler.create_state(), 8, SHAPE)
    x = _noise()
    for k in range(3):
        state = scheduler.step(state, 0.1 * x, state.timesteps[k], x).state
    saved = state
    first = scheduler.step(saved, 0.2 * x, saved.timesteps[3], x)
    again = scheduler.step(saved, 0.2 * x, saved.timesteps[3], x)
    assert int(saved.step_index) == 3 and int(first.state.step_index) == 4
    assert np.array_equal(np.asarray(first.prev_sample), np.asarray(again.prev_sample))


def test_sde_noise_comes_from_the_key_folded_with_the_step() -> None:
    scheduler = _sd15(algorithm_type="sde-dpmsolver++")
    state = scheduler.set_timesteps(scheduler.create_state(), 10, SHAPE)
    run = jax.jit(lambda s, x, key: _sampler(scheduler, key)(s, x))
    same = [np.asarray(run(state, _noise(), jax.random.key(seed))) for seed in (0, 0, 1)]
    assert np.array_equal(same[0], same[1]) and not np.allclose(same[0], same[2])
    keys = jax.random.split(jax.random.key(7), 4)  # a key per run: a run alone equals it in a vmapped batch
    batched = jax.vmap(lambda key: run(state, _noise(), key))(keys)
    assert np.abs(np.asarray(batched[2]) - np.asarray(run(state, _noise(), keys[2]))).max() <= 1e-6
    with pytest.raises(ValueError, match="draws noise at every step; pass key="):
        scheduler.step(state, _noise(), state.timesteps[0], _noise())


def test_from_pretrained_gives_the_scheduler_and_its_state(tmp_path: Path) -> None:
    folder = tmp_path / "model" / "scheduler"
    folder.mkdir(parents=True)
    (folder / "scheduler_config.json").write_text(json.dumps({**BASE_CONFIGS["sd15"],
                                                              "_class_name": "PNDMScheduler"}))
    scheduler, state = FlaxDPMSolverMultistepScheduler.from_pretrained(tmp_path / "model", subfolder="scheduler")
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.has_state
    assert state.alphas_cumprod.shape == (1000,) and state.timesteps.shape == (0,)
    state = scheduler.set_timesteps(state, 25, shape=SHAPE)
    out = scheduler.step(state, _noise(), state.timesteps[0], _noise(), return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == SHAPE and int(out[1].step_index) == 1


def test_a_traced_step_count_is_refused_with_the_way_out() -> None:
    scheduler = _sd15()
    with pytest.raises(ConfigError, match=r"num_inference_steps must be a Python int .* pad_to= lets one compiled"):
        jax.jit(lambda n: scheduler.set_timesteps(scheduler.create_state(), n, SHAPE).timesteps)(10)


def test_without_jax_the_backend_says_how_to_get_it() -> None:
    code = ("import sys; sys.modules['jax'] = None\n"
            "try:\n    import schedcmp.core.flax\nexcept ImportError as err:\n    print(type(err).__name__, err)")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert shown == ("MissingExtraError schedcmp.core.flax needs jax: pip install 'schedcmp[jax]' (jax needs "
                     "Python >= 3.11)\n")
