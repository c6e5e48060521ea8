"""UNet2DConditionModel: built from diffusers' config.json, loads diffusers' safetensors strictly, equals diffusers.

Oracle: randomly initialised tiny diffusers UNets (several shapes, SD 1.x / 2.x and SDXL), saved with
``save_pretrained``; the real SD 1.5 / 2.1 / SDXL configs built on the meta device.
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
SDXL_CONFIGS = Path(__file__).parent / "fixtures" / "sdxl"  # the real SDXL base and refiner configs
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
    # SDXL base: micro-conditioning (6 time ids), per-block transformer depths (mid: the last, up: reversed),
    # no attention at the highest resolution.
    "sdxl-base-shaped": dict(
        sample_size=16,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 48,
        cross_attention_dim=96,
        norm_num_groups=8,
    ),
    # SDXL refiner: 5 time ids (aesthetic score), four levels without attention at either end, one depth for all
    # blocks, cross_attention_dim written per block.
    "sdxl-refiner-shaped": dict(
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(1, 2, 4, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=6,
        transformer_layers_per_block=2,
        projection_class_embeddings_input_dim=5 * 6 + 20,
        cross_attention_dim=(40, 40, 40, 40),
        norm_num_groups=8,
    ),
}

# SDXL's time ids, one row per sample: (original size, crop top-left, target size) for the base; (original size,
# crop top-left, aesthetic score) for the refiner (Podell et al. 2023, sec. 2.2).
TIME_IDS = {
    "sdxl-base-shaped": [[1024, 1024, 0, 0, 1024, 1024], [768, 1344, 0, 0, 768, 1344], [512, 512, 32, 16, 1024, 1024]],
    "sdxl-refiner-shaped": [[1024, 1024, 0, 0, 6.0], [768, 1344, 0, 0, 2.5], [512, 512, 32, 16, 6.0]],
}

TIMESTEPS = {
    "python int": lambda: 500,
    "python float": lambda: 37.5,
    "0-d tensor": lambda: torch.tensor(10),
    "int vector": lambda: torch.tensor([1, 500, 999]),
    "float vector": lambda: torch.tensor([0.5, 250.25, 999.0]),
}


def model_inputs(
    name: str, config: UNet2DConditionConfig, batch: int = 3, height: int = 16, width: int = 24
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """sample, text and the keyword arguments the UNet also takes: SDXL's added_cond_kwargs, none for SD 1.x / 2.x
    (which are called with three positional arguments)."""
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(batch, config.in_channels, height, width, generator=generator)
    context = torch.randn(batch, 7, config.per_block("cross_attention_dim")[-1], generator=generator)
    if config.addition_embed_type is None:
        return sample, context, {}
    time_ids = torch.tensor(TIME_IDS[name])[torch.arange(batch) % 3]
    pooled_width = config.projection_class_embeddings_input_dim - time_ids.shape[1] * config.addition_time_embed_dim
    pooled = torch.randn(batch, pooled_width, generator=generator)
    return sample, context, {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


def map_added(extra: dict, change) -> dict:
    """``extra`` with ``change`` applied to each tensor of its added_cond_kwargs."""
    return {key: {k: change(v) for k, v in value.items()} for key, value in extra.items()}


class Pair:
    """A diffusers UNet, ours loaded from its saved folder, and inputs that fit both."""

    def __init__(self, name: str, folder: Path, theirs: DiffusersUNet, ours: UNet2DConditionModel):
        self.name, self.folder, self.theirs, self.ours = name, folder, theirs, ours
        self.config = ours.config

    def inputs(self, batch: int = 3, height: int = 16, width: int = 24) -> tuple[torch.Tensor, torch.Tensor, dict]:
        return model_inputs(self.name, self.config, batch, height, width)


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


# The keys in which the published UNet configs differ from SD 1.5's (neutral keys left out); the SDXL files, where
# present, are checked to read as these tables.
REAL_CONFIG_CHANGES = {
    "sd15": {},
    "sd21-shaped": dict(
        attention_head_dim=[5, 10, 20, 20],
        cross_attention_dim=1024,
        use_linear_projection=True,
        upcast_attention=True,
        sample_size=96,
    ),
    "sdxl-base": dict(
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        attention_head_dim=[5, 10, 20],
        block_out_channels=[320, 640, 1280],
        cross_attention_dim=2048,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        projection_class_embeddings_input_dim=2816,  # 1280 (pooled OpenCLIP bigG) + 6 time ids x 256
        sample_size=128,
        transformer_layers_per_block=[1, 2, 10],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        upcast_attention=None,
        use_linear_projection=True,
    ),
    "sdxl-refiner": dict(
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        attention_head_dim=[6, 12, 24, 24],
        block_out_channels=[384, 768, 1536, 1536],
        cross_attention_dim=1280,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        projection_class_embeddings_input_dim=2560,  # 1280 + 5 time ids x 256
        sample_size=128,
        transformer_layers_per_block=4,
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        upcast_attention=None,
        use_linear_projection=True,
    ),
}


def parameter_tree(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("config", list(REAL_CONFIG_CHANGES))
def test_real_config_builds_diffusers_parameter_tree_on_meta(config):
    raw = json.loads(SD15_UNET_CONFIG.read_text()) | REAL_CONFIG_CHANGES[config]
    with torch.device("meta"):
        theirs = DiffusersUNet.from_config(raw)
        ours = UNet2DConditionModel(UNet2DConditionConfig.from_dict(raw))
    assert parameter_tree(ours) == parameter_tree(theirs)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    assert all(p.is_meta for p in ours.parameters())


@pytest.mark.parametrize("model", ["base", "refiner"])
def test_real_sdxl_config_file_reads_as_its_table_without_warnings(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = UNet2DConditionConfig.from_file(SDXL_CONFIGS / model / "unet" / "config.json")
    assert config == UNet2DConditionConfig.from_dict(sd15_config(**REAL_CONFIG_CHANGES[f"sdxl-{model}"]))


def test_per_block_cross_attention_dims_and_depths_build_diffusers_parameter_tree():
    raw = dict(
        SHAPES["sdxl-base-shaped"],
        cross_attention_dim=[16, 24, 32],
        transformer_layers_per_block=[1, 2, 3],
    )
    with torch.device("meta"):
        theirs = DiffusersUNet(**raw)
        ours = UNet2DConditionModel(UNet2DConditionConfig.from_dict(raw))
    assert parameter_tree(ours) == parameter_tree(theirs)


# ------------------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("kind", list(TIMESTEPS))
def test_output_equals_diffusers(pair, kind):
    sample, context, extra = pair.inputs()
    timestep = TIMESTEPS[kind]()
    with torch.no_grad():
        expected = pair.theirs(sample, timestep, context, **extra).sample
        actual = pair.ours(sample, timestep, context, **extra)
    assert actual.shape == (3, pair.config.out_channels, 16, 24)
    assert max_error(actual, expected) <= TOLERANCE


def test_latents_not_divisible_by_the_downsampling_equal_diffusers(pair):
    sample, context, extra = pair.inputs(batch=2, height=13, width=10)
    with torch.no_grad():
        expected = pair.theirs(sample, 250, context, **extra).sample
        actual = pair.ours(sample, 250, context, **extra)
    assert actual.shape == (2, pair.config.out_channels, 13, 10)
    assert max_error(actual, expected) <= TOLERANCE


def test_per_sample_timesteps_give_each_sample_its_own_result(pair):
    sample, context, extra = pair.inputs()
    timesteps = torch.tensor([999.0, 500.5, 1.0])
    with torch.no_grad():
        batched = pair.ours(sample, timesteps, context, **extra)
        alone = torch.cat(
            [
                pair.ours(sample[i : i + 1], timesteps[i], context[i : i + 1], **map_added(extra, lambda v: v[i : i + 1]))  # noqa: B023
                for i in range(3)
            ]
        )
    assert max_error(batched, alone) <= TOLERANCE


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_is_as_close_to_fp32_as_diffusers(pair, dtype):
    sample, context, extra = pair.inputs(batch=2, height=8, width=8)
    timesteps = torch.tensor([1, 999])
    half = map_added(extra, lambda v: v.to(dtype))  # as diffusers' SDXL pipeline passes them
    with torch.no_grad():
        reference = pair.ours(sample, timesteps, context, **extra)
        theirs = copy.deepcopy(pair.theirs).to(dtype)(sample.to(dtype), timesteps, context.to(dtype), **half).sample
        ours = copy.deepcopy(pair.ours).to(dtype)(sample.to(dtype), timesteps, context.to(dtype), **half)
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
            '"class_embed_type": null (Stable Diffusion 1.x, 2.x and SDXL models)',
        ),
        (
            dict(addition_embed_type="text"),
            'unet config: "addition_embed_type": "text" is not supported; expected one of null, "text_time" (SDXL)',
        ),
        (
            dict(addition_embed_type="text_time", projection_class_embeddings_input_dim=2816),
            'unet config: "addition_time_embed_dim": null is not supported; "addition_embed_type": "text_time" '
            "needs the width of each time id's sinusoidal embedding",
        ),
        (
            dict(only_cross_attention=[False, True, False, False]),
            'unet config: "only_cross_attention": [false, true, false, false] is not supported; schedcmp supports '
            'only "only_cross_attention": false (Stable Diffusion 1.x, 2.x and SDXL models)',
        ),
        (
            dict(mid_block_only_cross_attention=True),
            'unet config: "mid_block_only_cross_attention": true is not supported; schedcmp supports only '
            '"mid_block_only_cross_attention": null or false (Stable Diffusion 1.x, 2.x and SDXL models)',
        ),
        (
            dict(down_block_types=["CrossAttnDownBlock2D", "AttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]),
            'unet config: "down_block_types": ["CrossAttnDownBlock2D", "AttnDownBlock2D", "CrossAttnDownBlock2D", '
            '"DownBlock2D"] is not supported; each entry must be one of "CrossAttnDownBlock2D", "DownBlock2D"',
        ),
        (
            dict(transformer_layers_per_block=[1, 2, 10]),
            'unet config: "transformer_layers_per_block": [1, 2, 10] is not supported; '
            "expected 4 entries, one per block_out_channels",
        ),
        (
            dict(transformer_layers_per_block=[[1, 1], [2, 2], [3, 3], [4, 4]]),
            'unet config: "transformer_layers_per_block": [[1, 1], [2, 2], [3, 3], [4, 4]] is not supported; '
            "expected one integer, or one integer per block (per-layer depths are not supported)",
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
        "text-addition-embed",
        "text-time-without-its-width",
        "only-cross-attention",
        "mid-only-cross",
        "block-type",
        "transformer-layers-length",
        "transformer-layers-nested",
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
