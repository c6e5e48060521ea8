"""DEIS and UniPC behaviour the parity table does not reach: errors, add_noise, dtypes, img2img starts, corrector
switches, diffusers' quirks and a sync-free loop on meta tensors."""

from __future__ import annotations

import diffusers
import pytest
import torch
from scheduler_testing import (
    SD15,
    SHAPE,
    assert_position_add_noise_matches,
    assert_prev_sample_only,
    assert_samples_close,
    assert_step_count_errors,
    pair,
    run_on_meta,
    seeded_normal,
)
from scheduler_testing import sample_loop as seeded_loop

from schedcmp.core import ConfigError, DEISMultistepScheduler, UniPCMultistepScheduler

DEIS, UNIPC = "DEISMultistepScheduler", "UniPCMultistepScheduler"
OURS = {DEIS: DEISMultistepScheduler, UNIPC: UniPCMultistepScheduler}
BOTH = pytest.mark.parametrize("name", [DEIS, UNIPC])


def sample_loop(
    scheduler, steps: int, *, begin: int = 0, dtype: torch.dtype = torch.float32, out_dtype: torch.dtype | None = None
) -> list[torch.Tensor]:
    """A short loop whose model outputs (in ``out_dtype``) follow the sample; returns every prev_sample."""

    def model(sample: torch.Tensor, i: int) -> torch.Tensor:
        return (0.3 * sample.float() + seeded_normal(SHAPE, 100 + i)).to(out_dtype or dtype)

    return seeded_loop(scheduler, steps, model=model, begin=begin, dtype=dtype)


@BOTH
def test_step_count_errors(name: str) -> None:
    scheduler = OURS[name]()
    assert_step_count_errors(scheduler)
    with pytest.raises(ConfigError, match="flow-matching"):
        scheduler.set_timesteps(10, mu=0.5)
    with pytest.raises(ConfigError, match="call set_timesteps before step"):
        OURS[name]().step(torch.zeros(1, 4, 8, 8), 999, torch.zeros(1, 4, 8, 8))


def test_unipc_custom_sigmas_are_refused_like_diffusers() -> None:
    # diffusers only takes sigmas= with use_flow_sigmas=True, which needs a flow-matching model.
    with pytest.raises(ValueError, match="use_flow_sigmas"):
        diffusers.UniPCMultistepScheduler().set_timesteps(sigmas=[14.0, 5.0, 1.0, 0.1])
    with pytest.raises(ConfigError, match="custom sigmas"):
        UniPCMultistepScheduler().set_timesteps(sigmas=[14.0, 5.0, 1.0, 0.1])


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        (DEIS, {"use_karras_sigmas": True, "use_beta_sigmas": True}, "use_karras_sigmas=True and use_beta_sigmas=True"),
        (UNIPC, {"use_exponential_sigmas": True, "use_beta_sigmas": True}, "only one of"),
        (DEIS, {"solver_order": 0}, "solver_order must be a whole number >= 1"),
        (UNIPC, {"solver_type": "rk4"}, "solver_type must be one of 'bh1', 'bh2'"),
        (DEIS, {"algorithm_type": "sde-dpmsolver++"}, "algorithm_type must be one of 'deis'"),
        (UNIPC, {"final_sigmas_type": "one"}, "final_sigmas_type must be one of 'zero', 'sigma_min'"),
        (UNIPC, {"predict_x0": False, "prediction_type": "flow_prediction"}, "needs predict_x0=True"),
        (DEIS, {"use_flow_sigmas": True}, "use_flow_sigmas=True is only used by flow-matching models"),
        (UNIPC, {"flow_shift": 3.0}, "flow-matching"),
        (UNIPC, {"use_dynamic_shifting": True}, "flow-matching"),
        (UNIPC, {"shift_terminal": 0.1}, "flow-matching"),
    ],
)
def test_bad_options_raise_config_error_at_init(name: str, options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        OURS[name](**options)


@pytest.mark.parametrize(
    ("name", "options", "key", "stored"),
    [
        (DEIS, {"algorithm_type": "dpmsolver++"}, "algorithm_type", "deis"),
        (DEIS, {"solver_type": "midpoint"}, "solver_type", "logrho"),
        (UNIPC, {"solver_type": "logrho"}, "solver_type", "bh2"),
    ],
)
def test_other_solvers_names_are_replaced_like_diffusers(name: str, options: dict, key: str, stored: str) -> None:
    ours, theirs = pair(name, **options)
    assert ours.config[key] == theirs.config[key] == stored
    assert_samples_close(sample_loop(ours, 6), sample_loop(theirs, 6))


@BOTH
def test_add_noise_matches_diffusers(name: str) -> None:
    assert_position_add_noise_matches(*pair(name, use_karras_sigmas=True))


@pytest.mark.parametrize(("name", "options"), [(DEIS, {"solver_order": 3}), (UNIPC, {"solver_order": 3})])
def test_img2img_start_matches_diffusers(name: str, options: dict) -> None:
    ours, theirs = pair(name, **options)
    assert_samples_close(sample_loop(ours, 12, begin=5), sample_loop(theirs, 12, begin=5))


@BOTH
def test_return_dict_false_and_no_x0(name: str) -> None:
    assert_prev_sample_only(OURS[name]())


@BOTH
@pytest.mark.parametrize(
    ("dtype", "out_dtype"), [(torch.float16, torch.float16), (torch.float32, torch.float16), (torch.float16, None)]
)
def test_half_precision_dtype_matches_diffusers(name: str, dtype: torch.dtype, out_dtype: torch.dtype | None) -> None:
    # we compute in float32 where diffusers computes in float16, so values agree to float16 precision only
    ours, theirs = pair(name)
    out_dtype = out_dtype or torch.float32
    got = sample_loop(ours, 6, dtype=dtype, out_dtype=out_dtype)
    want = sample_loop(theirs, 6, dtype=dtype, out_dtype=out_dtype)
    assert_samples_close(got, want, rtol=1e-2)


@pytest.mark.parametrize("disabled", [[1, 2], [0, 1, 2, 3, 4, 5, 6, 7]])
def test_unipc_disable_corrector_matches_diffusers(disabled: list[int]) -> None:
    ours, theirs = pair(UNIPC, disable_corrector=disabled, solver_order=3)
    assert_samples_close(sample_loop(ours, 8), sample_loop(theirs, 8))


@pytest.mark.parametrize(
    "options",
    [
        {"solver_order": 3, "predict_x0": False, "final_sigmas_type": "sigma_min"},
        {"solver_order": 3, "prediction_type": "sample", "thresholding": True},
        {"solver_order": 4, "lower_order_final": False, "final_sigmas_type": "sigma_min"},
        {"use_exponential_sigmas": True, "solver_order": 3},
        {"use_beta_sigmas": True, "solver_type": "bh1", "final_sigmas_type": "sigma_min"},
        {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "use_karras_sigmas": True},
    ],
)
def test_unipc_option_mixes_match_diffusers(options: dict) -> None:
    ours, theirs = pair(UNIPC, **options)
    assert_samples_close(sample_loop(ours, 9), sample_loop(theirs, 9))


@pytest.mark.parametrize(
    "options",
    [
        {"solver_order": 3, "prediction_type": "v_prediction", "thresholding": True},
        {"solver_order": 3, "use_exponential_sigmas": True},
        {"solver_order": 4, "use_beta_sigmas": True},
        {"prediction_type": "flow_prediction"},
    ],
)
def test_deis_option_mixes_match_diffusers(options: dict) -> None:
    ours, theirs = pair(DEIS, **options)
    assert_samples_close(sample_loop(ours, 9), sample_loop(theirs, 9))


def test_deis_reads_sigma_bounds_left_in_a_swapped_config_like_diffusers() -> None:
    # diffusers' DEIS reads config.sigma_min / sigma_max if present, e.g. kept from a UniPC config.
    source = UniPCMultistepScheduler.from_config(SD15, sigma_min=0.1, sigma_max=10.0, use_karras_sigmas=True).config
    ours = DEISMultistepScheduler.from_config(source)
    theirs = diffusers.DEISMultistepScheduler.from_config(
        diffusers.UniPCMultistepScheduler.from_config(dict(source)).config
    )
    assert_samples_close(sample_loop(ours, 7), sample_loop(theirs, 7))
    assert torch.equal(ours.timesteps, theirs.timesteps) and float(ours.sigmas[0]) == pytest.approx(10.0)


def _run_until_error(scheduler) -> tuple[list[torch.Tensor], Exception | None]:
    """Every prev_sample of a 1000-step loop with outputs 0.01 * i, and the error that stopped it, if any."""
    scheduler.set_timesteps(1000)
    sample, samples = torch.zeros(1, 1, 2, 2), []
    try:
        for i, t in enumerate(scheduler.timesteps):
            sample = scheduler.step(torch.full_like(sample, 0.01 * i), t, sample).prev_sample
            samples.append(sample)
    except (ConfigError, RuntimeError) as error:  # torch's LinAlgError is a RuntimeError
        return samples, error
    return samples, None


def test_unipc_singular_order3_system_is_refused_on_every_cpu() -> None:
    # 1000 linspace steps repeat a timestep (t_k == t_k+1): at step k, h = 0 and both libraries compute 0/0 = NaN;
    # at step k + 2 the order-3 nodes r_1 == r_2 make the Vandermonde system exactly singular. We detect that from
    # the nodes and refuse the step. diffusers leaves it to LAPACK, which raises on some CPUs and returns a tiny
    # pivot on others, so of diffusers we only ask that it got as far and agrees with us on the way.
    ours, theirs = pair(UNIPC, solver_order=3)
    ours_samples, ours_error = _run_until_error(ours)
    theirs_samples, _ = _run_until_error(theirs)
    timesteps = ours.timesteps.tolist()
    repeated = next(k for k in range(len(timesteps) - 1) if timesteps[k] == timesteps[k + 1])

    assert isinstance(ours_error, ConfigError)
    assert f"order-3 predictor system at step {repeated + 2} is singular" in str(ours_error)
    assert len(ours_samples) == repeated + 2
    assert len(theirs_samples) >= repeated  # all systems before the repeated timestep are regular in both

    shared = min(len(ours_samples), len(theirs_samples))
    for step, (a, b) in enumerate(zip(ours_samples[:shared], theirs_samples[:shared], strict=True)):
        assert torch.equal(a.isnan(), b.isnan()), f"step {step}: NaN in one library only"
    assert_samples_close([a.nan_to_num() for a in ours_samples[:shared]],
                         [b.nan_to_num() for b in theirs_samples[:shared]])


def test_unipc_nan_final_sample_with_bh1_is_diffusers_behaviour() -> None:
    # diffusers quirk we match: bh1 with a zero final sigma multiplies -inf by 0 in the last step.
    ours, theirs = pair(UNIPC, solver_type="bh1")
    got, want = sample_loop(ours, 5), sample_loop(theirs, 5)
    assert torch.isnan(got[-1]).all() and torch.isnan(want[-1]).all()
    assert_samples_close(got[:-1], want[:-1])


@pytest.mark.parametrize(
    ("name", "options"),
    [
        (DEIS, {"solver_order": 3, "thresholding": True, "prediction_type": "v_prediction"}),
        (DEIS, {"use_karras_sigmas": True}),
        (UNIPC, {"solver_order": 3, "thresholding": True, "disable_corrector": [2]}),
        (UNIPC, {"predict_x0": False, "prediction_type": "sample", "use_beta_sigmas": True}),
    ],
)
@pytest.mark.parametrize("steps", [1, 5, 16])
def test_loop_runs_on_meta_tensors(name: str, options: dict, steps: int) -> None:
    scheduler = OURS[name].from_config({**SD15, **options})
    run_on_meta(scheduler, steps, shape=(1, 4, 8, 8))
    assert scheduler.timesteps.dtype == torch.int64
