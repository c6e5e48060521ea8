"""UNet2DConditionModel: built from diffusers' config.json, loads diffusers' safetensors strictly, equals diffusers.

Oracle: randomly initialised tiny diffusers UNets (several shapes), saved with ``save_pretrained``.
"""

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel as DiffusersUNet
from safetensors.torch import load_file

from schedcmp.core.errors import ConfigError, ConfigWarning
from schedcmp.core.models.unet import UNet2DConditionConfig, UNet2DConditionModel

SD15_UNET_CONFIG = Path(__file__).parent / "fixtures" / "sd15" / "unet" / "config.json"
TOLERANCE = 1e-5

SHAPES = {
    # SD 1.x: conv proj_in, one head count for every block.
    "sd1-conv-proj": dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ),
    # SD 2.x: linear proj_in, per-block head counts, upcast attention (2.1), three levels.
    "sd2-linear-proj": dict(
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        cross_attention_dim=24,
        attention_head_dim=[2, 4, 8],
        use_linear_projection=True,
        upcast_attention=True,
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ),
    # Every other supported key away from its default: inpainting input, centred input, deeper stages.
    "variants": dict(
        in_channels=9,
        block_out_channels=(16, 32),
        layers_per_block=2,
        transformer_layers_per_block=2,
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
        norm_eps=1e-6,
        flip_sin_to_cos=False,
        freq_shift=1,
        center_input_sample=True,
        mid_block_scale_factor=1.5,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ),
}

TIMESTEPS = {
    "python int": lambda: 500,
    "python float": lambda: 37.5,
    "0-d tensor": lambda: torch.tensor(10),
    "int vector": lambda: torch.tensor([1, 500, 999]),
    "float vector": lambda: torch.tensor([0.5, 250.25, 999.0]),
}


class Pair:
    """A diffusers UNet, ours loaded from its saved folder, and inputs that fit both."""

    def __init__(self, name: str, folder: Path, theirs: DiffusersUNet, ours: UNet2DConditionModel):
        self.name, self.folder, self.theirs, self.ours = name, folder, theirs, ours
        self.config = ours.config

    def inputs(self, batch: int = 3, height: int = 16, width: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(1)
        sample = torch.randn(batch, self.config.in_channels, height, width, generator=generator)
        context = torch.randn(batch, 7, self.config.cross_attention_dim, generator=generator)
        return sample, context


@pytest.fixture(scope="module", params=list(SHAPES))
def pair(request, tmp_path_factory) -> Pair:
    torch.manual_seed(0)
    theirs = DiffusersUNet(**SHAPES[request.param]).eval()
    folder = tmp_path_factory.mktemp(f"unet-{request.param}")
    theirs.save_pretrained(folder)
    ours = UNet2DConditionModel(UNet2DConditionConfig.from_file(folder / "config.json")).eval()
    ours.load_state_dict(load_file(folder / "diffusion_pytorch_model.safetensors"), strict=True)
    return Pair(request.param, folder, theirs, ours)


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ------------------------------------------------------------------------------------------------ weights


def test_saved_checkpoint_has_exactly_our_parameter_names_and_shapes(pair):
    saved = {k: tuple(v.shape) for k, v in load_file(pair.folder / "diffusion_pytorch_model.safetensors").items()}
    ours = {k: tuple(v.shape) for k, v in pair.ours.state_dict().items()}
    assert ours == saved


@pytest.mark.parametrize("config", ["sd15", "sd21-shaped"])
def test_real_config_builds_diffusers_parameter_tree_on_meta(config):
    raw = json.loads(SD15_UNET_CONFIG.read_text())
    if config == "sd21-shaped":  # the keys in which SD 2.1's published UNet config differs from SD 1.5's
        raw |= dict(
            attention_head_dim=[5, 10, 20, 20],
            cross_attention_dim=1024,
            use_linear_projection=True,
            upcast_attention=True,
            sample_size=96,
        )
    with torch.device("meta"):
        theirs = DiffusersUNet.from_config(raw)
        ours = UNet2DConditionModel(UNet2DConditionConfig.from_dict(raw))
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in theirs.state_dict().items()
    }
    assert all(p.is_meta for p in ours.parameters())


# ------------------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("kind", list(TIMESTEPS))
def test_output_equals_diffusers(pair, kind):
    sample, context = pair.inputs()
    timestep = TIMESTEPS[kind]()
    with torch.no_grad():
        expected = pair.theirs(sample, timestep, context).sample
        actual = pair.ours(sample, timestep, context)
    assert actual.shape == (3, pair.config.out_channels, 16, 24)
    assert max_error(actual, expected) <= TOLERANCE


def test_latents_not_divisible_by_the_downsampling_equal_diffusers(pair):
    sample, context = pair.inputs(batch=2, height=13, width=10)
    with torch.no_grad():
        expected = pair.theirs(sample, 250, context).sample
        actual = pair.ours(sample, 250, context)
    assert actual.shape == (2, pair.config.out_channels, 13, 10)
    assert max_error(actual, expected) <= TOLERANCE


def test_per_sample_timesteps_give_each_sample_its_own_result(pair):
    sample, context = pair.inputs()
    timesteps = torch.tensor([999.0, 500.5, 1.0])
    with torch.no_grad():
        batched = pair.ours(sample, timesteps, context)
        alone = torch.cat([pair.ours(sample[i : i + 1], timesteps[i], context[i : i + 1]) for i in range(3)])
    assert max_error(batched, alone) <= TOLERANCE


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_is_as_close_to_fp32_as_diffusers(pair, dtype):
    sample, context = pair.inputs(batch=2, height=8, width=8)
    timesteps = torch.tensor([1, 999])
    with torch.no_grad():
        reference = pair.ours(sample, timesteps, context)
        theirs = copy.deepcopy(pair.theirs).to(dtype)(sample.to(dtype), timesteps, context.to(dtype)).sample
        ours = copy.deepcopy(pair.ours).to(dtype)(sample.to(dtype), timesteps, context.to(dtype))
    assert ours.dtype == dtype
    assert max_error(ours, reference) <= 2 * max_error(theirs, reference)


# ------------------------------------------------------------------------------------------------ config


def sd15_config(**changes) -> dict:
    return json.loads(SD15_UNET_CONFIG.read_text()) | changes


def test_real_config_reads_its_values():
    config = UNet2DConditionConfig.from_file(SD15_UNET_CONFIG)
    assert config.block_out_channels == (320, 640, 1280, 1280)
    assert config.attention_head_dim == 8
    assert config.cross_attention_dim == 768
    assert config.sample_size == 64
    assert config.use_linear_projection is False


def test_informational_keys_are_ignored_silently():
    raw = sd15_config(_name_or_path="runwayml/stable-diffusion-v1-5", architectures=["X"], torch_dtype="float16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        UNet2DConditionConfig.from_dict(raw)


def test_neutral_values_of_unsupported_features_are_accepted():
    raw = sd15_config(
        class_embed_type=None,
        num_class_embeds=None,
        only_cross_attention=[False] * 4,
        dropout=0.0,
        resnet_out_scale_factor=1,
        mid_block_type="UNetMidBlock2DCrossAttn",
    )
    assert UNet2DConditionConfig.from_dict(raw) == UNet2DConditionConfig.from_file(SD15_UNET_CONFIG)


def test_unknown_key_is_ignored_with_a_warning():
    with pytest.warns(ConfigWarning, match='^unet config: ignoring unknown key "some_future_key"$'):
        UNet2DConditionConfig.from_dict(sd15_config(some_future_key=3))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            dict(class_embed_type="timestep"),
            'unet config: "class_embed_type": "timestep" is not supported; schedcmp supports only '
            '"class_embed_type": null (Stable Diffusion 1.x and 2.x models)',
        ),
        (
            dict(addition_embed_type="text_time"),
            'unet config: "addition_embed_type": "text_time" is not supported; schedcmp supports only '
            '"addition_embed_type": null (Stable Diffusion 1.x and 2.x models)',
        ),
        (
            dict(only_cross_attention=[False, True, False, False]),
            'unet config: "only_cross_attention": [false, true, false, false] is not supported; schedcmp supports '
            'only "only_cross_attention": false (Stable Diffusion 1.x and 2.x models)',
        ),
        (
            dict(mid_block_only_cross_attention=True),
            'unet config: "mid_block_only_cross_attention": true is not supported; schedcmp supports only '
            '"mid_block_only_cross_attention": null or false (Stable Diffusion 1.x and 2.x models)',
        ),
        (
            dict(down_block_types=["CrossAttnDownBlock2D", "AttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]),
            'unet config: "down_block_types": ["CrossAttnDownBlock2D", "AttnDownBlock2D", "CrossAttnDownBlock2D", '
            '"DownBlock2D"] is not supported; each entry must be one of "CrossAttnDownBlock2D", "DownBlock2D"',
        ),
        (
            dict(transformer_layers_per_block=[1, 2, 10, 10]),
            'unet config: "transformer_layers_per_block": [1, 2, 10, 10] is not supported; '
            "expected one integer for all blocks",
        ),
        (
            dict(attention_head_dim=[5, 10, 20]),
            'unet config: "attention_head_dim": [5, 10, 20] is not supported; '
            "expected 4 entries, one per block_out_channels",
        ),
        (
            dict(act_fn="gelu"),
            'unet config: "act_fn": "gelu" is not supported; expected one of "silu", "swish"',
        ),
    ],
    ids=[
        "class-embed",
        "sdxl-addition-embed",
        "only-cross-attention",
        "mid-only-cross",
        "block-type",
        "transformer-layers-list",
        "head-dim-length",
        "act-fn",
    ],
)
def test_unsupported_config_is_refused_with_the_key_and_what_is_supported(changes, message):
    with pytest.raises(ConfigError) as err:
        UNet2DConditionConfig.from_dict(sd15_config(**changes))
    assert str(err.value) == message


def test_malformed_config_file_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=rf"^{path} is not valid JSON \("):
        UNet2DConditionConfig.from_file(path)
