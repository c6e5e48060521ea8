"""AutoencoderKL: built from diffusers' config.json, loads diffusers' safetensors strictly, encodes and decodes as
diffusers does; legacy mid-block attention keys convert as diffusers converts them.

Oracle: randomly initialised tiny diffusers AutoencoderKLs, saved with ``save_pretrained``.
"""

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL as DiffusersVAE
from safetensors.torch import load_file

from schedcmp.core.errors import ConfigError
from schedcmp.core.models.vae import AutoencoderKL, AutoencoderKLConfig, convert_legacy_vae_keys

SD15_VAE_CONFIG = Path(__file__).parent / "fixtures" / "sd15" / "vae" / "config.json"
TOLERANCE = 1e-5

SHAPES = {
    # SD-like: quant convs and mid-block attention, as every SD 1.x / 2.x VAE has.
    "sd-like": dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    ),
    # The optional switches off, three levels, another scaling factor.
    "no-quant-no-attention": dict(
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
        scaling_factor=0.13025,
        force_upcast=False,
    ),
}


class Pair:
    """A diffusers VAE, ours loaded from its saved folder, and where it was saved."""

    def __init__(self, name: str, folder: Path, theirs: DiffusersVAE, ours: AutoencoderKL):
        self.name, self.folder, self.theirs, self.ours = name, folder, theirs, ours
        self.weights = folder / "diffusion_pytorch_model.safetensors"

    def latents(self, batch: int = 2, height: int = 6, width: int = 10) -> torch.Tensor:
        generator = torch.Generator().manual_seed(1)
        return torch.randn(batch, self.ours.config.latent_channels, height, width, generator=generator)

    def image(self, batch: int = 2, height: int = 16, width: int = 24) -> torch.Tensor:
        generator = torch.Generator().manual_seed(2)
        return torch.rand(batch, 3, height, width, generator=generator) * 2 - 1


@pytest.fixture(scope="module", params=list(SHAPES))
def pair(request, tmp_path_factory) -> Pair:
    torch.manual_seed(0)
    theirs = DiffusersVAE(**SHAPES[request.param]).eval()
    folder = tmp_path_factory.mktemp(f"vae-{request.param}")
    theirs.save_pretrained(folder)
    ours = AutoencoderKL(AutoencoderKLConfig.from_file(folder / "config.json")).eval()
    ours.load_state_dict(load_file(folder / "diffusion_pytorch_model.safetensors"), strict=True)
    return Pair(request.param, folder, theirs, ours)


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ------------------------------------------------------------------------------------------------ weights


def test_saved_checkpoint_has_exactly_our_parameter_names_and_shapes(pair):
    saved = {k: tuple(v.shape) for k, v in load_file(pair.weights).items()}
    assert {k: tuple(v.shape) for k, v in pair.ours.state_dict().items()} == saved


def test_real_config_builds_diffusers_parameter_tree_on_meta():
    raw = json.loads(SD15_VAE_CONFIG.read_text())
    with torch.device("meta"):
        theirs = DiffusersVAE.from_config(raw)
        ours = AutoencoderKL(AutoencoderKLConfig.from_dict(raw))
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in theirs.state_dict().items()
    }
    assert all(p.is_meta for p in ours.parameters())


# ------------------------------------------------------------------------------------------------ parity


def test_decode_equals_diffusers(pair):
    latents = pair.latents()
    with torch.no_grad():
        expected = pair.theirs.decode(latents).sample
        actual = pair.ours.decode(latents)
    factor = 2 ** (len(pair.ours.config.block_out_channels) - 1)
    assert actual.shape == (2, 3, 6 * factor, 10 * factor)
    assert max_error(actual, expected) <= TOLERANCE


def test_encode_gives_diffusers_posterior(pair):
    image = pair.image()
    with torch.no_grad():
        expected = pair.theirs.encode(image).latent_dist
        actual = pair.ours.encode(image)
    assert max_error(actual.mean, expected.mean) <= TOLERANCE
    assert max_error(actual.logvar, expected.logvar) <= TOLERANCE
    assert max_error(actual.std, expected.std) <= TOLERANCE


def test_posterior_sample_draws_diffusers_noise_from_the_generator(pair):
    image = pair.image()
    with torch.no_grad():
        expected = pair.theirs.encode(image).latent_dist.sample(torch.Generator().manual_seed(3))
        actual = pair.ours.encode(image).sample(torch.Generator().manual_seed(3))
    assert max_error(actual, expected) <= TOLERANCE


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_decode_is_as_close_to_fp32_as_diffusers(pair, dtype):
    latents = pair.latents(batch=1)
    with torch.no_grad():
        reference = pair.ours.decode(latents)
        theirs = copy.deepcopy(pair.theirs).to(dtype).decode(latents.to(dtype)).sample
        ours = copy.deepcopy(pair.ours).to(dtype).decode(latents.to(dtype))
    assert ours.dtype == dtype
    assert max_error(ours, reference) <= 2 * max_error(theirs, reference)


# ------------------------------------------------------------------------------------------------ legacy keys

LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
MODERN_ATTENTION_KEY = re.compile(r"^(.*\.mid_block\.attentions\.\d+)\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$")


def to_legacy(state: dict, conv_weights: bool = False) -> dict:
    """Rename the mid-block attention back to its pre-0.14 diffusers names (optionally as 1x1 conv weights)."""
    legacy = {}
    for key, tensor in state.items():
        match = MODERN_ATTENTION_KEY.match(key)
        if match is None:
            legacy[key] = tensor
            continue
        path, name, kind = match.groups()
        if conv_weights and kind == "weight":
            tensor = tensor[:, :, None, None]  # linear [C, C] -> 1x1 conv [C, C, 1, 1]
        legacy[f"{path}.{LEGACY[name]}.{kind}"] = tensor
    return legacy


with_attention = pytest.mark.parametrize("pair", ["sd-like"], indirect=True)


@with_attention
def test_legacy_attention_keys_convert_as_diffusers_converts_them(pair):
    legacy = to_legacy(load_file(pair.weights))
    assert "decoder.mid_block.attentions.0.proj_attn.weight" in legacy
    expected = pair.theirs._fix_state_dict_keys_on_load(dict(legacy))
    actual = convert_legacy_vae_keys(legacy)
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[k], expected[k]) for k in expected)
    copy.deepcopy(pair.ours).load_state_dict(actual, strict=True)


@with_attention
def test_legacy_conv_shaped_attention_weights_become_linear(pair):
    modern = load_file(pair.weights)
    converted = convert_legacy_vae_keys(to_legacy(modern, conv_weights=True))
    assert converted.keys() == modern.keys()
    assert all(torch.equal(converted[k], modern[k]) for k in modern)


@with_attention
def test_legacy_conversion_leaves_modern_state_dicts_and_its_input_alone(pair):
    modern = load_file(pair.weights)
    legacy = to_legacy(modern)
    legacy_keys = list(legacy)
    assert convert_legacy_vae_keys(modern).keys() == modern.keys()
    convert_legacy_vae_keys(legacy)
    assert list(legacy) == legacy_keys


# ------------------------------------------------------------------------------------------------ config


def sd15_config(**changes) -> dict:
    return json.loads(SD15_VAE_CONFIG.read_text()) | changes


def test_real_config_reads_its_values_and_diffusers_defaults():
    config = AutoencoderKLConfig.from_file(SD15_VAE_CONFIG)
    assert config.block_out_channels == (128, 256, 512, 512)
    assert config.latent_channels == 4
    assert config.scaling_factor == 0.18215  # not in the file: diffusers' default
    assert config.force_upcast is True  # not in the file: diffusers' default


def test_scaling_factor_and_upcast_come_from_the_config(pair):
    assert pair.ours.config.scaling_factor == pair.theirs.config.scaling_factor
    assert pair.ours.config.force_upcast == pair.theirs.config.force_upcast


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            dict(shift_factor=0.1159),
            'vae config: "shift_factor": 0.1159 is not supported; schedcmp supports only "shift_factor": null '
            "(Stable Diffusion 1.x and 2.x models)",
        ),
        (
            dict(down_block_types=["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"]),
            'vae config: "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", '
            '"AttnDownEncoderBlock2D"] is not supported; each entry must be "DownEncoderBlock2D"',
        ),
        (
            dict(up_block_types=["UpDecoderBlock2D"] * 3),
            'vae config: "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"] is not '
            "supported; expected 4 entries, one per block_out_channels",
        ),
    ],
    ids=["shift-factor", "block-type", "block-count"],
)
def test_unsupported_config_is_refused_with_the_key_and_what_is_supported(changes, message):
    with pytest.raises(ConfigError) as err:
        AutoencoderKLConfig.from_dict(sd15_config(**changes))
    assert str(err.value) == message
