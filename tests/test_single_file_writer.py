"""The single-file writer, checked with diffusers' own ``from_single_file`` as the oracle."""

from __future__ import annotations

import socket
from pathlib import Path

import diffusers
import pytest
import safetensors
import safetensors.torch
import torch
from single_file_writer import FAMILIES, OPEN_CLIP_PREFIXES, build_tiny, write_single_file

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
DDPM_EXTRAS = ("alphas_cumprod", "betas", "alphas_cumprod_prev")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, tuple[Path, diffusers.DiffusionPipeline]]:
    """Each family's tiny pipeline: its saved folder and the pipeline loaded back from it."""
    root = tmp_path_factory.mktemp("single-file")
    return {family: (root / family, build_tiny(family, root / family)) for family in FAMILIES}


@pytest.fixture(scope="module")
def files(built, tmp_path_factory) -> dict[tuple[str, bool], Path]:
    """Each family's fp32 single file, with and without the extras real files carry."""
    root = tmp_path_factory.mktemp("single-file-out")
    return {(family, extras): write_single_file(folder, family, root / f"{family}-{extras}.safetensors", extras=extras)
            for family, (folder, _) in built.items() for extras in (False, True)}


def no_network(*_args, **_kwargs):
    raise AssertionError("the oracle tried to reach the network")


@pytest.mark.parametrize("extras", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_loads_the_file_back_exactly(family, extras, built, files, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    folder, saved = built[family]
    if family == "sdxl":
        loaded = diffusers.StableDiffusionXLPipeline.from_single_file(
            str(files[family, extras]), config=str(folder), local_files_only=True, add_watermarker=False)
    else:
        loaded = diffusers.StableDiffusionPipeline.from_single_file(
            str(files[family, extras]), config=str(folder), local_files_only=True, safety_checker=None,
            requires_safety_checker=False)
    names = [name for name in COMPONENTS if getattr(saved, name, None) is not None]
    assert len(names) == (4 if family == "sdxl" else 3)
    for name in names:
        expected, got = getattr(saved, name).state_dict(), getattr(loaded, name).state_dict()
        assert set(got) == set(expected), name
        # from_single_file loads non-strictly: a key it missed would stay on the meta device
        mismatched = [k for k in expected if got[k].is_meta or not torch.equal(got[k], expected[k])]
        assert not mismatched, (name, mismatched[:5])


@pytest.mark.parametrize("family", FAMILIES)
def test_extras_are_written_and_only_add_keys(family, built, files):
    plain = safetensors.torch.load_file(files[family, False])
    full = safetensors.torch.load_file(files[family, True])
    assert all(torch.equal(full[k], v) for k, v in plain.items())
    extra = set(full) - set(plain)
    for name in DDPM_EXTRAS:
        assert full[name].shape == (1000,) and full[name].dtype == torch.float32
    assert full["model_ema.decay"].shape == () and full["model_ema.num_updates"].shape == ()
    expected = {*DDPM_EXTRAS, "model_ema.decay", "model_ema.num_updates"}
    if family == "sd1":
        ids = full["cond_stage_model.transformer.text_model.embeddings.position_ids"]
        assert ids.dtype == torch.int64 and torch.equal(ids, torch.arange(77)[None])
        expected.add("cond_stage_model.transformer.text_model.embeddings.position_ids")
    if family == "sd2v":
        config = built[family][1].text_encoder.config
        width, layers, prefix = config.hidden_size, config.num_hidden_layers, OPEN_CLIP_PREFIXES["sd2v"]
        block = {k for k in extra if k.startswith(f"{prefix}transformer.resblocks.{layers}.")}
        assert len(block) == 12
        assert full[f"{prefix}transformer.resblocks.{layers}.attn.in_proj_weight"].shape == (3 * width, width)
        assert f"{prefix}transformer.resblocks.{layers - 1}.attn.in_proj_weight" in plain
        assert full[prefix + "text_projection"].shape == (width, width)
        expected |= block | {prefix + "text_projection"}
    assert extra == expected


def test_ldm_layout_of_the_tiny_topologies(files):
    """Spot checks of the index arithmetic, independent of diffusers' reader."""
    unet = "model.diffusion_model."
    sd1 = safetensors.torch.load_file(files["sd1", False])
    # L=1: level 0 (attention) at input_blocks.1, its downsampler at 2; level 1 (no attention) at 3
    assert sd1[unet + "input_blocks.1.1.proj_in.weight"].shape == (32, 32, 1, 1)  # conv proj_in
    assert unet + "input_blocks.2.0.op.weight" in sd1 and unet + "input_blocks.3.1.norm.weight" not in sd1
    assert unet + "output_blocks.1.1.conv.weight" in sd1  # up block 0 has no attention: upsampler at .1
    assert unet + "output_blocks.2.1.proj_in.weight" in sd1 and unet + "middle_block.2.in_layers.0.weight" in sd1
    assert sd1["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    assert "first_stage_model.decoder.up.1.upsample.conv.weight" in sd1  # reversed: up_blocks.0 is up.1
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in sd1

    sd2 = safetensors.torch.load_file(files["sd2v", False])
    assert sd2[unet + "input_blocks.1.1.proj_in.weight"].shape == (64, 64)  # linear proj_in
    assert unet + "output_blocks.1.2.conv.weight" in sd2  # up block 0 has attention: upsampler at .2
    in_proj = sd2["cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"]
    assert in_proj.shape == (192, 64) and sd2["cond_stage_model.model.positional_embedding"].shape == (77, 64)

    xl = safetensors.torch.load_file(files["sdxl", False])
    # L=2: levels start at input_blocks 1, 4, 7; downsamplers at 3 and 6; the first level has no attention
    assert unet + "input_blocks.1.1.norm.weight" not in xl and unet + "input_blocks.4.1.norm.weight" in xl
    assert unet + "input_blocks.3.0.op.weight" in xl and unet + "input_blocks.6.0.op.weight" in xl
    assert unet + "input_blocks.8.1.transformer_blocks.1.attn2.to_k.weight" in xl  # depth 2 at the last level
    assert unet + "middle_block.1.transformer_blocks.1.attn1.to_q.weight" in xl
    assert unet + "output_blocks.2.2.conv.weight" in xl and unet + "output_blocks.5.2.conv.weight" in xl
    assert unet + "output_blocks.8.1.norm.weight" not in xl and unet + "output_blocks.8.0.skip_connection.weight" in xl
    assert xl[unet + "label_emb.0.0.weight"].shape[1] == 6 * 8 + 96
    assert xl["conditioner.embedders.1.model.text_projection"].shape == (128, 96)  # [W, proj]
    assert xl["conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"].shape == (77, 64)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_models_keep_the_shape_conventions(family, built):
    """What a shape-based loader cannot read from tensors: 32 groups, heads per width, the CLIP vocabulary."""
    pipe = built[family][1]
    for model in (pipe.unet, pipe.vae):
        norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
        assert norms and all(m.num_groups == 32 for m in norms)
    attentions = [m for m in pipe.unet.modules() if isinstance(m, diffusers.models.attention_processor.Attention)]
    assert attentions
    for attention in attentions:
        width = attention.to_q.out_features
        assert attention.heads == (8 if family == "sd1" else width // 64)
    for name in ("text_encoder", "text_encoder_2"):
        if (encoder := getattr(pipe, name, None)) is not None:
            config = encoder.config
            assert config.hidden_size // config.num_attention_heads == 64
            assert (config.vocab_size, config.max_position_embeddings, config.eos_token_id) == (49408, 77, 2)
            assert len(getattr(pipe, name.replace("text_encoder", "tokenizer"))) == 49408
    if family == "sdxl":
        assert pipe.text_encoder.config.hidden_size != pipe.text_encoder_2.config.hidden_size
        assert pipe.vae.config.scaling_factor == 0.13025


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("family", FAMILIES)
def test_dtype_casts_every_float_tensor(family, dtype, built, files, tmp_path):
    path = write_single_file(built[family][0], family, tmp_path / "half.safetensors", dtype=dtype)
    reference = safetensors.torch.load_file(files[family, True])
    with safetensors.safe_open(str(path), framework="pt") as handle:
        assert set(handle.keys()) == set(reference)
        for key in handle.keys():
            tensor = handle.get_tensor(key)
            if reference[key].is_floating_point():
                assert tensor.dtype == dtype, key
                assert torch.equal(tensor, reference[key].to(dtype)), key
            else:
                assert tensor.dtype == reference[key].dtype, key
