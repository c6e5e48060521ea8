"""The config system behaves like diffusers' ConfigMixin, with a config that is really read-only."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import diffusers
import pytest
from scheduler_cases import BASE_CONFIGS, CLASS_NAMES

import schedcmp.core as core
from schedcmp.core import ConfigError, ConfigWarning, FrozenConfig
from schedcmp.core.configuration import DIFFUSERS_FORMAT_VERSION

FIXTURES = Path(__file__).parent / "fixtures"


def comparable(config) -> dict:
    """A config as plain JSON data, without the fields that name the writing library's version."""
    data = json.loads(json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}))
    data.pop("_diffusers_version", None)
    if "_use_default_values" in data:
        data["_use_default_values"] = sorted(data["_use_default_values"])
    return data


@pytest.mark.parametrize("source", CLASS_NAMES)
@pytest.mark.parametrize("target", CLASS_NAMES)
def test_from_config_swap_matches_diffusers(source: str, target: str) -> None:
    """Swapping scheduler classes through from_config yields diffusers' config, hidden keys included."""
    ours = getattr(core, target).from_config(getattr(core, source).from_config(BASE_CONFIGS["sd15"]).config)
    theirs = getattr(diffusers, target).from_config(getattr(diffusers, source).from_config(BASE_CONFIGS["sd15"]).config)
    assert comparable(ours.config) == comparable(theirs.config)


@pytest.mark.parametrize("source", CLASS_NAMES)
@pytest.mark.parametrize("target", CLASS_NAMES)
def test_round_trip_through_another_class_loses_nothing(source: str, target: str) -> None:
    """A -> B -> A gives back A's config exactly."""
    start = getattr(core, source).from_config(BASE_CONFIGS["sd15"])
    back = getattr(core, source).from_config(getattr(core, target).from_config(start.config).config)
    assert comparable(back.config) == comparable(start.config)


def test_overrides_win_over_config_values() -> None:
    scheduler = core.DDIMScheduler.from_config(BASE_CONFIGS["sd15"], prediction_type="v_prediction", steps_offset=0)
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.steps_offset == 0


def test_defaults_of_the_source_fall_back_to_the_targets_defaults() -> None:
    """DDPM's default spacing is 'leading', Euler's 'linspace': a default does not travel, a set value does."""
    assert core.EulerDiscreteScheduler.from_config(core.DDPMScheduler().config).config.timestep_spacing == "linspace"
    explicit = core.DDPMScheduler(timestep_spacing="leading").config
    assert core.EulerDiscreteScheduler.from_config(explicit).config.timestep_spacing == "leading"


def test_unknown_keys_are_warned_about_and_kept_hidden() -> None:
    with pytest.warns(ConfigWarning, match=r"EulerDiscreteScheduler does not take the config keys \['not_a_key'\]"):
        scheduler = core.EulerDiscreteScheduler.from_config({"not_a_key": 3})
    assert scheduler.config["not_a_key"] == 3
    assert "not_a_key" in json.loads(scheduler.to_json_string())


def test_keys_of_compatible_classes_are_kept_without_warning(recwarn: pytest.WarningsRecorder) -> None:
    scheduler = core.EulerDiscreteScheduler.from_config(BASE_CONFIGS["sd15"])
    assert scheduler.config["skip_prk_steps"] is True
    assert not [w for w in recwarn if issubclass(w.category, ConfigWarning)]


def test_return_unused_kwargs_reports_what_init_did_not_take() -> None:
    _, unused = core.EulerDiscreteScheduler.from_config(BASE_CONFIGS["sd15"], return_unused_kwargs=True, eta=0.3)
    assert unused["eta"] == 0.3
    assert unused["skip_prk_steps"] is True


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.__setitem__("num_train_timesteps", 10),
        lambda c: c.__delitem__("num_train_timesteps"),
        lambda c: c.update(num_train_timesteps=10),
        lambda c: c.pop("num_train_timesteps"),
        lambda c: c.popitem(),
        lambda c: c.setdefault("x", 1),
        lambda c: c.clear(),
        lambda c: setattr(c, "num_train_timesteps", 10),
    ],
    ids=["setitem", "delitem", "update", "pop", "popitem", "setdefault", "clear", "setattr"],
)
def test_config_is_read_only(mutate) -> None:
    scheduler = core.DDIMScheduler()
    with pytest.raises(TypeError, match="a scheduler config is read-only"):
        mutate(scheduler.config)
    assert scheduler.config.num_train_timesteps == 1000


def test_nested_values_are_frozen_too() -> None:
    betas = [0.001] * 1000
    scheduler = core.DDIMScheduler(trained_betas=betas)
    assert isinstance(scheduler.config.trained_betas, tuple)
    betas[0] = 0.5
    assert scheduler.config.trained_betas[0] == 0.001


def test_config_survives_copy_and_pickle() -> None:
    config = core.DDIMScheduler.from_config(BASE_CONFIGS["sd15"]).config
    assert copy.deepcopy(config) == config
    restored = pickle.loads(pickle.dumps(config))
    assert isinstance(restored, FrozenConfig) and restored == config


def test_config_attribute_access_names_missing_keys() -> None:
    with pytest.raises(AttributeError, match="config has no key 'nope'"):
        _ = core.DDIMScheduler().config.nope


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_saved_config_loads_in_both_libraries(tmp_path: Path, name: str) -> None:
    ours = getattr(core, name).from_config(BASE_CONFIGS["sd15"])
    written = ours.save_pretrained(tmp_path)
    assert written == tmp_path / "scheduler_config.json"
    reloaded = getattr(core, name).from_pretrained(tmp_path)
    theirs = getattr(diffusers, name).from_pretrained(tmp_path)
    # The file holds every key, so after a reload no key counts as "left at its default" -- in both libraries.
    saved = {k: v for k, v in ours.config.items() if k != "_use_default_values"}
    assert comparable(reloaded.config) == comparable(saved)
    assert comparable(theirs.config) == comparable(reloaded.config)


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_json_matches_diffusers_byte_for_byte_but_the_version(name: str) -> None:
    ours = getattr(core, name).from_config(BASE_CONFIGS["sd15"]).to_json_string()
    theirs = getattr(diffusers, name).from_config(BASE_CONFIGS["sd15"]).to_json_string()
    assert f'  "_diffusers_version": "{DIFFUSERS_FORMAT_VERSION}",' in ours.splitlines()

    def without_version(text: str) -> list[str]:
        return [line for line in text.splitlines() if '"_diffusers_version"' not in line]

    assert without_version(ours) == without_version(theirs)


def test_repr_has_the_form_the_guide_shows() -> None:
    scheduler = core.PNDMScheduler.from_pretrained(FIXTURES / "sd15", subfolder="scheduler")
    text = repr(scheduler)
    assert text.startswith('PNDMScheduler {\n  "_class_name": "PNDMScheduler",\n  "_diffusers_version": ')
    for line in ('  "beta_end": 0.012,', '  "beta_schedule": "scaled_linear",', '  "skip_prk_steps": true,'):
        assert line in text.splitlines()
    assert text.endswith("}\n")


def test_load_config_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"cannot load DDIMScheduler config: {tmp_path} has no scheduler_config.json"):
        core.DDIMScheduler.from_pretrained(tmp_path)


def test_load_config_gives_file_and_line_of_bad_json(tmp_path: Path) -> None:
    (tmp_path / "scheduler_config.json").write_text('{\n  "beta_end": 0.012,\n  oops\n}\n')
    with pytest.raises(ConfigError) as error:
        core.DDIMScheduler.from_pretrained(tmp_path)
    assert str(error.value) == f"{tmp_path / 'scheduler_config.json'}:3: not valid JSON (Expecting property name enclosed in double quotes)"


def test_load_config_refuses_a_non_object(tmp_path: Path) -> None:
    (tmp_path / "scheduler_config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object, found list"):
        core.DDIMScheduler.from_pretrained(tmp_path)


def test_from_config_refuses_a_path() -> None:
    with pytest.raises(ConfigError, match=r"takes a config mapping, not str; to read a folder use DDIMScheduler.from_pretrained\(path\)"):
        core.DDIMScheduler.from_config("some/folder")


def test_literal_options_list_the_allowed_values() -> None:
    with pytest.raises(ConfigError) as error:
        core.DDIMScheduler(beta_schedule="cosine")
    assert str(error.value) == (
        "DDIMScheduler: beta_schedule must be one of 'linear', 'scaled_linear', 'squaredcos_cap_v2'; got 'cosine'"
    )


def test_diffusers_config_mapping_is_accepted() -> None:
    """A diffusers pipeline's scheduler.config (its FrozenDict) feeds our from_config directly, as in the guide."""
    theirs = diffusers.PNDMScheduler.from_config(BASE_CONFIGS["sd15"])
    ours = core.DPMSolverMultistepScheduler.from_config(theirs.config)
    assert ours.config.beta_schedule == "scaled_linear"
