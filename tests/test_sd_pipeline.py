"""Stable Diffusion in the local core equals diffusers: whole-pipeline images, per scheduler, seed and variant."""

from __future__ import annotations

import warnings
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from sde_bridge import install_brownian_sampler
from tiny_sd import build_tiny_sd
from typer.testing import CliRunner

import schedcmp.core as core
from schedcmp.cli import app
from schedcmp.core.conditioning import Conditioning
from schedcmp.core.errors import WeightsError
from schedcmp.core.load import load_pipeline
from schedcmp.core.pipeline import to_unit_images
from schedcmp.core.stable_diffusion import StableDiffusionPipeline
from schedcmp.engine import Engine
from schedcmp.plan import build_plan

PROMPT = "a photograph of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"
IMAGE_TOLERANCE = 1e-3  # max abs error on float images in [0, 1]

# (scheduler alias, diffusers class, options, steps)
SCHEDULER_TABLE = [
    ("pndm", "PNDMScheduler", {}, 6),
    ("ddim", "DDIMScheduler", {}, 5),
    ("euler_a", "EulerAncestralDiscreteScheduler", {}, 5),
    ("dpm", "DPMSolverMultistepScheduler", {}, 6),
    ("diffusers:DPM++ 2M Karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, 6),
    ("heun", "HeunDiscreteScheduler", {}, 3),
    ("unipc", "UniPCMultistepScheduler", {}, 5),
    ("ddpm", "DDPMScheduler", {}, 4),
    ("lms", "LMSDiscreteScheduler", {}, 5),
    ("euler", "EulerDiscreteScheduler", {}, 4),
    ("kdpm2", "KDPM2DiscreteScheduler", {}, 3),
    ("kdpm2_a", "KDPM2AncestralDiscreteScheduler", {}, 3),
    ("deis", "DEISMultistepScheduler", {}, 5),
    ("dpm_single", "DPMSolverSinglestepScheduler", {}, 5),
    ("dpm_sde", "DPMSolverSDEScheduler", {}, 3),
    ("edm_euler", "EDMEulerScheduler", {}, 4),
    ("diffusers:DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, 5),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, tuple[Path, diffusers.StableDiffusionPipeline]]:
    """Both tiny variants, saved once per module: (folder, the diffusers pipeline that wrote it)."""
    root = tmp_path_factory.mktemp("tiny-sd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {variant: (root / variant, build_tiny_sd(root / variant, variant)) for variant in ("sd1", "sd2v")}


@pytest.fixture(scope="module")
def ours(tiny) -> dict[str, StableDiffusionPipeline]:
    """Our pipeline for each tiny variant, loaded once."""
    return {variant: load_pipeline(str(folder)) for variant, (folder, _) in tiny.items()}


def share_our_brownian_path(scheduler, seed: int, latent_shape: tuple[int, ...]) -> None:
    """diffusers' SDE scheduler ignores the generator; give it our Brownian path, drawn from a generator in the
    state ours is in after the initial latents (seeded, then one latent-sized draw)."""
    generator = torch.Generator().manual_seed(seed)
    torch.randn(latent_shape, generator=generator)
    install_brownian_sampler(scheduler, generator)


def diffusers_images(pipe, scheduler_cls: str, options: dict, steps: int, seed: int, guidance: float = 7.5):
    """The guide's workflow: swap the scheduler (from the saved model's config, not the last swap's), sample."""
    saved = diffusers.PNDMScheduler.from_pretrained(pipe.config._name_or_path, subfolder="scheduler").config
    pipe.scheduler = getattr(diffusers, scheduler_cls).from_config(saved, **options)
    if scheduler_cls == "DPMSolverSDEScheduler":
        share_our_brownian_path(pipe.scheduler, seed, (1, 4, 16, 16))
    return pipe(
        PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed), output_type="np", height=32, width=32,
    ).images


def our_images(pipeline, names: str, steps: int, seed: int, mode: str = "sequential", guidance: float = 7.5):
    plan = build_plan(None, {
        "prompt": PROMPT, "negative_prompt": NEGATIVE, "schedulers": names, "steps": str(steps), "seed": seed,
        "model": pipeline.name, "size": "32x32", "mode": mode, "guidance": guidance,
    })
    report = Engine(pipeline, plan).run()
    assert [r.status for r in report.results] == ["ok"] * len(report.results)
    return [to_unit_images(pipeline.decode_pixels(r.latents)) for r in report.results]


@pytest.mark.parametrize("variant", ["sd1", "sd2v"])
@pytest.mark.parametrize(("alias", "cls", "options", "steps"), SCHEDULER_TABLE, ids=[row[0] for row in SCHEDULER_TABLE])
def test_images_equal_diffusers(tiny, ours, variant, alias, cls, options, steps) -> None:
    theirs = diffusers_images(tiny[variant][1], cls, options, steps, seed=8)
    (image,) = our_images(ours[variant], alias, steps, seed=8)
    assert np.abs(image - theirs).max() <= IMAGE_TOLERANCE


@pytest.mark.parametrize("seed", [0, 1234])
def test_other_seeds_and_no_guidance_equal_diffusers(tiny, ours, seed) -> None:
    theirs = diffusers_images(tiny["sd1"][1], "EulerDiscreteScheduler", {}, 4, seed=seed, guidance=1.0)
    (image,) = our_images(ours["sd1"], "euler", 4, seed=seed, guidance=1.0)
    assert np.abs(image - theirs).max() <= IMAGE_TOLERANCE


def test_batched_lanes_give_the_sequential_images(ours) -> None:
    sequential = our_images(ours["sd1"], "ddim,euler_a,heun", 4, seed=3)
    batched = our_images(ours["sd1"], "ddim,euler_a,heun", 4, seed=3, mode="batched")
    for a, b in zip(sequential, batched, strict=True):
        assert np.abs(a - b).max() <= IMAGE_TOLERANCE


def test_our_scheduler_dropped_into_the_diffusers_pipeline(tiny) -> None:
    """The guide's swap, with one of our schedulers: diffusers' pipeline gives diffusers' image."""
    _, pipe = tiny["sd1"]
    theirs = diffusers_images(pipe, "DPMSolverMultistepScheduler", {}, 5, seed=8)
    pipe.scheduler = core.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    mixed = pipe(
        PROMPT, negative_prompt=NEGATIVE, num_inference_steps=5, generator=torch.Generator().manual_seed(8),
        output_type="np", height=32, width=32,
    ).images
    assert np.abs(mixed - theirs).max() <= IMAGE_TOLERANCE


def test_prompt_embeddings_equal_diffusers(tiny, ours) -> None:
    theirs, theirs_negative = tiny["sd2v"][1].encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
    cond, uncond = ours["sd2v"].encode_prompt(PROMPT, NEGATIVE)
    assert torch.allclose(cond.embeddings, theirs, atol=1e-5)
    assert torch.allclose(uncond.embeddings, theirs_negative, atol=1e-5)


def test_unet_output_equals_diffusers(tiny, ours) -> None:
    pipe = tiny["sd2v"][1]
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([999.0, 10.5])
    with torch.inference_mode():
        expected = pipe.unet(latents, timesteps, encoder_hidden_states=context).sample
    assert (ours["sd2v"].denoise(latents, timesteps, Conditioning(context)) - expected).abs().max() <= 1e-5


def test_default_size_comes_from_the_unet_and_vae(ours) -> None:
    assert ours["sd1"].default_size == (32, 32)


def test_cli_runs_a_saved_model_folder(tiny, tmp_path: Path) -> None:
    folder, _ = tiny["sd1"]
    result = CliRunner().invoke(app, ["run", "--model", str(folder), "--prompt", PROMPT, "--schedulers",
                                      "ddim,euler", "--steps", "3", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out" / "images").iterdir())) == 2


def test_missing_unet_weights_name_the_file(tiny, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(tiny["sd1"][0], folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WeightsError) as error:
        StableDiffusionPipeline.from_pretrained(folder)
    assert str(error.value) == (
        f"no weights in {folder / 'unet'}: expected diffusion_pytorch_model.safetensors "
        "(or a sharded diffusion_pytorch_model.safetensors.index.json)"
    )


def test_folder_without_model_index(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as error:
        StableDiffusionPipeline.from_pretrained(tmp_path)
    assert str(error.value) == f"{tmp_path} is not a diffusers model folder: it has no model_index.json"


def test_unknown_model_name(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as error:
        load_pipeline("not a model")
    assert str(error.value) == (
        "model 'not a model' is neither 'builtin:shapes', an existing folder, nor a hub id (owner/name)"
    )


def test_hub_id_without_network_says_how_to_pass_a_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as error:
        load_pipeline("nobody-here/no-such-model-xyz")
    assert str(error.value).startswith(
        "cannot fetch 'nobody-here/no-such-model-xyz' from the Hugging Face Hub and it is not in the local cache ("
    )
    assert str(error.value).endswith("download it where there is a network and pass --model /path/to/the/folder")


def test_clip_skip_uses_an_earlier_text_encoder_layer(tiny) -> None:
    folder, _ = tiny["sd1"]
    skipping = load_pipeline(str(folder), clip_skip=1)
    plain = load_pipeline(str(folder))
    ids = plain.tokenizer([PROMPT], max_length=77)
    cond, _ = skipping.encode_prompt(PROMPT, "")
    # encode_prompt encodes [prompt, negative] as one batch of 2, this a batch of 1: the matrix products may sum in
    # another order (BLAS blocking depends on the shape), so equal to float32 rounding, not bit for bit
    torch.testing.assert_close(cond.embeddings, plain.text_encoder(ids, clip_skip=1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(cond.embeddings, plain.encode_prompt(PROMPT, "")[0].embeddings)


def test_list_compatible_reads_only_the_scheduler_config_of_a_folder(tiny, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "only-scheduler"
    shutil.copytree(tiny["sd2v"][0] / "scheduler", folder / "scheduler")
    result = CliRunner().invoke(app, ["show-config", "--model", str(folder), "--as", "euler"])
    assert result.exit_code == 0, result.output
    assert '"prediction_type": "v_prediction"' in result.stdout
