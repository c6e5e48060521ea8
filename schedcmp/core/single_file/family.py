"""Which model a checkpoint file holds, told from its key names alone (the way ComfyUI's model detection works),
and one line for every file that is not a model this loader builds."""

from __future__ import annotations

from ..errors import WeightsError
from .checkpoint import Checkpoint
from .keys import UNET_PREFIX

# family -> the key of its text encoder that tells it apart
CLIP_L_SD1 = "cond_stage_model.transformer.text_model."
OPEN_CLIP_SD2 = "cond_stage_model.model."
CLIP_L_SDXL = "conditioner.embedders.0.transformer.text_model."
OPEN_CLIP_SDXL = "conditioner.embedders.1.model."
OPEN_CLIP_REFINER = "conditioner.embedders.0.model."
FAMILIES = ("sd1", "sd2", "sdxl")
FAMILY_NAMES = {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "SDXL"}
SUPPORTED = "supported: SD 1.x, SD 2.x and SDXL base checkpoints (and their fine-tunes)"


def _refuse(checkpoint: Checkpoint, what: str) -> WeightsError:
    return WeightsError(f"{checkpoint.path} is {what}; {SUPPORTED}")


def _not_a_model(checkpoint: Checkpoint) -> WeightsError:
    """What a file without a UNet is, as far as its keys tell."""
    keys = list(checkpoint.shapes)
    if any(k.startswith(("lora_unet_", "lora_te")) or ".lora_down." in k or ".lora_A." in k for k in keys):
        return _refuse(checkpoint, "a LoRA (an add-on to a model, not a model)")
    if any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in keys):
        return _refuse(checkpoint, "a Flux model")
    if any(".joint_blocks." in k or k.startswith("joint_blocks.") for k in keys):
        return _refuse(checkpoint, "an SD3 model")
    if "encoder.conv_in.weight" in checkpoint and "decoder.conv_in.weight" in checkpoint:
        return _refuse(checkpoint, "a VAE alone, not a whole model")
    return _refuse(checkpoint, f"not a Stable Diffusion checkpoint: none of its {len(keys)} keys is a UNet key "
                               f"({UNET_PREFIX}*)")


def classify(checkpoint: Checkpoint) -> str:
    """``"sd1"``, ``"sd2"`` or ``"sdxl"``; refuses LoRAs, VAEs, inpainting UNets, refiners, SD3, Flux and files
    that are no checkpoint, in one line naming what the file is."""
    if not checkpoint.keys_under(UNET_PREFIX):
        raise _not_a_model(checkpoint)
    if checkpoint.keys_under(UNET_PREFIX + "double_blocks."):
        raise _refuse(checkpoint, "a Flux model")
    if checkpoint.keys_under(UNET_PREFIX + "joint_blocks."):
        raise _refuse(checkpoint, "an SD3 model")
    conv_in = checkpoint.shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None or len(conv_in) != 4:
        raise _refuse(checkpoint, f"a UNet without the openaimodel layout's {UNET_PREFIX}input_blocks.0.0.weight")
    if conv_in[1] == 9:
        raise _refuse(checkpoint, "an inpainting model (its UNet takes 9 input channels: latents, mask and image)")
    if conv_in[1] != 4:
        raise _refuse(checkpoint, f"a UNet of {conv_in[1]} input channels (text-to-image UNets take 4)")
    if checkpoint.keys_under(OPEN_CLIP_SDXL) and checkpoint.keys_under(CLIP_L_SDXL):
        return "sdxl"
    if checkpoint.keys_under(OPEN_CLIP_REFINER):
        raise _refuse(checkpoint, "an SDXL refiner (an img2img model that continues a base model's sampling)")
    if checkpoint.keys_under(OPEN_CLIP_SD2):
        return "sd2"
    if checkpoint.keys_under(CLIP_L_SD1):
        return "sd1"
    raise _refuse(checkpoint, "a UNet without a text encoder this loader knows (cond_stage_model.* or conditioner.*)")
