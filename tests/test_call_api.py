"""The diffusers call API on schedcmp.core pipelines: ``DiffusionPipeline.from_pretrained``, ``.to``, calling the
pipeline with a prompt, equal to diffusers' ``StableDiffusionPipeline.__call__`` on a tiny saved model."""

from __future__ import annotations

import warnings
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image
from tiny_sd import build_tiny_sd

import schedcmp.core as core
from schedcmp.core.builtin import ShapesPipeline
from schedcmp.core.errors import ConfigError
from schedcmp.engine import Engine
from schedcmp.plan import build_plan

PROMPT = "a photograph of an astronaut riding a horse"
TOLERANCE = 1e-4  # max abs error on float images in [0, 1]
SIZE = dict(height=32, width=32)

# (diffusers / schedcmp.core class, steps): schedulers with and without eta / generator in their step
SCHEDULERS = [
    ("PNDMScheduler", 5),
    ("DDIMScheduler", 4),
    ("EulerAncestralDiscreteScheduler", 4),
    ("DPMSolverMultistepScheduler", 5),
    ("HeunDiscreteScheduler", 3),
    ("LMSDiscreteScheduler", 4),
    ("DDPMScheduler", 3),
    ("UniPCMultistepScheduler", 4),
]

# keyword arguments of a call, each changing one thing against the defaults
CALLS = {
    "negative-text": dict(negative_prompt="blurry, low quality"),
    "no-guidance": dict(guidance_scale=1.0),
    "guidance-5": dict(guidance_scale=5.0),
    "guidance-rescale": dict(guidance_rescale=0.7),
    "prompt-list": dict(prompt=[PROMPT, "a red cube"], negative_prompt=["ugly", "dark"]),
    "images-per-prompt": dict(num_images_per_prompt=2, negative_prompt="ugly"),
    "non-square": dict(height=48, width=32),
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[diffusers.StableDiffusionPipeline, core.StableDiffusionPipeline]:
    """diffusers' tiny SD 1.x pipeline and ours from the folder it saved."""
    folder = tmp_path_factory.mktemp("call") / "sd1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = build_tiny_sd(folder, "sd1")
    return theirs, core.DiffusionPipeline.from_pretrained(folder)


def swap(pair, name: str, **options) -> None:
    """The guide's swap on both pipelines: a scheduler class from the current scheduler's config."""
    theirs, ours = pair
    theirs.scheduler = getattr(diffusers, name).from_config(theirs.scheduler.config, **options)
    ours.scheduler = getattr(core, name).from_config(ours.scheduler.config, **options)


def both(pair, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Each pipeline called the same way from the same seed, as float images."""
    kwargs = {"prompt": PROMPT, "num_inference_steps": 4, **SIZE, **kwargs, "output_type": "np"}
    theirs, ours = pair
    return (theirs(**kwargs, generator=torch.Generator().manual_seed(8)).images,
            ours(**kwargs, generator=torch.Generator().manual_seed(8)).images)


def test_from_pretrained_on_the_base_class_picks_the_class_from_model_index(pair):
    assert type(pair[1]) is core.StableDiffusionPipeline


@pytest.mark.parametrize(("name", "steps"), SCHEDULERS, ids=[name for name, _ in SCHEDULERS])
def test_call_equals_diffusers_per_scheduler(pair, name, steps):
    swap(pair, name)
    theirs, ours = both(pair, num_inference_steps=steps)
    assert ours.shape == theirs.shape == (1, 32, 32, 3)
    assert np.abs(ours - theirs).max() <= TOLERANCE


@pytest.mark.parametrize("call", list(CALLS))
def test_call_arguments_equal_diffusers(pair, call):
    swap(pair, "EulerDiscreteScheduler")
    theirs, ours = both(pair, **CALLS[call])
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_clip_skip_applies_to_the_prompt_only_as_in_diffusers(pair):
    """diffusers 0.42's own clip_skip path fails on transformers 5 (it reads a ``text_model`` the flattened
    CLIPTextModel no longer has), so it is given its recipe's embeddings: the final LayerNorm of the hidden states one
    layer from the end; the negative prompt is encoded without skipping."""
    swap(pair, "EulerDiscreteScheduler")
    theirs, ours = pair
    ids = theirs.tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = theirs.text_encoder(ids.input_ids, output_hidden_states=True).hidden_states[-2]
        skipped = theirs.text_encoder.final_layer_norm(hidden)
    expected = theirs(prompt_embeds=skipped, num_inference_steps=4, output_type="np", **SIZE,
                      generator=torch.Generator().manual_seed(8)).images
    actual = ours(PROMPT, clip_skip=1, num_inference_steps=4, output_type="np", **SIZE,
                  generator=torch.Generator().manual_seed(8)).images
    plain = ours(PROMPT, num_inference_steps=4, output_type="np", **SIZE, generator=torch.Generator().manual_seed(8))
    assert np.abs(actual - expected).max() <= TOLERANCE
    assert np.abs(actual - plain.images).max() > 1e-3


def test_eta_reaches_ddim_as_in_diffusers(pair):
    swap(pair, "DDIMScheduler")
    theirs, ours = both(pair, eta=1.0)
    _, deterministic = both(pair, eta=0.0)
    assert np.abs(ours - theirs).max() <= TOLERANCE
    assert np.abs(ours - deterministic).max() > 0.01


def test_given_latents_are_scaled_by_init_noise_sigma(pair):
    swap(pair, "EulerDiscreteScheduler")
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    theirs, ours = both(pair, latents=latents)
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_uint8_images_are_within_one_level_of_diffusers(pair):
    swap(pair, "DPMSolverMultistepScheduler")
    theirs, ours = (p(PROMPT, num_inference_steps=5, generator=torch.Generator().manual_seed(1), **SIZE).images[0]
                    for p in pair)
    assert isinstance(ours, Image.Image) and ours.size == (32, 32) and ours.mode == "RGB"
    assert np.abs(np.asarray(ours, dtype=int) - np.asarray(theirs, dtype=int)).max() <= 1


@pytest.mark.parametrize(("output_type", "shape"), [("np", (1, 32, 32, 3)), ("pt", (1, 3, 32, 32)),
                                                     ("latent", (1, 4, 16, 16))])
def test_output_types_have_diffusers_shapes(pair, output_type, shape):
    theirs, ours = (p(PROMPT, num_inference_steps=2, output_type=output_type, **SIZE).images for p in pair)
    assert tuple(ours.shape) == tuple(theirs.shape) == shape
    assert type(ours) is type(theirs)


def test_return_dict_false_gives_the_tuple(pair):
    images, nsfw = pair[1](PROMPT, num_inference_steps=2, return_dict=False, **SIZE)
    assert len(images) == 1 and isinstance(images[0], Image.Image) and nsfw is None


def test_unknown_output_type_is_refused(pair):
    with pytest.raises(ValueError, match=r"^output_type 'jpeg' is not one of 'pil', 'np', 'pt', 'latent'$"):
        pair[1](PROMPT, num_inference_steps=1, output_type="jpeg", **SIZE)


def test_step_callback_sees_diffusers_tensors_and_can_replace_the_latents(pair):
    swap(pair, "EulerDiscreteScheduler")
    seen: dict[str, list] = {"theirs": [], "ours": []}

    def halve(who):
        def callback(pipeline, i, t, tensors):
            seen[who].append((i, float(t), tuple(tensors["prompt_embeds"].shape)))
            return {"latents": tensors["latents"] * 0.5} if i == 1 else {}
        return callback

    names = ["latents", "prompt_embeds"]
    theirs, ours = (p(PROMPT, num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(2),
                      callback_on_step_end=halve(who), callback_on_step_end_tensor_inputs=names, **SIZE).images
                    for p, who in zip(pair, ("theirs", "ours"), strict=True))
    assert seen["ours"] == seen["theirs"] and len(seen["ours"]) == 3
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_interrupt_skips_the_remaining_steps(pair):
    calls = []

    def stop_after_first(pipeline, i, t, tensors):
        calls.append(i)
        pipeline._interrupt = True
        return {}

    pair[1](PROMPT, num_inference_steps=4, callback_on_step_end=stop_after_first, **SIZE)
    assert calls == [0] and pair[1].num_timesteps == 4 and pair[1].interrupt


def test_unknown_callback_tensor_is_refused(pair):
    with pytest.raises(ValueError, match=(r"^callback_on_step_end_tensor_inputs: noise not available; "
                                          r"allowed: latents, prompt_embeds, negative_prompt_embeds$")):
        pair[1](PROMPT, callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["noise"], **SIZE)


def test_prompt_lists_of_other_lengths_are_refused(pair):
    with pytest.raises(ConfigError, match=r"^negative_prompt has 3 entries for 2 prompts$"):
        pair[1]([PROMPT, PROMPT], negative_prompt=["a", "b", "c"], num_inference_steps=1, **SIZE)


def test_to_returns_the_pipeline_and_moves_every_module(pair):
    _, ours = pair
    assert ours.to("cpu") is ours and ours.device == torch.device("cpu")
    try:
        assert ours.to(torch.float64) is ours and ours.dtype == torch.float64
        assert {p.dtype for module in ours.modules().values() for p in module.parameters()} == {torch.float64}
    finally:
        ours.to(torch.float32)


def test_to_refuses_what_is_not_a_device_or_dtype(pair):
    with pytest.raises(TypeError, match=r"^to\(\) takes a device and/or a dtype, got 3$"):
        pair[1].to(3)


def test_torch_dtype_loads_in_that_dtype(pair):
    ours = core.StableDiffusionPipeline.from_pretrained(pair[0].config._name_or_path, torch_dtype=torch.bfloat16)
    assert ours.dtype == torch.bfloat16 and next(ours.text_encoder.parameters()).dtype == torch.bfloat16


def test_scheduler_config_prints_as_diffusers_frozen_dict(pair):
    ours = pair[1]
    swap(pair, "PNDMScheduler")
    # _use_default_values is a list in set order in diffusers: compare the rest of the text
    shown = [repr({k: v for k, v in p.scheduler.config.items() if k != "_use_default_values"}) for p in pair]
    assert repr(ours.scheduler.config).startswith("FrozenDict([('num_train_timesteps', 1000), ")
    assert shown[0] == shown[1]
    assert repr(core.FrozenDict({"a": [1, 2]})) == repr(diffusers.configuration_utils.FrozenDict({"a": [1, 2]}))


# ------------------------------------------------------------------------------------------ builtin:shapes


@pytest.mark.parametrize("scheduler", ["EulerDiscreteScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler"])
def test_builtin_shapes_call_equals_the_engine_run(scheduler):
    pipeline = core.DiffusionPipeline.from_pretrained("builtin:shapes")
    pipeline.scheduler = getattr(core, scheduler).from_config(pipeline.scheduler.config)
    called = pipeline("a red circle", num_inference_steps=6, generator=torch.Generator().manual_seed(4),
                      output_type="pt").images
    alias = {"EulerDiscreteScheduler": "euler", "DDIMScheduler": "ddim", "DPMSolverMultistepScheduler": "dpm"}
    plan = build_plan(None, {"prompt": "a red circle", "schedulers": alias[scheduler], "steps": "6", "seed": 4,
                             "reference": "none"})
    (result,) = Engine(ShapesPipeline(), plan).run().results
    assert torch.allclose(called, (result.latents / 2 + 0.5).clamp(0, 1), atol=1e-6)


def test_builtin_shapes_draws_only_its_size():
    with pytest.raises(ConfigError, match=r"^builtin:shapes draws its data set at 64x64; got size 32x32 "):
        ShapesPipeline()("a star", height=32, width=32)


def test_diffusion_pipeline_from_pretrained_refuses_a_folder_of_another_kind(tmp_path: Path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    with pytest.raises(core.SchedcmpError, match=(
        rf"^{tmp_path}: model_index.json names 'FluxPipeline'; supported: StableDiffusionPipeline, "
        "StableDiffusionXLPipeline$")):
        core.DiffusionPipeline.from_pretrained(tmp_path)
