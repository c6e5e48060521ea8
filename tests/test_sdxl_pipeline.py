"""SDXL in the local core equals diffusers' StableDiffusionXLPipeline: the call API, the engine, batched lanes, the
CLI, on a tiny SDXL saved by diffusers (tests/tiny_sdxl.py)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from tiny_sdxl import build_tiny_sdxl
from typer.testing import CliRunner

import schedcmp.core as core
from schedcmp.cli import app
from schedcmp.core.errors import ConfigError
from schedcmp.core.load import load_pipeline
from schedcmp.core.pipeline import to_unit_images
from schedcmp.engine import Engine
from schedcmp.plan import build_plan

PROMPT = "a photo of an astronaut riding a horse"
TOLERANCE = 1e-4  # max abs error on float images in [0, 1]
SIZE = dict(height=32, width=32)

# (diffusers / schedcmp.core class, config options, steps)
SCHEDULERS = [
    ("EulerDiscreteScheduler", {}, 4),
    ("EulerAncestralDiscreteScheduler", {}, 4),
    ("DPMSolverMultistepScheduler", {}, 5),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, 5),
    ("DDIMScheduler", {}, 4),
    ("HeunDiscreteScheduler", {}, 3),
    ("UniPCMultistepScheduler", {}, 4),
    ("LMSDiscreteScheduler", {"use_karras_sigmas": True}, 4),
]

# keyword arguments of a call, each changing one thing against the defaults (negative_prompt None: zeros)
CALLS = {
    "defaults": dict(),
    "negative-text": dict(negative_prompt="blurry, low quality"),
    "negative-empty-is-encoded": dict(negative_prompt=""),
    "negative-prompt-2": dict(negative_prompt="blurry", negative_prompt_2="dark"),
    "prompt-2": dict(prompt_2="an oil painting"),
    "no-guidance": dict(guidance_scale=1.0),
    "guidance-9": dict(guidance_scale=9.0),
    "guidance-rescale": dict(guidance_rescale=0.7, negative_prompt="ugly"),
    "clip-skip": dict(clip_skip=1, negative_prompt="ugly"),
    "non-square": dict(height=48, width=32),
    "prompt-list": dict(prompt=[PROMPT, "a red cube"], negative_prompt=["ugly", "dark"]),
    "images-per-prompt": dict(num_images_per_prompt=2),
    "micro-conditioning": dict(original_size=(512, 768), crops_coords_top_left=(16, 8), target_size=(1024, 1024)),
    "negative-sizes": dict(negative_prompt="ugly", negative_original_size=(256, 256),
                           negative_crops_coords_top_left=(4, 4), negative_target_size=(512, 512)),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sdxl") / "model"


@pytest.fixture(scope="module")
def pair(folder) -> tuple[diffusers.StableDiffusionXLPipeline, core.StableDiffusionXLPipeline]:
    """diffusers' tiny SDXL and ours from the folder it saved."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = build_tiny_sdxl(folder)
    return theirs, core.DiffusionPipeline.from_pretrained(folder)


def swap(pair, name: str, **options) -> None:
    """The guide's swap on both pipelines, from the saved model's scheduler config."""
    theirs, ours = pair
    saved = diffusers.EulerDiscreteScheduler.load_config(theirs.config._name_or_path, subfolder="scheduler")
    theirs.scheduler = getattr(diffusers, name).from_config(saved, **options)
    ours.scheduler = getattr(core, name).from_config(saved, **options)


def both(pair, seed: int = 8, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Each pipeline called the same way from the same seed, as float images."""
    kwargs = {"prompt": PROMPT, "num_inference_steps": 4, **SIZE, **kwargs, "output_type": "np"}
    theirs, ours = pair
    return (theirs(**kwargs, generator=torch.Generator().manual_seed(seed)).images,
            ours(**kwargs, generator=torch.Generator().manual_seed(seed)).images)


def test_folder_loads_as_sdxl_with_its_defaults(pair):
    ours = pair[1]
    assert type(ours) is core.StableDiffusionXLPipeline
    assert ours.default_size == (32, 32) and ours.default_guidance == 5.0 and ours.force_zeros_for_empty_prompt


@pytest.mark.parametrize(("name", "options", "steps"), SCHEDULERS,
                         ids=[f"{n}{'-karras' if o else ''}" for n, o, _ in SCHEDULERS])
def test_call_equals_diffusers_per_scheduler(pair, name, options, steps):
    swap(pair, name, **options)
    theirs, ours = both(pair, num_inference_steps=steps)
    assert np.abs(ours - theirs).max() <= TOLERANCE


@pytest.mark.parametrize("seed", [0, 1234])
def test_other_seeds_equal_diffusers(pair, seed):
    swap(pair, "EulerDiscreteScheduler")
    theirs, ours = both(pair, seed=seed)
    assert np.abs(ours - theirs).max() <= TOLERANCE


@pytest.mark.parametrize("call", list(CALLS))
def test_call_arguments_equal_diffusers(pair, call):
    swap(pair, "EulerDiscreteScheduler")
    theirs, ours = both(pair, **CALLS[call])
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_uint8_images_are_within_one_level_of_diffusers(pair):
    swap(pair, "DPMSolverMultistepScheduler")
    theirs, ours = (p(PROMPT, num_inference_steps=5, generator=torch.Generator().manual_seed(1), **SIZE).images[0]
                    for p in pair)
    assert ours.size == theirs.size == (32, 32)
    assert np.abs(np.asarray(ours, dtype=int) - np.asarray(theirs, dtype=int)).max() <= 1


def test_negative_prompt_none_is_zeros_and_empty_text_is_not(pair):
    ours = pair[1]
    cond = ours._encode([PROMPT], [PROMPT], None)
    zeros = ours._negative(cond, None, None, None)
    assert not zeros.embeddings.any() and not zeros.pooled.any()
    assert ours._negative(cond, [""], None, None).embeddings.abs().sum() > 0


def test_prompt_embeddings_equal_diffusers(pair):
    theirs, ours = pair
    expected = theirs.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
                                    negative_prompt="ugly")
    cond = ours._encode([PROMPT], [PROMPT], None)
    uncond = ours._negative(cond, ["ugly"], None, None)
    for actual, wanted in zip((cond.embeddings, uncond.embeddings, cond.pooled, uncond.pooled), expected,
                              strict=True):
        torch.testing.assert_close(actual, wanted, rtol=1e-5, atol=1e-5)


def test_step_callback_gets_sdxl_tensors_as_diffusers(pair):
    swap(pair, "EulerDiscreteScheduler")
    names = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"]
    seen = {"theirs": [], "ours": []}

    def record(who):
        def callback(pipeline, i, t, tensors):
            seen[who].append([tuple(tensors[n].shape) for n in names] + [tensors["add_time_ids"].tolist()])
            return {"add_text_embeds": tensors["add_text_embeds"] * 2} if i == 0 else {}
        return callback

    theirs, ours = (p(PROMPT, num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(2),
                      callback_on_step_end=record(who), callback_on_step_end_tensor_inputs=names, **SIZE).images
                    for p, who in zip(pair, ("theirs", "ours"), strict=True))
    assert seen["ours"] == seen["theirs"] and len(seen["ours"]) == 3
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_return_dict_false_gives_diffusers_one_tuple(pair):
    (images,) = pair[1](PROMPT, num_inference_steps=1, return_dict=False, **SIZE)
    assert len(images) == 1


def test_force_zeros_off_encodes_the_empty_negative_prompt(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = build_tiny_sdxl(tmp_path / "model", seed=1, force_zeros_for_empty_prompt=False)
    ours = core.StableDiffusionXLPipeline.from_pretrained(tmp_path / "model")
    assert not ours.force_zeros_for_empty_prompt
    theirs_image, ours_image = both((theirs, ours))
    assert np.abs(ours_image - theirs_image).max() <= TOLERANCE


# ------------------------------------------------------------------------------------------------ the engine


def engine_images(pipeline, names: str, steps: int, mode: str = "sequential", **plan) -> list[np.ndarray]:
    plan = build_plan(None, {"prompt": PROMPT, "schedulers": names, "steps": str(steps), "seed": 8,
                             "model": pipeline.name, "size": "32x32", "mode": mode, **plan})
    report = Engine(pipeline, plan).run()
    assert [r.status for r in report.results] == ["ok"] * len(report.results)
    return [to_unit_images(pipeline.decode_pixels(r.latents)) for r in report.results]


@pytest.mark.parametrize(("alias", "cls", "options"), [
    ("euler", "EulerDiscreteScheduler", {}),
    ("diffusers:DPM++ 2M Karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    ("euler_a", "EulerAncestralDiscreteScheduler", {}),
])
def test_engine_runs_equal_diffusers_calls(pair, alias, cls, options):
    swap(pair, cls, **options)
    (image,) = engine_images(pair[1], alias, 4)
    theirs = pair[0](PROMPT, num_inference_steps=4, generator=torch.Generator().manual_seed(8), output_type="np",
                     **SIZE).images
    assert np.abs(image - theirs).max() <= TOLERANCE


def test_engine_uses_the_model_default_guidance(pair):
    plan = build_plan(None, {"prompt": PROMPT, "schedulers": "euler", "steps": "2", "model": pair[1].name})
    assert Engine(pair[1], plan).plan.guidance == 5.0


def test_batched_lanes_give_the_sequential_images(pair):
    names = "ddim,euler_a,heun,dpm"
    sequential = engine_images(pair[1], names, 4, negative_prompt="ugly")
    batched = engine_images(pair[1], names, 4, mode="batched", negative_prompt="ugly")
    for a, b in zip(sequential, batched, strict=True):
        assert np.abs(a - b).max() <= 1e-5


def test_engine_warns_about_karras_sigmas_narrowed_by_leading_spacing(pair):
    plan = build_plan(None, {"prompt": PROMPT, "schedulers": "diffusers:LMS Karras", "steps": "20",
                             "model": pair[1].name})
    with pytest.warns(UserWarning, match=r'^run 1 \(diffusers:LMS Karras, 20 steps\): the karras sigmas span 11\.03 -> 0\.041, '
                                         r'bounded by timestep_spacing "leading" instead of the training range '
                                         r"14\.61 -> 0\.029"):
        Engine(pair[1], plan)


def test_fp16_loads_with_the_vae_kept_in_fp32(folder, pair):
    half = load_pipeline(str(folder), dtype=torch.float16)
    assert half.dtype == torch.float16 and next(half.vae.parameters()).dtype == torch.float32
    assert next(half.text_encoder_2.parameters()).dtype == torch.float16


# ------------------------------------------------------------------------------------------------ the CLI


def test_cli_runs_an_sdxl_folder_sequential_and_batched(pair, folder, tmp_path):
    for mode in ("sequential", "batched"):
        out = tmp_path / mode
        result = CliRunner().invoke(app, ["run", "--model", str(folder), "--prompt", PROMPT, "--schedulers",
                                          "ddim,euler,DPM++ 2M Karras", "--steps", "3", f"--{mode}",
                                          "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert len(list((out / "images").iterdir())) == 3
        assert json.loads((out / "results.json").read_text())["plan"]["guidance"] == 5.0


def test_list_compatible_warns_which_names_have_narrowed_grids(folder, pair):
    result = CliRunner().invoke(app, ["list-compatible", "--model", str(folder)])
    assert result.exit_code == 0, result.output
    assert ("warning: diffusers:LMS Karras, diffusers:DPM2 Karras, diffusers:DPM2 a Karras, diffusers:DPM++ SDE Karras "
            "at 20 steps on this model: the karras "
            'sigmas span 11.03 -> 0.041, bounded by timestep_spacing "leading"') in " ".join(result.stderr.split())


def test_show_config_reads_the_sdxl_scheduler_config(folder, pair):
    result = CliRunner().invoke(app, ["show-config", "--model", str(folder)])
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)
    assert (config["_class_name"], config["timestep_spacing"]) == ("EulerDiscreteScheduler", "leading")


# ------------------------------------------------------------------------------------------------ refusals


def test_encoders_that_do_not_fit_the_unet_are_refused(pair):
    _, ours = pair
    with pytest.raises(ConfigError, match=r"the text encoders' widths add up to 64, the UNet's cross_attention_dim "
                                          r"is 96$"):
        core.StableDiffusionXLPipeline(ours.tokenizer, ours.tokenizer_2, ours.text_encoder, ours.text_encoder,
                                       ours.unet, ours.vae, ours.scheduler)


def test_prompt_2_list_of_another_length_is_refused(pair):
    with pytest.raises(ConfigError, match=r"^prompt_2 has 3 entries for 1 prompts$"):
        pair[1](PROMPT, prompt_2=["a", "b", "c"], num_inference_steps=1, **SIZE)


def test_vae_overflowing_in_fp16_decodes_again_in_fp32_with_a_warning(folder, pair):
    half = load_pipeline(str(folder), dtype=torch.float16)
    half.vae.half()  # as a VAE whose config says force_upcast: false (the fp16-fix VAEs) is loaded
    with torch.no_grad():
        half.vae.decoder.conv_in.weight.mul_(3e4)  # activations beyond fp16's 65504: inf, then NaN in the norms
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float16)
    with pytest.warns(UserWarning, match=r"the VAE decoded NaN in float16; decoding in fp32 from now on$"):
        pixels = half.decode_pixels(latents)
    assert torch.isfinite(pixels).all() and next(half.vae.parameters()).dtype == torch.float32
