"""Single-file checkpoints: tiny SD 1.x, SD 2.x-v and SDXL models written in the original (LDM/SGM) layout by
tests/single_file_writer.py load with their architecture read from the tensors and give diffusers' images."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from single_file_writer import build_tiny, convert_vae, load_component, write_single_file
from typer.testing import CliRunner

import schedcmp.core as core
from schedcmp.cli import app
from schedcmp.core.errors import ConfigError, WeightsError
from schedcmp.core.load import load_pipeline, load_scheduler_config

PROMPT = "a photo of an astronaut riding a horse"
TOLERANCE = 1e-4  # max abs error on float images in [0, 1]
SIZE = dict(height=64, width=64)
FAMILIES = {"sd1": core.StableDiffusionPipeline, "sd2v": core.StableDiffusionPipeline,
            "sdxl": core.StableDiffusionXLPipeline}
# (diffusers / schedcmp.core class, config options, steps)
SCHEDULERS = [
    ("EulerDiscreteScheduler", {}, 3),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, 4),
    ("DDIMScheduler", {}, 3),
    ("EulerAncestralDiscreteScheduler", {}, 3),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[diffusers.DiffusionPipeline, Path]]:
    """Per family: diffusers' tiny pipeline and its single file (fp32)."""
    root = tmp_path_factory.mktemp("single-file")
    built = {}
    for family in FAMILIES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = build_tiny(family, root / family)
        write_single_file(root / family, family, root / f"{family}.safetensors")
        built[family] = (pipe, root / f"{family}.safetensors")
    return built


def ours_of(models, family: str, **kwargs):
    prediction = {"prediction_type": "v_prediction"} if family == "sd2v" else {}
    return FAMILIES[family].from_single_file(models[family][1], **prediction, **kwargs)


def images(pipe, base: dict, scheduler: str, options: dict, steps: int, **kwargs) -> np.ndarray:
    """The pipeline's image with ``scheduler`` swapped in from ``base``: the family's published scheduler config,
    which a file does not carry (diffusers' from_single_file fetches it from the Hub)."""
    module = core if isinstance(pipe, core.DiffusionPipeline) else diffusers
    pipe.scheduler = getattr(module, scheduler).from_config(base, **options)
    return pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(3), output_type="np",
                **SIZE, **kwargs).images


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize(("scheduler", "options", "steps"), SCHEDULERS, ids=[f"{s}{'-karras' if o else ''}"
                                                                             for s, o, _ in SCHEDULERS])
def test_single_file_gives_diffusers_images(models, family, scheduler, options, steps):
    theirs = models[family][0]
    ours = ours_of(models, family)
    base = dict(ours.scheduler.config)
    expected = images(theirs, base, scheduler, options, steps, negative_prompt="ugly")
    assert np.abs(images(ours, base, scheduler, options, steps, negative_prompt="ugly") - expected).max() <= TOLERANCE


@pytest.mark.parametrize("family", list(FAMILIES))
def test_weights_equal_the_folder_they_were_written_from(models, family):
    theirs, _ = models[family]
    ours = ours_of(models, family)
    for name, module in ours.modules().items():
        reference = getattr(theirs, name).state_dict()
        for key, tensor in module.state_dict().items():
            wanted = reference[key] if key in reference else reference[key.removeprefix("text_model.")]
            assert torch.equal(tensor, wanted), (name, key)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_files_load_in_the_asked_dtype(models, tmp_path, dtype):
    file = tmp_path / "half.safetensors"
    write_single_file(models["sd1"][1].parent / "sd1", "sd1", file, dtype=dtype)
    ours = core.StableDiffusionPipeline.from_single_file(file)
    assert ours.dtype == torch.float32 and next(ours.unet.parameters()).dtype == torch.float32
    stored = load_file(file)["model.diffusion_model.out.2.weight"]
    assert torch.equal(ours.unet.conv_out.weight, stored.float())


def test_the_architecture_is_read_from_the_tensors(models):
    ours = ours_of(models, "sdxl")
    config = ours.unet.config
    assert config.block_out_channels == (32, 64, 128) and config.transformer_layers_per_block == (1, 1, 2)
    assert config.addition_embed_type == "text_time" and config.cross_attention_dim == 64 + 128
    assert ours.text_encoder.config.hidden_size == 64 and ours.text_encoder_2.config.hidden_size == 128
    assert ours.vae.config.scaling_factor == 0.13025


def test_diffusion_pipeline_picks_the_class_from_the_file(models):
    assert type(core.DiffusionPipeline.from_single_file(models["sdxl"][1])) is core.StableDiffusionXLPipeline
    assert type(load_pipeline(str(models["sd1"][1]))) is core.StableDiffusionPipeline


def test_the_other_family_s_class_is_named(models):
    path = models["sdxl"][1]
    with pytest.raises(WeightsError, match=(rf"^{path} is an SDXL checkpoint; load it with "
                                            r"StableDiffusionXLPipeline.from_single_file or ")):
        core.StableDiffusionPipeline.from_single_file(path)


def test_sd2_without_prediction_type_assumes_v_with_a_warning(models):
    with pytest.warns(UserWarning, match=r"^sd2v.safetensors: an SD 2.x file does not say what its UNet predicts; "
                                         r"assuming v_prediction"):
        ours = core.StableDiffusionPipeline.from_single_file(models["sd2v"][1])
    assert ours.scheduler.config.prediction_type == "v_prediction" and ours.unet.config.sample_size == 96


def test_sd2_epsilon_when_asked(models):
    ours = core.StableDiffusionPipeline.from_single_file(models["sd2v"][1], prediction_type="epsilon")
    assert ours.scheduler.config.prediction_type == "epsilon" and ours.unet.config.sample_size == 64


def test_unknown_prediction_type_is_refused(models):
    with pytest.raises(ConfigError, match=r"^prediction_type 'x' is not one of epsilon, v_prediction$"):
        core.StableDiffusionPipeline.from_single_file(models["sd1"][1], prediction_type="x")


def test_list_compatible_reads_the_family_scheduler_config(models):
    assert load_scheduler_config(str(models["sdxl"][1]))["timestep_spacing"] == "leading"


def test_cli_runs_a_single_file(models, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--model", str(models["sd2v"][1]), "--prompt", PROMPT, "--schedulers",
                                      "ddim,euler", "--steps", "2", "--size", "64x64", "--prediction-type",
                                      "v_prediction", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "results.json").read_text())
    assert record["plan"]["prediction_type"] == "v_prediction" and len(list((out / "images").iterdir())) == 2


# ------------------------------------------------------------------------------------------------ refusals


def write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, str(path))
    return path


def test_lora_is_refused(tmp_path):
    path = write(tmp_path / "lora.safetensors", {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)})
    with pytest.raises(WeightsError, match=rf"^{path} is a LoRA \(an add-on to a model, not a model\); supported: "):
        core.DiffusionPipeline.from_single_file(path)


def test_random_keys_are_refused(tmp_path):
    path = write(tmp_path / "random.safetensors", {"a.b": torch.zeros(2), "c": torch.zeros(3)})
    with pytest.raises(WeightsError, match=(rf"^{path} is not a Stable Diffusion checkpoint: none of its 2 keys is "
                                            r"a UNet key \(model.diffusion_model.\*\); supported: SD 1.x, SD 2.x")):
        core.DiffusionPipeline.from_single_file(path)


def test_truncated_file_is_refused(models, tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(models["sd1"][1].read_bytes()[:5000])
    with pytest.raises(WeightsError, match=rf"^{path} is not a readable safetensors file \("):
        core.DiffusionPipeline.from_single_file(path)


def test_inpainting_unet_is_refused(models, tmp_path):
    tensors = load_file(models["sd1"][1])
    tensors["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, 9, 3, 3)
    path = write(tmp_path / "inpainting.safetensors", tensors)
    with pytest.raises(WeightsError, match=rf"^{path} is an inpainting model \(its UNet takes 9 input channels"):
        core.DiffusionPipeline.from_single_file(path)


def test_refiner_is_refused(models, tmp_path):
    tensors = {k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v
               for k, v in load_file(models["sdxl"][1]).items() if not k.startswith("conditioner.embedders.0.")}
    path = write(tmp_path / "refiner.safetensors", tensors)
    with pytest.raises(WeightsError, match=rf"^{path} is an SDXL refiner \(an img2img model"):
        core.DiffusionPipeline.from_single_file(path)


def test_a_missing_tensor_is_named(models, tmp_path):
    tensors = load_file(models["sd1"][1])
    del tensors["model.diffusion_model.out.0.bias"]
    path = write(tmp_path / "pruned.safetensors", tensors)
    with pytest.raises(WeightsError, match=(rf"^{path}: its UNet does not fit the architecture its tensors "
                                            r"describe: missing 1 keys \(model.diffusion_model.out.0.bias\)$")):
        core.DiffusionPipeline.from_single_file(path)


def test_pickled_file_needs_allow_pickle(models, tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(models["sd1"][1])}, path)
    with pytest.raises(WeightsError, match=rf"^{path} is a pickled checkpoint, which can run code when loaded"):
        core.DiffusionPipeline.from_single_file(path)
    ours = core.DiffusionPipeline.from_single_file(path, allow_pickle=True)
    assert type(ours) is core.StableDiffusionPipeline


# ------------------------------------------------------------------------------------------------ --vae, the record


@pytest.fixture(scope="module")
def other_vae(models, tmp_path_factory) -> tuple[diffusers.AutoencoderKL, Path, Path]:
    """Another tiny SD1's VAE: its diffusers model, a standalone LDM-layout file (as A1111's VAE files are:
    no prefix) and its diffusers folder."""
    root = tmp_path_factory.mktemp("vae")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = build_tiny("sd1", root / "other", seed=1)
    weights, config = load_component(root / "other", "vae")
    standalone = {key.removeprefix("first_stage_model."): value for key, value in convert_vae(weights, config).items()}
    return other.vae, write(root / "vae-ft.safetensors", standalone), root / "other" / "vae"


@pytest.mark.parametrize("kind", ["ldm-file", "diffusers-folder"])
def test_vae_swap_decodes_with_the_other_vae_as_diffusers_does(models, other_vae, kind):
    theirs, file = models["sd1"]
    vae = other_vae[1] if kind == "ldm-file" else other_vae[2]
    ours = load_pipeline(str(file), vae=str(vae))
    for key, tensor in ours.vae.state_dict().items():
        assert torch.equal(tensor, other_vae[0].state_dict()[key]), key
    original = theirs.vae
    try:
        theirs.vae = other_vae[0]
        base = dict(ours.scheduler.config)
        expected = images(theirs, base, "EulerDiscreteScheduler", {}, 3)
    finally:
        theirs.vae = original
    assert np.abs(images(ours, base, "EulerDiscreteScheduler", {}, 3) - expected).max() <= TOLERANCE


def test_a_file_without_a_vae_is_refused_as_vae(models, tmp_path):
    path = write(tmp_path / "nothing.safetensors", {"x": torch.zeros(2)})
    with pytest.raises(WeightsError, match=rf"^{path} is not a VAE: it has neither encoder.down.0.block.0.conv1.weight"):
        load_pipeline(str(models["sd1"][1]), vae=str(path))


def test_builtin_shapes_has_no_vae_to_swap(other_vae):
    with pytest.raises(ConfigError, match=r"^--vae applies to latent-diffusion models; builtin:shapes has no VAE$"):
        load_pipeline("builtin:shapes", vae=str(other_vae[1]))


def test_the_record_names_the_file_its_hash_and_what_was_inferred(models, other_vae, tmp_path):
    from PIL import Image

    file = models["sdxl"][1]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--model", str(file), "--prompt", PROMPT, "--schedulers", "euler",
                                      "--steps", "2", "--size", "64x64", "--out", str(out)])
    assert result.exit_code == 0, result.output
    provenance = json.loads((out / "results.json").read_text())["environment"]["provenance"]
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    assert (provenance["file"], provenance["sha256"], provenance["hash"]) == (str(file), digest, digest[:10])
    assert provenance["family"] == "SDXL" and provenance["prediction_type"] == "epsilon"
    assert provenance["inferred"]["unet"]["transformer_layers_per_block"] == [1, 1, 2]
    (image,) = (out / "images").iterdir()
    assert f"Model hash: {digest[:10]}, Model: {file}" in Image.open(image).text["parameters"]


def test_the_record_names_a_swapped_vae(models, other_vae, tmp_path):
    from PIL import Image

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--model", str(models["sd1"][1]), "--vae", str(other_vae[1]),
                                      "--prompt", PROMPT, "--schedulers", "euler", "--steps", "2", "--size", "64x64",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "results.json").read_text())
    digest = hashlib.sha256(other_vae[1].read_bytes()).hexdigest()
    assert record["plan"]["vae"] == str(other_vae[1])
    assert record["environment"]["provenance"]["vae"] == {"file": str(other_vae[1]), "sha256": digest,
                                                          "hash": digest[:10]}
    (image,) = (out / "images").iterdir()
    assert f"VAE hash: {digest[:10]}, VAE: vae-ft.safetensors, Model: " in Image.open(image).text["parameters"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_scheduler_gives_the_images_of_the_folder_it_was_written_from(models, family, tmp_path):
    """The folder pipeline equals diffusers for every scheduler (tests/test_sd_pipeline.py, test_sdxl_pipeline.py);
    the single file, with the same weights and scheduler config, gives its latents through the CLI's engine (batched)
    to float rounding (SDXL's pooled projection is stored transposed: its product may round differently)."""
    from schedcmp.core.schedulers import ALIASES
    from schedcmp.engine import Engine
    from schedcmp.plan import build_plan

    ours = ours_of(models, family)
    folder = core.DiffusionPipeline.from_pretrained(models[family][1].parent / family)
    folder.scheduler = ours.scheduler
    names = ",".join(alias.name for alias in ALIASES if alias.name != "edm_euler")
    plan = build_plan(None, {"prompt": PROMPT, "schedulers": names, "steps": "3", "size": "64x64", "mode": "batched",
                             "negative_prompt": "ugly", "reference": "none"})
    from_file, from_folder = (Engine(pipeline, plan).run().results for pipeline in (ours, folder))
    assert [r.status for r in from_file] == ["ok"] * len(from_file)
    for a, b in zip(from_file, from_folder, strict=True):
        assert (a.latents - b.latents).abs().max() <= 1e-4 * b.latents.abs().max(), (a.spec.label, float((a.latents - b.latents).abs().max()))
