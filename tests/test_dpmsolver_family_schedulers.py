"""DPM-Solver family behaviour the parity table does not reach: errors, custom timesteps, add_noise, dtypes,
img2img starts, the noise-prediction variants and a sync-free loop on meta tensors."""

from __future__ import annotations

import itertools

import pytest
import test_scheduler_parity as parity
import torch
from scheduler_cases import Case
from scheduler_testing import (
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

from schedcmp.core import ConfigError, DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler

MULTI, SINGLE = "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"
RULES = ("midpoint", "heun")
OURS = {MULTI: DPMSolverMultistepScheduler, SINGLE: DPMSolverSinglestepScheduler}


def sample_loop(scheduler, steps=None, *, shape=SHAPE, out_channels=None, dtype=torch.float32, **kwargs):
    """A short loop whose model outputs are seeded normal draws (``out_channels`` of them); every prev_sample."""

    def model(sample: torch.Tensor, i: int) -> torch.Tensor:
        return seeded_normal((shape[0], out_channels or shape[1], *shape[2:]), 100 + i).to(dtype)

    return seeded_loop(scheduler, steps, model=model, shape=shape, dtype=dtype, **kwargs)


@pytest.mark.parametrize("name", [MULTI, SINGLE])
def test_step_count_errors(name: str) -> None:
    scheduler = OURS[name]()
    assert_step_count_errors(scheduler)
    with pytest.raises(ConfigError, match="exactly one of num_inference_steps or timesteps"):
        scheduler.set_timesteps()
    with pytest.raises(ConfigError, match="flow-matching"):
        scheduler.set_timesteps(10, mu=0.5)


@pytest.mark.parametrize("name", [MULTI, SINGLE])
@pytest.mark.parametrize("options", [{}, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}])
def test_custom_timesteps_match_diffusers(name: str, options: dict) -> None:
    ours, theirs = pair(name, **options)
    custom = [999, 850, 700, 500, 300, 120, 40, 5]
    assert_samples_close(sample_loop(ours, timesteps=custom), sample_loop(theirs, timesteps=custom))
    assert torch.equal(ours.timesteps, theirs.timesteps) and ours.timesteps.dtype == torch.int64
    with pytest.raises(ConfigError, match="use_karras_sigmas"):
        OURS[name](use_karras_sigmas=True).set_timesteps(timesteps=custom)
    with pytest.raises(ConfigError, match=r"\[0, 999\]"):
        OURS[name]().set_timesteps(timesteps=[1000, 10])


@pytest.mark.parametrize("name", [MULTI, SINGLE])
def test_add_noise_matches_diffusers(name: str) -> None:
    assert_position_add_noise_matches(*pair(name, use_karras_sigmas=True))


@pytest.mark.parametrize("name", [MULTI, SINGLE])
def test_img2img_start_matches_diffusers(name: str) -> None:
    ours, theirs = pair(name, solver_order=3, final_sigmas_type="sigma_min")
    assert_samples_close(sample_loop(ours, 12, begin=5), sample_loop(theirs, 12, begin=5))


@pytest.mark.parametrize("name", [MULTI, SINGLE])
def test_return_dict_false_and_output(name: str) -> None:
    assert_prev_sample_only(OURS[name]())


@pytest.mark.parametrize(("name", "options"), [(MULTI, {}), (MULTI, {"algorithm_type": "sde-dpmsolver++"}),
                                               (SINGLE, {}), (SINGLE, {"algorithm_type": "sde-dpmsolver++"})])
def test_half_precision_dtype_matches_diffusers(name: str, options: dict) -> None:
    ours, theirs = pair(name, **options)
    got, want = sample_loop(ours, 6, dtype=torch.float16), sample_loop(theirs, 6, dtype=torch.float16)
    assert [x.dtype for x in got] == [x.dtype for x in want] == [torch.float16] * 6
    assert_samples_close(got, want, rtol=1e-2)


def test_variance_noise_matches_diffusers() -> None:
    ours, theirs = pair(MULTI, algorithm_type="sde-dpmsolver++")
    noises = [seeded_normal(SHAPE, 50 + i) for i in range(8)]
    assert_samples_close(sample_loop(ours, 8, noises=noises), sample_loop(theirs, 8, noises=noises))


@pytest.mark.parametrize("name", [MULTI, SINGLE])
def test_learned_variance_keeps_three_channels_like_diffusers(name: str) -> None:
    ours, theirs = pair(name, variance_type="learned_range")
    shape = (2, 3, 8, 8)  # an RGB pixel-space model predicting mean and variance: 6 output channels
    assert_samples_close(sample_loop(ours, 5, shape=shape, out_channels=6), sample_loop(theirs, 5, shape=shape, out_channels=6))
    with pytest.raises(ConfigError, match="first 3 channels"):
        sample_loop(OURS[name](variance_type="learned"), 5, out_channels=8)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, "only one of use_karras_sigmas"),
        ({"use_flow_sigmas": True}, "flow-matching"),
        ({"flow_shift": 3.0}, "flow-matching"),
        ({"use_dynamic_shifting": True}, "flow-matching"),
        ({"prediction_type": "flow_prediction"}, "flow-matching"),
        ({"algorithm_type": "dpmsolver"}, "final_sigmas_type='zero'"),
        ({"algorithm_type": "deis"}, "final_sigmas_type='zero'"),
        ({"solver_order": 4}, "solver_order must be one of 1, 2, 3; got 4"),
        ({"solver_type": "euler"}, "solver_type must be one of"),
    ],
)
@pytest.mark.parametrize("name", [MULTI, SINGLE])
def test_bad_options_raise_config_error(name: str, options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        OURS[name](**options)


def test_sde_dpmsolver_third_order_is_refused() -> None:
    # diffusers accepts it and fails with UnboundLocalError at the first third-order step
    with pytest.raises(ConfigError, match="solver_order=3 is not available"):
        DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver", solver_order=3, final_sigmas_type="sigma_min")


@pytest.mark.parametrize("name", [MULTI, SINGLE])
def test_sibling_names_are_mapped_like_diffusers(name: str) -> None:
    scheduler = OURS[name](algorithm_type="deis", solver_type="bh2", final_sigmas_type="sigma_min")
    assert (scheduler.config.algorithm_type, scheduler.config.solver_type) == ("dpmsolver++", "midpoint")


def test_singlestep_switches_lower_order_final_like_diffusers() -> None:
    ours, theirs = pair(SINGLE, solver_order=3, final_sigmas_type="sigma_min")
    for s in (ours, theirs):
        s.set_timesteps(9)
    assert ours.config.lower_order_final is False and ours.order_list == theirs.order_list == [1, 2, 3] * 3
    for s in (ours, theirs):
        s.set_timesteps(7)  # not a multiple of the order: both switch the option on, for good
    assert ours.config.lower_order_final is True and ours.order_list == theirs.order_list


# Variants the table cannot reach: its noise-prediction cases stop at the zero final sigma diffusers refuses.
EXTRA_GROUPS = [
    (MULTI, {"algorithm_type": alg, "solver_order": order, "solver_type": st, "final_sigmas_type": "sigma_min"})
    for alg, order, st in itertools.product(("dpmsolver", "sde-dpmsolver"), (1, 2, 3), RULES)
    if not (alg == "sde-dpmsolver" and order == 3)
] + [
    (SINGLE, {"algorithm_type": alg, "solver_order": order, "solver_type": st, "final_sigmas_type": "sigma_min"})
    for alg, order, st in itertools.product(("dpmsolver", "dpmsolver++", "sde-dpmsolver++"), (2, 3), RULES)
] + [
    (MULTI, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "lower_order_final": False,
             "final_sigmas_type": "sigma_min"}),
    (MULTI, {"algorithm_type": "dpmsolver", "thresholding": True, "final_sigmas_type": "sigma_min"}),
    (MULTI, {"algorithm_type": "dpmsolver", "prediction_type": "v_prediction", "final_sigmas_type": "sigma_min"}),
    (MULTI, {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1, "timestep_spacing": "trailing"}),
    (MULTI, {"beta_schedule": "squaredcos_cap_v2", "use_lu_lambdas": True}),
    (SINGLE, {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1}),
    (SINGLE, {"thresholding": True, "prediction_type": "v_prediction"}),
]


@pytest.mark.parametrize(
    "case",
    [Case(name, "sd15", tuple(opts.items()), n, "closed_form" if n % 2 else "random")
     for name, opts in EXTRA_GROUPS for n in (3, 6, 14)],
    ids=lambda c: c.id,
)
def test_extra_variants_match_diffusers(case: Case) -> None:
    parity.test_loop_matches_diffusers(case)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        (MULTI, {}),
        (MULTI, {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
        (MULTI, {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "thresholding": True}),
        (SINGLE, {"solver_order": 3}),
        (SINGLE, {"algorithm_type": "sde-dpmsolver++", "prediction_type": "v_prediction"}),
    ],
)
def test_loop_on_meta_tensors_needs_no_data(name: str, options: dict) -> None:
    run_on_meta(OURS[name](**options), 10)
