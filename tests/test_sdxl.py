"""SDXL and the other model families: told apart from a file's header or a folder's index before anything
large is loaded, each loaded into its own inpainting pipeline through the one loader, and what cannot
inpaint (Flux, SD3, a refiner, a LoRA, a bare UNet) refused with one line."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.config import load_config
from bot.errors import ExpressionError
from bot.expressions import ExpressionService
from bot.expressions.backends.diffusers import load_pipeline, native_resolution
from bot.expressions.checkpoints import checkpoint_kind, folder_kind
from bot.expressions.region import face_mask
from bot.personas import PersonaLibrary
from bot.store import Store

from .support.configs import expression_settings, write_config
from .support.single_file import to_single_file
from .support.tiny_diffusion import save_tiny_sdxl

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
SD1_TEXT = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
SD2_TEXT = "cond_stage_model.model.token_embedding.weight"
SDXL_TEXT = "conditioner.embedders.1.model.positional_embedding"


def header_only(path: Path, shapes: dict[str, list[int]]) -> Path:
    """A .safetensors file whose header names these tensors (their bytes are never read)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = 2 * int(np.prod(shape))
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return path


@pytest.mark.parametrize(
    ("shapes", "family", "inpainting"),
    [
        ({UNET_IN: [320, 9, 3, 3], SD1_TEXT: [77, 768]}, "sd1", True),
        ({UNET_IN: [320, 4, 3, 3], SD1_TEXT: [77, 768]}, "sd1", False),
        ({UNET_IN: [320, 9, 3, 3], SD2_TEXT: [49408, 1024]}, "sd2", True),
        ({UNET_IN: [320, 4, 3, 3], SDXL_TEXT: [77, 1280]}, "sdxl", False),  # Pony, Illustrious, NoobAI
        ({UNET_IN: [320, 9, 3, 3], SDXL_TEXT: [77, 1280]}, "sdxl", True),
    ],
)
def test_a_checkpoint_is_told_apart_by_its_header(
    tmp_path: Path, shapes, family: str, inpainting: bool
) -> None:
    kind = checkpoint_kind(header_only(tmp_path / "model.safetensors", shapes))
    assert (kind.family, kind.inpainting) == (family, inpainting)


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale": [128]}, "is a Flux model"),
        ({"double_blocks.0.img_attn.norm.key_norm.scale": [128]}, "is a Flux model"),
        (
            {"model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": [9216]},
            "is a Stable Diffusion 3 model",
        ),
        (
            {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": [4, 320]},
            "is a LoRA, not a model: set it as [expressions] lora",
        ),
        ({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": [4, 320]}, "is a LoRA"),
        (
            {"conditioner.embedders.0.model.text_projection": [1280, 1280], UNET_IN: [384, 4, 3, 3]},
            "is an SDXL refiner",
        ),
        ({UNET_IN: [320, 4, 3, 3]}, "holds a UNet without its text encoder"),
        ({UNET_IN: [320, 8, 3, 3], SD1_TEXT: [77, 768]}, "UNet has 8 input channels"),  # instruct-pix2pix
        ({"encoder.conv_in.weight": [128, 3, 3, 3]}, "not a Stable Diffusion checkpoint (no UNet in it)"),
    ],
)
def test_what_cannot_inpaint_is_refused_with_one_line(tmp_path: Path, shapes, message: str) -> None:
    path = header_only(tmp_path / "thing.safetensors", shapes)
    with pytest.raises(ExpressionError) as refused:
        checkpoint_kind(path)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert str(refused.value).startswith("thing.safetensors")  # names the file
    # The loader says the same before diffusers is asked for anything.
    settings = load_config(write_config(tmp_path, expression_settings(path))).expressions
    with pytest.raises(ExpressionError, match=re.escape(message)):
        load_pipeline(settings, tmp_path)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("FluxPipeline", "is a Flux model"),
        ("StableDiffusion3Pipeline", "is a Stable Diffusion 3 model"),
        ("KandinskyV22Pipeline", "is a KandinskyV22Pipeline, not a Stable Diffusion model"),
    ],
)
def test_a_folder_of_another_family_is_refused(tmp_path: Path, name: str, message: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": name}))
    with pytest.raises(ExpressionError, match=message):
        folder_kind(folder)


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl-inpaint", in_channels=9)


@pytest.fixture(scope="module")
def tiny_sdxl_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl-base", in_channels=4)


async def render_joy(folder: Path, settings: str, pipeline: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mira's joy face rendered with these [expressions] settings: (portrait, render, mask) pixels."""
    config = load_config(write_config(folder, settings, sprites=False))
    store = await Store.open(config.resolve(config.store.path))
    library = PersonaLibrary.from_config(config)
    service = ExpressionService(config, store, library)
    try:
        mira = library.load("mira")
        path = await service.render(mira, "joy")
        assert type(service.renderer.pipe).__name__ == pipeline
        with Image.open(library.portrait_path(mira)) as portrait:  # type: ignore[arg-type]
            before = np.asarray(portrait.convert("RGB"))
            size = portrait.size
        after = np.asarray(Image.open(path).convert("RGB"))
        s = config.expressions
        return before, after, np.asarray(face_mask(mira, size, library.avatars, s.mask_dilate, s.mask_blur))
    finally:
        await service.close()
        await store.close()


@pytest.mark.parametrize(
    ("which", "pipeline"),
    [
        ("tiny_sdxl", "StableDiffusionXLInpaintPipeline"),
        ("tiny_sdxl_base", "StableDiffusionXLInpaintPipeline"),
        ("tiny_pipeline_dir", "StableDiffusionInpaintPipeline"),
    ],
)
async def test_a_single_file_renders_what_its_folder_renders(
    tmp_path: Path, request: pytest.FixtureRequest, which: str, pipeline: str
) -> None:
    """The same weights as one original-layout .safetensors file (as checkpoints are shared) and as a
    diffusers folder: both load through the one loader, and give the same face, pixel for pixel."""
    folder: Path = request.getfixturevalue(which)
    single = to_single_file(folder, tmp_path / f"{which}.safetensors")
    assert checkpoint_kind(single) == folder_kind(folder)
    _, from_folder, _ = await render_joy(tmp_path / "a", expression_settings(folder), pipeline)
    settings = expression_settings(single) + f'model_config = "{folder}"\n'
    before, from_file, mask = await render_joy(tmp_path / "b", settings, pipeline)
    # The same weights, bit for bit (float rounding in the loaded layers' layout aside: < 1e-6 in the
    # pooled text embedding), so the same face within a grey level or two.
    assert np.abs(from_file.astype(int) - from_folder.astype(int)).max() <= 2
    outside = mask == 0
    assert np.array_equal(before[outside], from_file[outside])


@pytest.mark.parametrize("which", ["tiny_sdxl", "tiny_sdxl_base"])
async def test_an_sdxl_folder_renders_through_the_same_loader_and_keeps_every_pixel_outside_the_mask(
    tmp_path: Path, request: pytest.FixtureRequest, which: str
) -> None:
    folder: Path = request.getfixturevalue(which)
    kind = folder_kind(folder)
    assert kind.family == "sdxl" and kind.inpainting == (which == "tiny_sdxl")
    before, after, mask = await render_joy(
        tmp_path, expression_settings(folder), "StableDiffusionXLInpaintPipeline"
    )
    outside = mask == 0
    assert np.array_equal(before[outside], after[outside])
    assert not np.array_equal(before[~outside], after[~outside])  # the face was redrawn


def test_resolution_zero_is_the_models_own(tiny_sdxl: Path, tmp_path: Path, monkeypatch) -> None:
    import dataclasses

    from bot.expressions.backends.diffusers import Renderer

    config = load_config(write_config(tmp_path))
    assert config.expressions.resolution == 0  # the default
    settings = dataclasses.replace(
        load_config(write_config(tmp_path, expression_settings(tiny_sdxl))).expressions, resolution=0
    )
    renderer = Renderer(settings, tmp_path)
    # sample_size 16 x the VAE's scale (two blocks: 2; a real SDXL's 128 x 8 = 1024)
    assert native_resolution(renderer.pipe) == 32
    portrait = Image.new("RGB", (80, 80), (200, 150, 120))
    mask = Image.new("L", (80, 80), 0)
    mask.paste(255, (20, 20, 60, 60))
    calls = []
    pipe_call = type(renderer.pipe).__call__

    def spy(self, *args, **kwargs):
        calls.append((kwargs["height"], kwargs["width"]))
        return pipe_call(self, *args, **kwargs)

    monkeypatch.setattr(type(renderer.pipe), "__call__", spy)
    out = renderer.render(portrait, mask, "a face", seed=1)
    assert calls == [(32, 32)] and out.size == (80, 80)
