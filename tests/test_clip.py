"""CLIPTextModel: transformers' checkpoints load strictly and give transformers' hidden states (and clip-skip)."""

import json
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from schedcmp.core.errors import ConfigError, ConfigWarning
from schedcmp.core.models.clip import CLIPTextConfig, CLIPTextModel, convert_state_dict

SD15_CONFIG = Path(__file__).parent / "fixtures" / "sd15" / "text_encoder" / "config.json"
BOS, EOS = 49406, 49407
TOLERANCE = 1e-5

# Tiny text encoders over CLIP's full vocabulary, so real token ids (and both pad conventions) can be fed.
SHAPES = {
    "sd1-like": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4),
    "sd2-like": dict(
        hidden_size=48, intermediate_size=64, num_hidden_layers=4, num_attention_heads=3, hidden_act="gelu"
    ),
    "deeper": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=5, num_attention_heads=8, layer_norm_eps=1e-6
    ),
}
DEFAULTS = dict(vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[transformers.CLIPTextModel, Path]]:
    """A randomly initialised transformers CLIPTextModel per shape, saved with save_pretrained."""
    models = {}
    for name, shape in SHAPES.items():
        torch.manual_seed(0)
        model = transformers.CLIPTextModel(transformers.CLIPTextConfig(**{**DEFAULTS, **shape})).eval()
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder, safe_serialization=True)
        models[name] = (model, folder)
    return models


def load_ours(folder: Path) -> CLIPTextModel:
    model = CLIPTextModel.from_config_file(folder / "config.json")
    model.load_state_dict(convert_state_dict(load_file(folder / "model.safetensors")), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def ours(saved) -> dict[str, CLIPTextModel]:
    """Our model per shape, loaded from the saved transformers checkpoint."""
    return {name: load_ours(folder) for name, (_, folder) in saved.items()}


def tokenized(pad_id: int) -> torch.Tensor:
    """input_ids [4, 77] as the tokenizer makes them: bos, content, eos, then pad (49407 in SD 1.x, 0 in SD 2.x)."""
    generator = torch.Generator().manual_seed(1)
    rows = [[320, 1125, 539, 320, 2368]]  # "a photo of a cat"
    rows += [torch.randint(0, BOS, (n,), generator=generator).tolist() for n in (0, 30, 75)]
    return torch.tensor([[BOS, *row, EOS] + [pad_id] * (75 - len(row)) for row in rows])


@pytest.fixture(scope="module")
def reference_outputs(saved) -> dict[tuple[str, int], transformers.modeling_outputs.BaseModelOutputWithPooling]:
    """transformers' outputs (with every layer's hidden states) per shape and pad convention."""
    with torch.no_grad():
        return {
            (name, pad_id): reference(tokenized(pad_id), output_hidden_states=True)
            for name, (reference, _) in saved.items()
            for pad_id in (EOS, 0)
        }


# --------------------------------------------------------------------------------------------- state dicts


@pytest.mark.parametrize("name", SHAPES)
def test_parameter_names_are_the_hub_checkpoint_keys(saved, name):
    """transformers' keys under text_model., the layout of every SD checkpoint on the Hub, with equal shapes."""
    reference, folder = saved[name]
    ours = CLIPTextModel.from_config_file(folder / "config.json")
    expected = {f"text_model.{key}": tuple(t.shape) for key, t in reference.state_dict().items()}
    assert {key: tuple(t.shape) for key, t in ours.state_dict().items()} == expected


def test_module_has_no_buffers():
    """Nothing that a checkpoint does not fill: the loader can build on the meta device and assign weights."""
    assert list(CLIPTextModel(CLIPTextConfig(**SHAPES["sd1-like"])).buffers()) == []


@pytest.mark.parametrize("name", SHAPES)
def test_transformers_save_pretrained_loads_strictly(saved, name):
    """transformers 5 saves without the text_model. prefix; convert_state_dict adds it."""
    _, folder = saved[name]
    state = load_file(folder / "model.safetensors")
    assert not any(key.startswith("text_model.") for key in state)
    result = CLIPTextModel.from_config_file(folder / "config.json").load_state_dict(convert_state_dict(state))
    assert (result.missing_keys, result.unexpected_keys) == ([], [])


def test_hub_layout_loads_strictly_as_is_and_after_conversion(saved):
    """A Hub checkpoint (text_model. prefix, and position_ids from transformers < 4.31) loads directly or converted."""
    reference, folder = saved["sd1-like"]
    hub = {f"text_model.{key}": tensor for key, tensor in reference.state_dict().items()}
    ours = CLIPTextModel.from_config_file(folder / "config.json")
    ours.load_state_dict(hub, strict=True)
    legacy = {**hub, "text_model.embeddings.position_ids": torch.arange(77)[None]}
    assert convert_state_dict(legacy).keys() == hub.keys()


def test_real_sd15_config_builds_the_sd15_text_encoder():
    """The real SD 1.5 config.json: same parameter names and shapes as transformers builds (on the meta device)."""
    with torch.device("meta"):
        ours = CLIPTextModel.from_config_file(SD15_CONFIG)
        reference = transformers.CLIPTextModel(transformers.CLIPTextConfig(**json.loads(SD15_CONFIG.read_text())))
    expected = {f"text_model.{key}": tuple(t.shape) for key, t in reference.state_dict().items()}
    assert {key: tuple(t.shape) for key, t in ours.state_dict().items()} == expected
    assert sum(p.numel() for p in ours.parameters()) == 123_060_480


# -------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("pad_id", [EOS, 0], ids=["sd1-pad", "sd2-pad"])
@pytest.mark.parametrize("name", SHAPES)
def test_last_hidden_state_equals_transformers(reference_outputs, ours, name, pad_id):
    expected = reference_outputs[name, pad_id].last_hidden_state
    with torch.no_grad():
        actual = ours[name](tokenized(pad_id))
    assert actual.shape == (4, 77, SHAPES[name]["hidden_size"])
    assert (actual - expected).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("clip_skip", [1, 2, 3])
@pytest.mark.parametrize("name", SHAPES)
def test_clip_skip_equals_diffusers_recipe(saved, reference_outputs, ours, name, clip_skip):
    """diffusers: hidden_states[-(clip_skip + 1)] of the output_hidden_states run, then final_layer_norm."""
    hidden_states = reference_outputs[name, EOS].hidden_states
    with torch.no_grad():
        expected = saved[name][0].final_layer_norm(hidden_states[-(clip_skip + 1)])
        actual = ours[name](tokenized(EOS), clip_skip=clip_skip)
    assert (actual - expected).abs().max().item() <= TOLERANCE


def test_clip_skip_zero_is_the_last_hidden_state(ours):
    model = ours["sd1-like"]
    input_ids = tokenized(EOS)
    with torch.no_grad():
        assert torch.equal(model(input_ids, clip_skip=0), model(input_ids))


def test_clip_skip_beyond_the_layers_is_refused(ours):
    with pytest.raises(ConfigError) as err:
        ours["sd1-like"](tokenized(EOS), clip_skip=4)
    assert str(err.value) == "clip_skip=4 is not supported; this text encoder has 3 layers"


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_half_precision_runs_close_to_fp32(saved, ours, dtype, tolerance):
    input_ids = tokenized(0)
    with torch.no_grad():
        expected = ours["sd2-like"](input_ids)
        actual = load_ours(saved["sd2-like"][1]).to(dtype)(input_ids)
    assert actual.dtype == dtype
    assert (actual.float() - expected).abs().max().item() <= tolerance


def test_longer_input_than_positions_is_refused(ours):
    with pytest.raises(ValueError) as err:
        ours["sd1-like"](torch.zeros(1, 78, dtype=torch.long))
    assert str(err.value) == "input_ids has 78 tokens but the text encoder has 77 positions; tokenize with truncation"


# ---------------------------------------------------------------------------------------------------- config


def test_real_config_keys_are_read_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = CLIPTextConfig.from_file(SD15_CONFIG)
    assert config == CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("hidden_act", "relu", "hidden_act='relu' is not supported; only 'quick_gelu' (SD 1.x) and 'gelu' (SD 2.x)"),
        ("dropout", 0.1, "dropout=0.1 is not supported; only 0.0 (dropout only acts in training)"),
        ("attention_dropout", 0.1, "attention_dropout=0.1 is not supported; only 0.0 (dropout only acts in training)"),
        (
            "use_attention_mask",
            True,
            "use_attention_mask=True is not supported; only False (padding is handled by the causal mask, as in Stable Diffusion)",
        ),
        (
            "model_type",
            "clip",
            "model_type='clip' is not supported; only 'clip_text_model' (this is CLIP's text encoder)",
        ),
        (
            "num_attention_heads",
            5,
            "hidden_size=768 is not supported with num_attention_heads=5; the hidden size must split evenly into heads",
        ),
        ("num_hidden_layers", 0, "CLIPTextConfig: num_hidden_layers must be a whole number >= 1; got 0"),
    ],
)
def test_unsupported_config_values_are_refused(tmp_path, key, value, message):
    config = {**json.loads(SD15_CONFIG.read_text()), key: value}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError) as err:
        CLIPTextModel.from_config_file(tmp_path / "config.json")
    assert str(err.value) == f"{tmp_path / 'config.json'}: {message}"


def test_unknown_config_keys_are_warned_about():
    with pytest.warns(ConfigWarning) as record:
        CLIPTextConfig.from_dict({"hidden_size": 32, "num_attention_heads": 4, "rope_theta": 10000.0})
    assert str(record[0].message) == "text encoder config: ignoring unknown keys ['rope_theta']"


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        CLIPTextModel.from_config_file(tmp_path / "config.json")
    assert str(err.value) == f"{tmp_path / 'config.json'} is missing: a CLIP text encoder needs its config.json"


def test_corrupt_config_file(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 32,')
    with pytest.raises(ConfigError) as err:
        CLIPTextModel.from_config_file(tmp_path / "config.json")
    assert str(err.value) == (
        f"{tmp_path / 'config.json'} is not valid JSON "
        "(Expecting property name enclosed in double quotes: line 1 column 20 (char 19))"
    )
