"""Config values are checked where they enter, against the signature that declares them (the signature is the schema).

A scheduler ``__init__`` or a model config dataclass annotates each key (``PositiveInt``, ``Beta``, ``bool`` ...);
a value it does not allow is one ConfigError line: ``{class}: {key} must be {what is allowed}; got {value}``,
prefixed with the file when the value was read from one.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from schedcmp.core.configuration import check_values, init_keys
from schedcmp.core.errors import ConfigError, ConfigWarning
from schedcmp.core.models.clip import CLIPTextConfig
from schedcmp.core.models.unet import UNet2DConditionConfig
from schedcmp.core.models.vae import AutoencoderKLConfig
from schedcmp.core.schedulers import ALIASES, DDIMScheduler, SchedulerMixin
from schedcmp.core.single_file.architecture import CONFIGS as SINGLE_FILE_CONFIGS

FIXTURES = Path(__file__).parent / "fixtures"
# the real SD 1.5 / 2.1 / SDXL configs: the test fixtures and those shipped for single-file checkpoints
REAL_ROOTS = [FIXTURES, SINGLE_FILE_CONFIGS]

COUNT = "a whole number >= 1"
BETA = "a number between 0 and 1 (exclusive)"
BETAS = "a list or array of numbers between 0 and 1 (exclusive) or None"
BOOL = "True or False"
DPM_SOLVERS = {"DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"}
ANY_ORDER_SOLVERS = {"DEISMultistepScheduler", "UniPCMultistepScheduler"}
OPTIONAL_SIGMA_BOUNDS = {"EulerDiscreteScheduler", "UniPCMultistepScheduler"}


@dataclass(frozen=True)
class Bad:
    """A value a key must refuse, what the message says is allowed, and how it shows the value."""

    key: str
    value: Any
    allowed: str
    shown: str
    only: frozenset[str] | None = None  # the classes whose annotation gives ``allowed``; None: every class


BAD_SCHEDULER_VALUES = (
    Bad("num_train_timesteps", "a lot", COUNT, "'a lot'"),
    Bad("num_train_timesteps", -5, COUNT, "-5"),
    Bad("num_train_timesteps", 0, COUNT, "0"),
    Bad("num_train_timesteps", True, COUNT, "True"),  # bool is an int in Python, not a count
    Bad("num_train_timesteps", 1000.5, COUNT, "1000.5"),
    Bad("beta_start", 2, BETA, "2"),
    Bad("beta_start", 0, BETA, "0"),
    Bad("beta_end", 1.0, BETA, "1.0"),
    Bad("beta_end", "0.012", BETA, "'0.012'"),
    Bad("beta_end", math.nan, BETA, "nan"),
    Bad("trained_betas", 3, BETAS, "3"),
    Bad("trained_betas", "0.1, 0.2", BETAS, "'0.1, 0.2'"),
    Bad("trained_betas", [0.1, 1.5, 0.2], BETAS, "1.5 at index 1"),
    Bad("trained_betas", np.array([0.1, 0.2, -0.3]), BETAS, "-0.3 at index 2"),
    Bad("steps_offset", -1, "a whole number >= 0", "-1"),
    Bad("steps_offset", "1", "a whole number >= 0", "'1'"),
    Bad("solver_order", "two", COUNT, "'two'", frozenset(ANY_ORDER_SOLVERS)),
    Bad("solver_order", 0, COUNT, "0", frozenset(ANY_ORDER_SOLVERS)),
    Bad("solver_order", "two", "one of 1, 2, 3", "'two'", frozenset(DPM_SOLVERS)),
    Bad("use_karras_sigmas", "yes", BOOL, "'yes'"),
    Bad("use_karras_sigmas", 1, BOOL, "1"),
    Bad("clip_sample", "false", BOOL, "'false'"),
    Bad("rescale_betas_zero_snr", None, BOOL, "None"),
    Bad("sigma_min", 0, "a number > 0 or None", "0", frozenset(OPTIONAL_SIGMA_BOUNDS)),
    Bad("sigma_max", "80", "a number > 0 or None", "'80'", frozenset(OPTIONAL_SIGMA_BOUNDS)),
    Bad("sigma_min", 0.0, "a number > 0", "0.0", frozenset({"EDMEulerScheduler"})),
    Bad("sigma_data", -0.5, "a number > 0", "-0.5", frozenset({"EDMEulerScheduler"})),
    Bad("rho", None, "a number > 0", "None", frozenset({"EDMEulerScheduler"})),
    Bad("dynamic_thresholding_ratio", 1.5, "a number between 0 and 1", "1.5"),
    Bad("clip_sample_range", 0, "a number > 0", "0"),
    Bad("sample_max_value", -1, "a number > 0", "-1"),
    Bad("flow_shift", 0.0, "a number > 0", "0.0"),
    Bad("lambda_min_clipped", "-inf", "a number", "'-inf'"),
    Bad("variance_type", 3, "a string or None", "3", frozenset(DPM_SOLVERS)),
    Bad("noise_sampler_seed", "8", "a whole number or None", "'8'"),
    Bad("disable_corrector", [0, -1], "a list of whole numbers >= 0", "-1 at index 1"),
    Bad("disable_corrector", 0, "a list of whole numbers >= 0", "0"),
    Bad("solver_p", "ddim", "an instance of SchedulerMixin or None", "'ddim'"),
)


def _scheduler_cases() -> list[Any]:
    cases = []
    for preset in ALIASES:
        for bad in BAD_SCHEDULER_VALUES:
            name = preset.cls.__name__
            if bad.key in init_keys(preset.cls) and (bad.only is None or name in bad.only):
                cases.append(pytest.param(preset.cls, bad, id=f"{preset.name}-{bad.key}={bad.value!r}"))
    return cases


@pytest.mark.parametrize(("cls", "bad"), _scheduler_cases())
def test_a_bad_scheduler_value_is_one_line_naming_class_key_allowed_and_value(cls: type, bad: Bad) -> None:
    with pytest.raises(ConfigError) as error:
        cls.from_config({"_class_name": cls.__name__, bad.key: bad.value})
    assert str(error.value) == f"{cls.__name__}: {bad.key} must be {bad.allowed}; got {bad.shown}"


def test_every_key_of_the_table_is_checked_by_some_scheduler() -> None:
    keys = {case.values[1].key for case in _scheduler_cases()}
    assert keys == {bad.key for bad in BAD_SCHEDULER_VALUES}


def test_literal_choices_keep_their_message() -> None:
    with pytest.raises(ConfigError) as error:
        DDIMScheduler.from_config({}, timestep_spacing="middle")
    assert str(error.value) == "DDIMScheduler: timestep_spacing must be one of 'leading', 'trailing', 'linspace'; got 'middle'"


# ---------------------------------------------------------------------------------------------- values from files


def _write(folder: Path, name: str, data: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / name
    file.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    return file


def test_a_bad_value_in_scheduler_config_json_starts_with_the_file(tmp_path: Path) -> None:
    file = _write(tmp_path, "scheduler_config.json", {"_class_name": "DDIMScheduler", "num_train_timesteps": "a lot"})
    expected = f"{file}: DDIMScheduler: num_train_timesteps must be a whole number >= 1; got 'a lot'"
    for load in (DDIMScheduler.from_pretrained, SchedulerMixin.load_config):  # the class's and the pipeline's way
        with pytest.raises(ConfigError) as error:
            load(tmp_path)
        assert str(error.value) == expected


def test_a_config_file_is_checked_against_the_class_it_names(tmp_path: Path) -> None:
    _write(tmp_path / "scheduler", "scheduler_config.json", {"_class_name": "PNDMScheduler", "skip_prk_steps": "yes"})
    with pytest.raises(ConfigError) as error:
        DDIMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    file = tmp_path / "scheduler" / "scheduler_config.json"
    assert str(error.value) == f"{file}: PNDMScheduler: skip_prk_steps must be True or False; got 'yes'"


def test_a_bad_override_is_not_blamed_on_the_file(tmp_path: Path) -> None:
    _write(tmp_path, "scheduler_config.json", json.loads((FIXTURES / "sd15" / "scheduler" / "scheduler_config.json").read_text()))
    with pytest.raises(ConfigError) as error:
        DDIMScheduler.from_pretrained(tmp_path, beta_start=2)
    assert str(error.value) == f"DDIMScheduler: beta_start must be {BETA}; got 2"


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"\xff\xfe{}", "not a UTF-8 text file; expected a JSON config"), (b"[1, 2]", "expected a JSON object, found list")],
    ids=["not-utf8", "not-an-object"],
)
def test_an_unreadable_scheduler_config_file_is_one_line(tmp_path: Path, content: bytes, problem: str) -> None:
    file = _write(tmp_path, "scheduler_config.json", content)
    with pytest.raises(ConfigError) as error:
        DDIMScheduler.from_pretrained(tmp_path)
    assert str(error.value) == f"{file}: {problem}"


SD15 = FIXTURES / "sd15"
COMPONENTS = {UNet2DConditionConfig: SD15 / "unet", AutoencoderKLConfig: SD15 / "vae", CLIPTextConfig: SD15 / "text_encoder"}
BAD_COMPONENT_VALUES = (
    (UNet2DConditionConfig, Bad("block_out_channels", "x", "a list of whole numbers >= 1", "'x'")),
    (UNet2DConditionConfig, Bad("block_out_channels", [320, 0, 1280, 1280], "a list of whole numbers >= 1", "0 at index 1")),
    (UNet2DConditionConfig, Bad("in_channels", -1, COUNT, "-1")),
    (UNet2DConditionConfig, Bad("layers_per_block", 2.5, f"{COUNT} or a list of whole numbers >= 1", "2.5")),
    (UNet2DConditionConfig, Bad("sample_size", "64", f"{COUNT} or None", "'64'")),
    (UNet2DConditionConfig, Bad("norm_eps", 0, "a number > 0", "0")),
    (UNet2DConditionConfig, Bad("down_block_types", "DownBlock2D", "a list of strings", "'DownBlock2D'")),
    (UNet2DConditionConfig, Bad("use_linear_projection", "true", BOOL, "'true'")),
    (UNet2DConditionConfig, Bad("freq_shift", -1, "a whole number >= 0", "-1")),
    (AutoencoderKLConfig, Bad("latent_channels", 0, COUNT, "0")),
    (AutoencoderKLConfig, Bad("layers_per_block", [2, 2], COUNT, "(2, 2)")),  # lists are read as tuples
    (AutoencoderKLConfig, Bad("scaling_factor", -0.18215, "a number > 0", "-0.18215")),
    (AutoencoderKLConfig, Bad("force_upcast", 1, BOOL, "1")),
    (CLIPTextConfig, Bad("hidden_size", "768", COUNT, "'768'")),
    (CLIPTextConfig, Bad("num_hidden_layers", 0, COUNT, "0")),
    (CLIPTextConfig, Bad("max_position_embeddings", True, COUNT, "True")),
    (CLIPTextConfig, Bad("layer_norm_eps", 0.0, "a number > 0", "0.0")),
)


@pytest.mark.parametrize(
    ("cls", "bad"),
    [pytest.param(cls, bad, id=f"{cls.__name__}-{bad.key}={bad.value!r}") for cls, bad in BAD_COMPONENT_VALUES],
)
def test_a_bad_model_config_value_starts_with_the_file(tmp_path: Path, cls: type, bad: Bad) -> None:
    raw = {**json.loads((COMPONENTS[cls] / "config.json").read_text()), bad.key: bad.value}
    file = _write(tmp_path, "config.json", raw)
    with pytest.raises(ConfigError) as error:
        cls.from_file(file)
    assert str(error.value) == f"{file}: {cls.__name__}: {bad.key} must be {bad.allowed}; got {bad.shown}"


def test_a_bad_model_config_value_built_in_code_names_the_class() -> None:
    with pytest.raises(ConfigError) as error:
        UNet2DConditionConfig(in_channels=-1)
    assert str(error.value) == "UNet2DConditionConfig: in_channels must be a whole number >= 1; got -1"


@pytest.mark.parametrize("cls", list(COMPONENTS), ids=lambda cls: cls.__name__)
@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"\xff\xfe{}", "is not UTF-8 text; expected a JSON config"), (b"[1, 2]", "must hold a JSON object, not list")],
    ids=["not-utf8", "not-an-object"],
)
def test_an_unreadable_model_config_file_is_one_line(tmp_path: Path, cls: type, content: bytes, problem: str) -> None:
    file = _write(tmp_path, "config.json", content)
    with pytest.raises(ConfigError) as error:
        cls.from_file(file)
    assert str(error.value) == f"{file} {problem}"


# ---------------------------------------------------------------------------------------------- what stays valid


def _real_files(name: str) -> list[Path]:
    return sorted(file for root in REAL_ROOTS for file in root.rglob(name))


@pytest.mark.parametrize("file", _real_files("scheduler_config.json"), ids=str)
def test_every_real_scheduler_config_builds_every_scheduler(file: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)  # keys of other scheduler families are expected
        for preset in ALIASES:
            preset.cls.from_pretrained(file.parent)
            preset.build(SchedulerMixin.load_config(file.parent))


def test_the_parity_fixture_configs_build_every_scheduler() -> None:
    configs = {k: v for k, v in json.loads((FIXTURES / "scheduler_configs.json").read_text()).items() if k[0] != "_"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        for config in configs.values():
            for preset in ALIASES:
                preset.cls.from_config(config)


def _component_class(file: Path) -> type | None:
    folder = file.parent.name
    if folder == "unet":
        return UNet2DConditionConfig
    if folder == "vae":
        return AutoencoderKLConfig
    return CLIPTextConfig if folder.startswith("text_encoder") else None


@pytest.mark.parametrize("file", [f for f in _real_files("config.json") if _component_class(f)], ids=str)
def test_every_real_model_config_passes_the_value_checks(file: Path) -> None:
    cls = _component_class(file)
    raw = json.loads(file.read_text())
    check_values(cls.__name__, cls, raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cls.from_file(file)


EDGE_VALUES: tuple[tuple[str, Any] | tuple[str, Any, set[str]], ...] = (
    ("num_train_timesteps", 1),
    ("num_train_timesteps", np.int64(1000)),
    ("beta_start", 1e-6),
    ("beta_end", 0.1),
    ("beta_start", np.float32(0.00085)),
    ("trained_betas", np.linspace(0.0001, 0.02, 1000)),
    ("trained_betas", tuple(np.linspace(0.0001, 0.02, 1000).tolist())),
    ("trained_betas", torch.linspace(0.0001, 0.02, 1000)),
    ("steps_offset", 0),
    ("solver_order", 1),
    ("solver_order", 3),
    ("sample_max_value", 1),  # a YAML / JSON 1 is a valid float
    ("clip_sample_range", 2),
    ("flow_shift", 1),  # the only value schedcmp supports, as an int
    ("dynamic_thresholding_ratio", 1.0),
    ("dynamic_thresholding_ratio", 0),
    ("lambda_min_clipped", -math.inf),
    ("sigma_min", None, OPTIONAL_SIGMA_BOUNDS),
    ("sigma_max", 14.6),
    ("sigma_data", 1),
    ("noise_sampler_seed", 0),
    ("disable_corrector", (0, 1)),
    ("disable_corrector", []),
    ("variance_type", None, DPM_SOLVERS),
    ("use_karras_sigmas", np.bool_(False)),
)


@pytest.mark.parametrize("edge", EDGE_VALUES, ids=[f"{e[0]}={e[1]!r}"[:40] for e in EDGE_VALUES])
def test_diffusers_valid_edge_values_are_accepted(edge: tuple) -> None:
    key, value, *only = edge
    takers = [p.cls for p in ALIASES if key in init_keys(p.cls) and (not only or p.cls.__name__ in only[0])]
    assert takers
    for cls in takers:
        scheduler = cls.from_config({}, **{key: value})
        cls.from_config(scheduler.config)  # and the frozen config round-trips


def test_unknown_keys_are_warned_about_and_kept_unchecked() -> None:
    with pytest.warns(ConfigWarning, match=r"does not take the config keys \['not_a_key'\]"):
        scheduler = DDIMScheduler.from_config({"not_a_key": "a lot"})
    assert scheduler.config["not_a_key"] == "a lot"
