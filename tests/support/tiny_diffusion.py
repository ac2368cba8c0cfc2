"""Random-weight Stable Diffusion inpainting pipelines built from configs, for tests and benchmarks.

`save_tiny_pipeline` writes a very small pipeline (about a second per render on CPU) to a folder that is
then loaded through the same code path as a real model. `full_size_sd15_inpainting` builds the real SD 1.5
inpainting architecture with random weights: speed does not depend on the weights, so GPU timings taken
with it hold for the real model.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 9,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "sample_size": 512,
}
SD15_TEXT: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
}

TINY_UNET: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 9,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": (32, 64),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
}
TINY_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (16, 32),
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 32,
}
TINY_TEXT: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "max_position_embeddings": 77,
}


def write_clip_tokenizer(folder: Path) -> int:
    """A character-level CLIP BPE vocabulary (no merges); returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(string.ascii_lowercase + string.digits + ".,!?'-")
    vocab: dict[str, int] = {}
    for symbol in symbols:
        vocab[symbol] = len(vocab)
        vocab[symbol + "</w>"] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return len(vocab)


def text_encoder_config(vocab_size: int, **fields: Any) -> Any:
    """A CLIP text encoder's config over the vocabulary `write_clip_tokenizer` wrote (its last two ids are
    the start and end tokens)."""
    from transformers import CLIPTextConfig

    ids: dict[str, Any] = {
        "bos_token_id": vocab_size - 2,
        "eos_token_id": vocab_size - 1,
        "pad_token_id": vocab_size - 1,
    }
    return CLIPTextConfig(vocab_size=vocab_size, **ids, **fields)


def _build(
    folder: Path | None, unet: dict[str, Any], vae: dict[str, Any], text: dict[str, Any], seed: int
) -> Any:
    import tempfile

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        vocab_size = write_clip_tokenizer(Path(scratch))
        tokenizer = CLIPTokenizer.from_pretrained(scratch, model_max_length=77)
    text_config = text_encoder_config(vocab_size, **text)
    pipe = StableDiffusionInpaintPipeline(
        unet=UNet2DConditionModel(**unet),
        vae=AutoencoderKL(**vae),
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if folder is not None:
        pipe.save_pretrained(folder)  # type: ignore[attr-defined]  # diffusers' mixin, untyped
    return pipe


def save_tiny_pipeline(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random inpainting pipeline (diffusers folder layout) and return its path."""
    _build(folder, TINY_UNET, TINY_VAE, TINY_TEXT, seed)
    return folder


def full_size_sd15_inpainting(seed: int = 0) -> Any:
    """The SD 1.5 inpainting architecture (9-channel UNet) with random weights, in memory."""
    return _build(None, SD15_UNET, SD15_VAE, SD15_TEXT, seed)


def save_full_size_sd15_inpainting(folder: Path, seed: int = 0) -> Path:
    """The SD 1.5 inpainting architecture with random weights, saved like a downloaded model."""
    _build(folder, SD15_UNET, SD15_VAE, SD15_TEXT, seed)
    return folder


# SDXL's shape in miniature: two text encoders (the second with a projection, whose pooled output and the
# size/crop ids condition the UNet through its "text_time" embedding), as in diffusers' own SDXL tests.
TINY_SDXL_UNET: dict[str, Any] = {
    "sample_size": 16,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": (32, 64),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "transformer_layers_per_block": (1, 2),
    "projection_class_embeddings_input_dim": 6 * 8 + 32,  # six size/crop ids, and the pooled text
    "cross_attention_dim": 32 + 48,  # both encoders' hidden states side by side
    "norm_num_groups": 8,
}


def save_tiny_sdxl(folder: Path, in_channels: int = 9, seed: int = 0) -> Path:
    """A tiny random SDXL pipeline (9 channels: an inpainting model; 4: a base model) in diffusers' folder
    layout, as `StableDiffusionXLPipeline` saves it."""
    import tempfile

    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        vocab_size = write_clip_tokenizer(Path(scratch))
        tokenizer = CLIPTokenizer.from_pretrained(scratch, model_max_length=77)
        tokenizer_2 = CLIPTokenizer.from_pretrained(scratch, model_max_length=77)
    text = text_encoder_config(vocab_size, hidden_act="gelu", **TINY_TEXT)
    # The second encoder is wider, as in SDXL (768 and 1280): a checkpoint's loader tells them apart by it.
    text_2 = text_encoder_config(
        vocab_size, hidden_act="gelu", projection_dim=32, **{**TINY_TEXT, "hidden_size": 48}
    )
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL(**TINY_VAE),
        text_encoder=CLIPTextModel(text),
        text_encoder_2=CLIPTextModelWithProjection(text_2),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=UNet2DConditionModel(in_channels=in_channels, **TINY_SDXL_UNET),
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
        ),
    )
    pipe.save_pretrained(folder)  # type: ignore[attr-defined]  # diffusers' mixin, untyped
    return folder
