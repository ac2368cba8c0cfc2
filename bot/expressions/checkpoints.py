"""What an image model is, told before anything large is loaded: a single `.safetensors` file by the
tensor names and shapes in its header, a diffusers folder by its `model_index.json`. Stable Diffusion
1.x, 2.x and SDXL load (base models and 9-channel inpainting models alike); Flux, SD3, an SDXL refiner,
a LoRA, a bare UNet and anything else get one line saying what to use instead."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.errors import ExpressionError

MAX_HEADER_BYTES = 100_000_000  # real checkpoints' headers are 100-300 KB; more is not a checkpoint
UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
# Tensors only one kind of checkpoint has (the layouts of the original Stability/BFL releases).
SDXL_KEYS = ("conditioner.embedders.1.model.positional_embedding",)
SDXL_REFINER_KEYS = ("conditioner.embedders.0.model.text_projection",)
SD2_KEYS = ("cond_stage_model.model.token_embedding.weight",)
SD1_KEYS = ("cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",)
FLUX_MARK = "double_blocks.0.img_attn.norm.key_norm.scale"
SD3_MARK = "joint_blocks.0.context_block.adaLN_modulation.1.bias"
LORA_MARKS = ("lora_up.", "lora_down.", "lora_A.", "lora_B.", "lora_unet_", "lora_te")
FAMILY_NAMES = {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "SDXL"}
USE_INSTEAD = "use a Stable Diffusion 1.x, 2.x or SDXL checkpoint (an inpainting one blends faces best)"
# diffusers pipeline classes, by what their folder's model_index.json names.
FOLDER_FAMILIES = {
    "StableDiffusionPipeline": "sd1",
    "StableDiffusionInpaintPipeline": "sd1",
    "StableDiffusionImg2ImgPipeline": "sd1",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLInpaintPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
}


@dataclass(frozen=True)
class ModelKind:
    family: str  # "sd1", "sd2" or "sdxl" ("sd1" stands for both in a diffusers folder: one pipeline)
    inpainting: bool  # a 9-channel UNet, trained to fill a masked region

    def describe(self) -> str:
        return f"{FAMILY_NAMES[self.family]} {'inpainting' if self.inpainting else 'base'} model"


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file: tensor names, dtypes and shapes (no weights are read)."""
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > MAX_HEADER_BYTES:
                raise ValueError("header too large")
            header = json.loads(handle.read(length))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        return header
    except (OSError, ValueError, struct.error, RecursionError) as exc:
        raise ExpressionError(
            f"{path}: not a readable Stable Diffusion .safetensors checkpoint ({exc})"
        ) from None


def checkpoint_kind(path: Path) -> ModelKind:
    """The kind of a single-file checkpoint, from its header. Raises ExpressionError with one line for
    what cannot be loaded as an inpainting model."""
    header = read_header(path)
    keys = set(header) - {"__metadata__"}
    where = f"{path.name}"
    if any(mark in key for key in keys for mark in LORA_MARKS):
        raise ExpressionError(
            f"{where} is a LoRA, not a model: set it as [expressions] lora, with its base model as model"
        )
    if any(key.endswith(FLUX_MARK) for key in keys):
        raise _unsupported(where, "Flux")
    if any(key.endswith(SD3_MARK) for key in keys):
        raise _unsupported(where, "Stable Diffusion 3")
    if keys & set(SDXL_REFINER_KEYS) and not keys & set(SDXL_KEYS):
        raise ExpressionError(f"{where} is an SDXL refiner, not a base model: {USE_INSTEAD}")
    families = (("sdxl", SDXL_KEYS), ("sd2", SD2_KEYS), ("sd1", SD1_KEYS))
    family = next((name for name, marks in families if keys & set(marks)), "")
    if UNET_IN not in keys:
        raise ExpressionError(f"{where} is not a Stable Diffusion checkpoint (no UNet in it): {USE_INSTEAD}")
    if not family:
        raise ExpressionError(
            f"{where} holds a UNet without its text encoder (a bare UNet, or a layout the bot does not"
            f" know): {USE_INSTEAD}, as one file with its text encoder and VAE"
        )
    channels = _in_channels(header[UNET_IN], where)
    return ModelKind(family, channels == 9)


def folder_kind(folder: Path) -> ModelKind:
    """The kind of a diffusers folder, from model_index.json and the UNet's config."""
    try:
        index = json.loads((folder / "model_index.json").read_text("utf-8"))
        name = str(index["_class_name"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExpressionError(f"{folder}: not a diffusers model folder (model_index.json: {exc})") from None
    if name.startswith("Flux"):
        raise _unsupported(folder.name, "Flux")
    if name.startswith("StableDiffusion3"):
        raise _unsupported(folder.name, "Stable Diffusion 3")
    family = FOLDER_FAMILIES.get(name)
    if family is None:
        raise ExpressionError(f"{folder.name} is a {name[:60]}, not a Stable Diffusion model: {USE_INSTEAD}")
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text("utf-8"))
        channels = int(unet["in_channels"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExpressionError(f"{folder}: its UNet's config cannot be read ({exc})") from None
    _check_channels(channels, folder.name)
    return ModelKind(family, channels == 9)


def _in_channels(entry: Any, where: str) -> int:
    try:
        channels = int(entry["shape"][1])
    except (KeyError, TypeError, IndexError, ValueError):
        raise ExpressionError(f"{where}: its UNet's first layer has no readable shape") from None
    _check_channels(channels, where)
    return channels


def _check_channels(channels: int, where: str) -> None:
    if channels not in (4, 9):
        raise ExpressionError(f"{where}: UNet has {channels} input channels; expected 9 (inpainting) or 4")


def _unsupported(where: str, what: str) -> ExpressionError:
    return ExpressionError(f"{where} is a {what} model, which the bot cannot inpaint with yet: {USE_INSTEAD}")
