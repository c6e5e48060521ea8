"""CLIPTextModel(WithProjection): transformers' checkpoints load strictly and give transformers' hidden states
(and clip-skip), every layer's hidden states and the pooled (projected) end-of-text embedding SDXL uses."""

import json
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from schedcmp.core.errors import ConfigError, ConfigWarning
from schedcmp.core.models.clip import (
    CLIPTextConfig,
    CLIPTextEncoding,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    convert_state_dict,
    eos_positions,
)

SD15_CONFIG = Path(__file__).parent / "fixtures" / "sd15" / "text_encoder" / "config.json"
SDXL = Path(__file__).parent / "fixtures" / "sdxl" / "base"
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

# Pooling: both classes under both end-of-text rules (legacy eos_token_id=2: the highest id; else the first eos id).
CLASSES = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection}
EOS_RULES = {"legacy-eos-2": 2, "eos-49407": EOS}
POOLING_SHAPE = dict(**SHAPES["sd2-like"], projection_dim=40)  # projection_dim != hidden_size (48)


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


def load_ours(folder: Path, cls: type[CLIPTextModel] = CLIPTextModel) -> CLIPTextModel:
    model = cls.from_config_file(folder / "config.json")
    model.load_state_dict(convert_state_dict(load_file(folder / "model.safetensors")), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def ours(saved) -> dict[str, CLIPTextModel]:
    """Our model per shape, loaded from the saved transformers checkpoint."""
    return {name: load_ours(folder) for name, (_, folder) in saved.items()}


@pytest.fixture(scope="module")
def pooling(tmp_path_factory) -> dict[tuple[str, str], tuple[torch.nn.Module, CLIPTextModel, Path]]:
    """transformers' model, ours loaded from its save_pretrained, and the folder, per class and end-of-text rule."""
    models = {}
    for class_name, cls in CLASSES.items():
        for rule, eos_token_id in EOS_RULES.items():
            torch.manual_seed(0)
            config = transformers.CLIPTextConfig(**{**DEFAULTS, **POOLING_SHAPE, "eos_token_id": eos_token_id})
            reference = getattr(transformers, class_name)(config).eval()
            folder = tmp_path_factory.mktemp(f"{class_name}-{rule}")
            reference.save_pretrained(folder, safe_serialization=True)
            models[class_name, rule] = (reference, load_ours(folder, cls), folder)
    return models


def tokenized(pad_id: int) -> torch.Tensor:
    """input_ids [4, 77] as the tokenizer makes them: bos, content, eos, then pad (49407 in SD 1.x, 0 in SD 2.x)."""
    generator = torch.Generator().manual_seed(1)
    rows = [[320, 1125, 539, 320, 2368]]  # "a photo of a cat"
    rows += [torch.randint(0, BOS, (n,), generator=generator).tolist() for n in (0, 30, 75)]
    return torch.tensor([[BOS, *row, EOS] + [pad_id] * (75 - len(row)) for row in rows])


def without_eos() -> torch.Tensor:
    """input_ids [3, 20] of content tokens only: the two end-of-text rules pick different positions."""
    return torch.randint(0, BOS, (3, 20), generator=torch.Generator().manual_seed(2))


POOLING_INPUTS = {"sd1-pad": lambda: tokenized(EOS), "sd2-pad": lambda: tokenized(0), "no-eos": without_eos}
EOS_AT = [6, 1, 31, 76]  # where tokenized() puts each row's end-of-text token


def reference_pooled(reference: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """transformers' pooled embedding: text_embeds with the projection head, pooler_output without."""
    output = reference(input_ids)
    return (
        output.text_embeds if isinstance(reference, transformers.CLIPTextModelWithProjection) else output.pooler_output
    )


def hub_shapes(reference: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """transformers' parameter names and shapes in the Hub layout (its CLIPTextModel drops text_model. since v5)."""
    prefix = "text_model." if isinstance(reference, transformers.CLIPTextModel) else ""
    return {prefix + key: tuple(t.shape) for key, t in reference.state_dict().items()}


def shapes_of(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(t.shape) for key, t in model.state_dict().items()}


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


@pytest.mark.parametrize("rule", EOS_RULES)
def test_with_projection_save_pretrained_loads_strictly(pooling, rule):
    """transformers' CLIPTextModelWithProjection keeps text_model. and adds text_projection.weight (no bias)."""
    reference, _, folder = pooling["CLIPTextModelWithProjection", rule]
    state = load_file(folder / "model.safetensors")
    assert {key for key in state if not key.startswith("text_model.")} == {"text_projection.weight"}
    assert tuple(state["text_projection.weight"].shape) == (
        POOLING_SHAPE["projection_dim"],
        POOLING_SHAPE["hidden_size"],
    )
    ours = CLIPTextModelWithProjection.from_config_file(folder / "config.json")
    ours.load_state_dict(convert_state_dict(state), strict=True)
    assert shapes_of(ours) == hub_shapes(reference)


@pytest.mark.parametrize("cls", CLASSES.values(), ids=CLASSES)
@pytest.mark.parametrize("source", ["from_config", "from_config_file"])
def test_builders_build_the_class_they_are_called_on(saved, cls, source):
    folder = saved["sd1-like"][1]
    config = folder / "config.json"
    model = cls.from_config(json.loads(config.read_text())) if source == "from_config" else cls.from_config_file(config)
    assert type(model) is cls
    assert hasattr(model, "text_projection") == (cls is CLIPTextModelWithProjection)


SDXL_ENCODERS = {
    "text_encoder": (CLIPTextModel, transformers.CLIPTextModel, 768, 123_060_480),
    "text_encoder_2": (CLIPTextModelWithProjection, transformers.CLIPTextModelWithProjection, 1280, 694_659_840),
}


@pytest.mark.parametrize("name", SDXL_ENCODERS)
def test_real_sdxl_configs_build_transformers_parameters(name):
    """SDXL's two real config.json files read without warnings and build transformers' names and shapes (meta)."""
    file = SDXL / name / "config.json"
    cls, reference_cls, projection_dim, parameters = SDXL_ENCODERS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = CLIPTextConfig.from_file(file)
    with torch.device("meta"):
        ours = cls(config)
        reference = reference_cls(transformers.CLIPTextConfig(**json.loads(file.read_text())))
    assert (config.eos_token_id, config.projection_dim) == (2, projection_dim)
    assert shapes_of(ours) == hub_shapes(reference)
    assert sum(p.numel() for p in ours.parameters()) == parameters


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


def resolve_from_end(name: str, from_end: int | str) -> int:
    return SHAPES[name]["num_hidden_layers"] + 1 if from_end == "embeddings" else from_end


@pytest.mark.parametrize("from_end", [1, 2, 3, "embeddings"])
@pytest.mark.parametrize("pad_id", [EOS, 0], ids=["sd1-pad", "sd2-pad"])
@pytest.mark.parametrize("name", SHAPES)
def test_encode_hidden_states_equal_transformers(reference_outputs, ours, name, pad_id, from_end):
    """encode(ids, k).hidden_states is transformers' hidden_states[-k]: a layer's output, no final LayerNorm."""
    k = resolve_from_end(name, from_end)
    expected = reference_outputs[name, pad_id].hidden_states[-k]
    with torch.no_grad():
        actual = ours[name].encode(tokenized(pad_id), k).hidden_states
    assert actual.shape == (4, 77, SHAPES[name]["hidden_size"])
    assert (actual - expected).abs().max().item() <= TOLERANCE


def test_encode_defaults_to_the_last_layer_before_the_final_layer_norm(ours):
    model = ours["sd1-like"]
    input_ids = tokenized(EOS)
    with torch.no_grad():
        encoding = model.encode(input_ids)
        assert torch.equal(encoding.hidden_states, model.encode(input_ids, 1).hidden_states)
        assert torch.equal(model.text_model.final_layer_norm(encoding.hidden_states), model(input_ids))


@pytest.mark.parametrize("from_end", [1, 2, 5])
@pytest.mark.parametrize("rule", EOS_RULES)
def test_with_projection_hidden_states_equal_transformers(pooling, rule, from_end):
    reference, ours, _ = pooling["CLIPTextModelWithProjection", rule]
    with torch.no_grad():
        expected = reference(tokenized(0), output_hidden_states=True).hidden_states[-from_end]
        actual = ours.encode(tokenized(0), from_end).hidden_states
    assert (actual - expected).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("inputs", POOLING_INPUTS)
@pytest.mark.parametrize("rule", EOS_RULES)
@pytest.mark.parametrize("class_name", CLASSES)
def test_pooled_equals_transformers(pooling, class_name, rule, inputs):
    """pooler_output (CLIPTextModel) or text_embeds (WithProjection), under both end-of-text rules."""
    reference, ours, _ = pooling[class_name, rule]
    input_ids = POOLING_INPUTS[inputs]()
    with torch.no_grad():
        expected = reference_pooled(reference, input_ids)
        actual = ours.encode(input_ids, 2).pooled
    width = POOLING_SHAPE["projection_dim" if class_name == "CLIPTextModelWithProjection" else "hidden_size"]
    assert actual.shape == (input_ids.shape[0], width)
    assert (actual - expected).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("pad_id", [EOS, 0], ids=["sd1-pad", "sd2-pad"])
@pytest.mark.parametrize("eos_token_id", EOS_RULES.values(), ids=EOS_RULES)
def test_eos_positions_are_found_per_row(eos_token_id, pad_id):
    assert eos_positions(tokenized(pad_id), eos_token_id).tolist() == EOS_AT


def test_eos_rules_differ_without_an_eos_token():
    """Legacy: the first highest id; otherwise the first eos id, position 0 where a row has none."""
    input_ids = without_eos()
    assert eos_positions(input_ids, 2).tolist() == input_ids.argmax(dim=-1).tolist()
    assert eos_positions(input_ids, EOS).tolist() == [0, 0, 0]


def test_pooled_is_the_normed_last_layer_at_each_rows_eos(ours):
    """Rows pool at different positions (6, 1, 31, 76): each row's own end-of-text token."""
    model = ours["sd1-like"]
    with torch.no_grad():
        encoding = model.encode(tokenized(0), 2)
        last = model(tokenized(0))
    assert isinstance(encoding, CLIPTextEncoding)
    assert torch.equal(encoding.pooled, torch.stack([last[row, at] for row, at in enumerate(EOS_AT)]))


@pytest.mark.parametrize(("from_end", "shown"), [(0, "0"), (5, "5"), (-1, "-1"), (True, "True"), (2.0, "2.0")])
def test_hidden_state_from_end_out_of_range_is_refused(ours, from_end, shown):
    with pytest.raises(ConfigError) as err:
        ours["sd1-like"].encode(tokenized(EOS), from_end)
    assert str(err.value) == (
        f"hidden_state_from_end={shown} is not supported; only 1 to 4 "
        "(1 is the last of this text encoder's 3 layers, 4 its embeddings)"
    )


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_with_projection_half_precision_runs_close_to_fp32(pooling, dtype, tolerance):
    _, ours, folder = pooling["CLIPTextModelWithProjection", "legacy-eos-2"]
    input_ids = tokenized(0)
    with torch.no_grad():
        expected = ours.encode(input_ids, 2)
        actual = load_ours(folder, CLIPTextModelWithProjection).to(dtype).encode(input_ids, 2)
    for name in ("hidden_states", "pooled"):
        got, want = getattr(actual, name), getattr(expected, name)
        assert got.dtype == dtype
        assert (got.float() - want).abs().max().item() <= tolerance, name


def test_longer_input_than_positions_is_refused(ours):
    with pytest.raises(ValueError) as err:
        ours["sd1-like"](torch.zeros(1, 78, dtype=torch.long))
    assert str(err.value) == "input_ids has 78 tokens but the text encoder has 77 positions; tokenize with truncation"


# ---------------------------------------------------------------------------------------------------- config


def test_real_config_keys_are_read_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = CLIPTextConfig.from_file(SD15_CONFIG)
    assert config == CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, projection_dim=768)


def test_eos_token_id_and_projection_dim_are_read(saved):
    """transformers 5 writes eos_token_id=49407 (its new default); ours defaults to the legacy 2 when absent."""
    config = CLIPTextConfig.from_file(saved["sd1-like"][1] / "config.json")
    assert (config.eos_token_id, config.projection_dim) == (EOS, 512)
    assert (CLIPTextConfig().eos_token_id, CLIPTextConfig().projection_dim) == (2, 512)


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
        ("projection_dim", 0, "CLIPTextConfig: projection_dim must be a whole number >= 1; got 0"),
        ("eos_token_id", None, "CLIPTextConfig: eos_token_id must be a whole number; got None"),
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
