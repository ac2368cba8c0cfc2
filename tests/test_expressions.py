from __future__ import annotations

import dataclasses
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.config import Config, load_config
from bot.errors import ExpressionError
from bot.expressions import (
    ExpressionService,
    Renderer,
    contact_sheet,
    emotion_prompt,
    face_mask,
    load_pipeline,
)
from bot.personas import PersonaLibrary
from bot.store import Store

from .support.configs import expression_settings, write_config


@pytest.fixture
async def service(expr_config: Config):
    store = await Store.open(expr_config.resolve(expr_config.store.path))
    svc = ExpressionService(expr_config, store, PersonaLibrary.from_config(expr_config))
    yield svc
    await svc.close()
    await store.close()


def pixels(path_or_image: Path | Image.Image) -> np.ndarray:
    image = Image.open(path_or_image) if isinstance(path_or_image, Path) else path_or_image
    return np.asarray(image.convert("RGBA"))


async def test_render_changes_only_the_face(service: ExpressionService) -> None:
    mira = service.personas.load("mira")
    path = await service.render(mira, "joy")
    portrait_path = service.personas.portrait_path(mira)
    with Image.open(path) as out, Image.open(portrait_path) as portrait:  # type: ignore[arg-type]
        assert out.size == portrait.size and out.mode == portrait.mode
    mask = np.asarray(face_mask(mira, (512, 640), service.personas.avatars, 2, 3))
    before, after = pixels(portrait_path), pixels(path)  # type: ignore[arg-type]
    outside = mask == 0
    assert outside.sum() > 0.5 * mask.size
    assert np.array_equal(before[outside], after[outside])  # every pixel outside the mask, exactly
    assert not np.array_equal(before[mask == 255], after[mask == 255])  # and the face was redrawn
    # The LLM decodes on the CPU here: renders run on the cores its decode threads leave free (torch's
    # thread count is set on the render worker thread, where renders run).
    import torch

    from bot.expressions import render_threads

    assert await service._worker.run(torch.get_num_threads) == render_threads(service.config) >= 1


async def test_rgba_portraits_keep_mode_and_alpha(service: ExpressionService) -> None:
    mira = service.personas.load("mira")
    portrait = service.personas.portrait_path(mira)
    with Image.open(portrait) as image:  # type: ignore[arg-type]
        rgba = image.convert("RGBA")
    alpha = Image.new("L", rgba.size, 255)
    alpha.paste(0, (0, 0, 40, 40))  # a transparent corner
    rgba.putalpha(alpha)
    rgba.save(portrait)  # type: ignore[arg-type]
    out = pixels(await service.render(mira, "anger"))
    assert out.shape[2] == 4 and (out[:40, :40, 3] == 0).all()


async def test_same_seed_same_face_other_variant_other_face(
    service: ExpressionService, expr_config: Config
) -> None:
    mira = service.personas.load("mira")
    first = pixels(await service.render(mira, "joy"))
    again = pixels(await service.render(mira, "joy", force=True))
    other = pixels(await service.render(mira, "joy", variant=1))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


async def test_cache_hit_never_loads_the_pipeline(service: ExpressionService, expr_config: Config) -> None:
    mira = service.personas.load("mira")
    rendered = await service.render(mira, "surprise")
    fresh = ExpressionService(expr_config, service.store, service.personas)  # as after a restart
    try:
        image = await fresh.image_for(mira, "surprise")
        assert image.path == rendered and image.fresh is None
        assert fresh.renderer.loads == 0
    finally:
        await fresh.close()


async def test_changing_the_portrait_invalidates_exactly_its_renders(service: ExpressionService) -> None:
    library = service.personas
    mira = library.load("mira")
    other = dataclasses.replace(mira, slug="mira-twin", portrait="twin.png")
    Image.open(library.portrait_path(mira)).save(library.avatars / "twin.png")  # type: ignore[arg-type]
    old = await service.render(mira, "joy")
    twin = await service.render(other, "joy")
    with Image.open(library.portrait_path(mira)) as image:  # type: ignore[arg-type]
        changed = image.convert("RGB")
    changed.putpixel((5, 5), (255, 0, 0))
    changed.save(library.portrait_path(mira))  # type: ignore[arg-type]
    assert await service.cached(mira, "joy") is None
    new = await service.render(mira, "joy")
    assert new != old and not old.exists()  # the stale file is gone
    assert twin.exists() and await service.cached(other, "joy") == twin  # another persona's stays


async def test_changing_emotion_prompts_invalidates(service: ExpressionService) -> None:
    mira = service.personas.load("mira")
    await service.render(mira, "joy")
    reworded = dataclasses.replace(mira, emotion_prompts={**mira.emotion_prompts, "joy": "beaming"})
    assert "beaming" in emotion_prompt(reworded, "joy")
    assert await service.cached(reworded, "joy") is None


class Exploding:
    """A pipeline whose every call fails, as a GPU out of memory would."""

    def __call__(self, **_: object) -> None:
        raise RuntimeError("CUDA out of memory (simulated)")


async def test_failing_pipeline_falls_back(expr_config: Config, caplog: pytest.LogCaptureFixture) -> None:
    store = await Store.open(expr_config.resolve(expr_config.store.path))
    library = PersonaLibrary.from_config(expr_config)
    mira = library.load("mira")
    good = ExpressionService(expr_config, store, library)
    broken = ExpressionService(
        expr_config,
        store,
        library,
        Renderer(expr_config.expressions, expr_config.root, lambda *_: Exploding()),
    )
    try:
        # Nothing cached: the drawn fear face now, and the failed render offers nothing new.
        image = await broken.image_for(mira, "fear")
        assert image.path == await good.drawn(mira, "fear") != library.portrait_path(mira)
        assert image.fresh is not None and await image.fresh is None
        assert "render of mira/fear failed" in caplog.text
        # With a neutral render cached, the drawn fear face still says more than a calm one.
        neutral = await good.render(mira, "neutral")
        assert (await broken.image_for(mira, "fear")).path == await good.drawn(mira, "fear")
        # Drawn faces switched off: the neutral render is the next best face, then the portrait.
        plain = dataclasses.replace(
            expr_config, expressions=dataclasses.replace(expr_config.expressions, drawn=False)
        )
        undrawn = ExpressionService(plain, store, library, broken.renderer)
        try:
            assert (await undrawn.image_for(mira, "fear")).path == neutral
            await store.drop_stale_renders("mira", "another source")
            assert (await undrawn.image_for(mira, "fear")).path == library.portrait_path(mira)
        finally:
            await undrawn.close()
        # With the label itself cached, no render is attempted at all.
        fear = await good.render(mira, "fear")
        image = await broken.image_for(mira, "fear")
        assert image.path == fear and image.fresh is None
    finally:
        await good.close()
        await broken.close()
        await store.close()


class OutOfMemory:
    """A pipeline on a GPU too small for it: torch's own out-of-memory error."""

    def __call__(self, **_: object) -> None:
        import torch

        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


async def test_out_of_memory_falls_back_and_says_what_to_change(
    expr_config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    store = await Store.open(expr_config.resolve(expr_config.store.path))
    library = PersonaLibrary.from_config(expr_config)
    mira = library.load("mira")
    good = ExpressionService(expr_config, store, library)
    small_gpu = ExpressionService(
        expr_config,
        store,
        library,
        Renderer(expr_config.expressions, expr_config.root, lambda *_: OutOfMemory()),
    )
    try:
        image = await small_gpu.image_for(mira, "sadness")
        assert image.path == await good.drawn(mira, "sadness")  # the best face at hand is shown now
        assert image.fresh is not None and await image.fresh is None
        assert "ran out of memory" in caplog.text and "cpu_offload = true" in caplog.text
        with pytest.raises(ExpressionError, match="cpu_offload = true"):
            await small_gpu.render(mira, "sadness")
    finally:
        await good.close()
        await small_gpu.close()
        await store.close()


async def test_engine_gets_best_image_now_and_fresh_render_later(service: ExpressionService) -> None:
    mira = service.personas.load("mira")
    image = await service.image_for(mira, "love")
    assert image.path == await service.drawn(mira, "love")
    assert image.fresh is not None
    rendered = await image.fresh
    assert rendered is not None and rendered.is_file()
    assert (await service.image_for(mira, "love")).path == rendered


async def test_render_timeout_falls_back(expr_config: Config) -> None:
    slow = load_config(
        write_config(
            expr_config.root,
            expression_settings(expr_config.expressions.model).replace("steps = 2", "steps = 50")
            + "timeout_seconds = 0.05\n",
            sprites=False,
        )
    )
    store = await Store.open(slow.resolve(slow.store.path))
    svc = ExpressionService(slow, store, PersonaLibrary.from_config(slow))
    mira = svc.personas.load("mira")
    try:
        with pytest.raises(ExpressionError, match=r"render of mira/joy took longer than 0.05 s"):
            await svc.render(mira, "joy")
        # In a chat: the drawn face now, and the render that ran out of time offers nothing later.
        image = await svc.image_for(mira, "anger")
        assert image.path == await svc.drawn(mira, "anger")
        assert image.fresh is not None and await image.fresh is None
    finally:
        await svc.close()
        await store.close()


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ((500, 600, 100, 100), "lies outside the 512x640 portrait"),
        ((10, 10, 0, 50), "is empty"),
        ((0, 0, 512, 640), "covers the whole portrait"),
        ((-5, 10, 50, 50), "lies outside"),
    ],
)
def test_bad_face_boxes(library, box, message) -> None:
    mira = dataclasses.replace(library.load("mira"), face_box=box)
    with pytest.raises(ExpressionError, match=message):
        face_mask(mira, (512, 640), library.avatars, 2, 3)


def test_face_mask_files(library) -> None:
    mira = library.load("mira")
    Image.new("L", (512, 640), 0).save(library.avatars / "empty.png")
    Image.new("L", (512, 640), 255).save(library.avatars / "full.png")
    Image.new("L", (10, 10), 255).save(library.avatars / "small.png")
    good = Image.new("L", (512, 640), 0)
    good.paste(255, (200, 250, 300, 350))
    good.save(library.avatars / "good.png")
    for name, message in (
        ("empty.png", "is empty"),
        ("full.png", "covers the whole"),
        ("small.png", "the portrait is"),
    ):
        with pytest.raises(ExpressionError, match=message):
            face_mask(dataclasses.replace(mira, face_mask=name), (512, 640), library.avatars, 0, 0)
    mask = face_mask(
        dataclasses.replace(mira, face_mask="good.png", face_box=None), (512, 640), library.avatars, 4, 2
    )
    assert mask.getbbox() is not None and mask.getpixel((0, 0)) == 0 and mask.getpixel((250, 300)) == 255


def test_missing_region_says_how_to_set_it(library) -> None:
    mira = dataclasses.replace(library.load("mira"), face_box=None)
    with pytest.raises(ExpressionError, match=r"persona face mira --detect`, set it with `--box X Y"):
        face_mask(mira, (512, 640), library.avatars, 2, 3)


def test_missing_model_path(tmp_path: Path) -> None:
    settings = load_config(write_config(tmp_path, expression_settings(tmp_path / "nowhere"))).expressions
    with pytest.raises(ExpressionError, match="inpainting model not found"):
        load_pipeline(settings, tmp_path)


def test_corrupt_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    (tmp_path / "model.ckpt").write_bytes(b"pickle")
    settings = load_config(write_config(tmp_path, expression_settings("bad.safetensors"))).expressions
    with pytest.raises(ExpressionError, match=r"not a readable Stable Diffusion \.safetensors checkpoint"):
        load_pipeline(settings, tmp_path)
    with pytest.raises(ExpressionError, match=r"only \.safetensors"):
        load_pipeline(dataclasses.replace(settings, model="model.ckpt"), tmp_path)
    (tmp_path / "broken-folder").mkdir()
    (tmp_path / "broken-folder" / "model_index.json").write_text("{")
    with pytest.raises(ExpressionError, match="broken-folder: not a diffusers model folder"):
        load_pipeline(dataclasses.replace(settings, model="broken-folder"), tmp_path)


async def test_non_image_portrait(service: ExpressionService) -> None:
    mira = service.personas.load("mira")
    service.personas.portrait_path(mira).write_bytes(b"this is not a picture")  # type: ignore[union-attr]
    with pytest.raises(ExpressionError, match="not a readable image"):
        await service.render(mira, "joy")


async def test_sprite_packs_import_win_and_export(service: ExpressionService, tmp_path: Path) -> None:
    mira = service.personas.load("mira")
    rendered = await service.render(mira, "joy")
    buffer = io.BytesIO()
    sprite = io.BytesIO()
    Image.new("RGB", (32, 48), (1, 2, 3)).save(sprite, format="PNG")
    with zipfile.ZipFile(buffer, "w") as pack:
        pack.writestr("joy.png", sprite.getvalue())
        pack.writestr("anger-1.png", sprite.getvalue())
        pack.writestr("../../joy-2.png", sprite.getvalue())
        pack.writestr("readme.txt", "hi")
    (tmp_path / "pack.zip").write_bytes(buffer.getvalue())
    from bot.expressions.packs import open_pack, write_pack

    with open_pack(tmp_path / "pack.zip") as files:
        plan = service.import_sprites(mira, files)
    assert plan.stored == {"joy.png": "joy.png", "anger-1.png": "anger-1.png", "joy-2.png": "joy-2.png"}
    assert plan.unused == {}  # open_pack passes only the PNG members
    assert (service.sprites_dir / "mira" / "joy-2.png").is_file()  # the member's path is never followed
    assert not (service.sprites_dir.parent.parent / "joy-2.png").exists()
    image = await service.image_for(mira, "joy")
    assert image.path == service.sprites_dir / "mira" / "joy.png" and image.path != rendered
    files = await service.pack_files(mira)
    assert files["joy.png"] == service.sprites_dir / "mira" / "joy.png"  # hand-made wins over the render
    with zipfile.ZipFile(io.BytesIO(write_pack(files))) as exported:
        assert {"joy.png", "anger-1.png"} <= set(exported.namelist())


def test_bad_sprite_packs(service: ExpressionService, tmp_path: Path) -> None:
    mira = service.personas.load("mira")
    from bot.expressions.packs import open_pack

    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with (
        pytest.raises(ExpressionError, match="not a folder or a readable zip"),
        open_pack(tmp_path / "junk.zip"),
    ):
        pass
    with pytest.raises(ExpressionError, match=r"joy\.png is not a readable image"):
        service.import_sprites(mira, [("joy.png", b"garbage")])
    with pytest.raises(ExpressionError, match=r"no usable sprites found .* unused: notes\.txt"):
        service.import_sprites(mira, [("notes.txt", b"x")])


def test_contact_sheet_layout() -> None:
    faces = [(f"l{i}", Image.new("RGB", (100, 120), (i * 20, 0, 0))) for i in range(7)]
    sheet = contact_sheet(faces, thumb=64, columns=5)
    assert sheet.size == (5 * 64, 2 * (64 + 24))


def test_render_command_writes_contact_sheet(expr_config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    from bot.cli.main import main

    sheet = expr_config.root / "sheet.png"
    code = main(
        [
            "--config",
            str(expr_config.root / "config.toml"),
            "expressions",
            "render",
            "--persona",
            "mira",
            "--labels",
            "joy",
            "sadness",
            "--variants",
            "2",
            "--sheet",
            str(sheet),
        ]
    )
    assert code == 0
    assert "rendered 4 faces" in capsys.readouterr().out
    with Image.open(sheet) as image:
        assert image.size == (4 * 256, 256 + 24)


def test_decompression_bomb_sprite_is_a_clear_error(service: ExpressionService) -> None:
    from .test_cards import _bomb_png

    mira = service.personas.load("mira")
    with pytest.raises(ExpressionError, match=r"joy\.png is 30000x30000 pixels"):
        service.import_sprites(mira, [("joy.png", _bomb_png())])
    assert not (service.sprites_dir / "mira").exists()


# Every setting that changes what a render looks like, with two other values for it (the first that
# differs from the test's own is used). A cached face made under the old value must not be shown for
# the new one.
RENDER_SETTINGS = {
    "model": ("another/inpainting-model", "elsewhere/model"),
    "lora": ("style.safetensors", "other.safetensors"),
    "lora_scale": (0.5, 0.25),
    "scheduler": ("euler", "dpm"),
    "dtype": ("float16", "bfloat16"),
    "resolution": (256, 384),
    "steps": (7, 9),
    "strength": (0.4, 0.6),
    "guidance": (3.5, 5.5),
    "seed": (1234, 4321),
    "mask_dilate": (3, 5),
    "mask_blur": (2, 4),
    "crop_padding": (16, 24),
    "negative_prompt": ("blurry", "dark"),
}


def _key(service: ExpressionService, persona, label: str = "joy") -> str:
    return service.job(persona, label)[0].key


async def test_the_render_cache_key_changes_with_every_setting_that_changes_a_render(
    service: ExpressionService,
) -> None:
    mira = service.personas.load("mira")
    base_settings = service.settings
    base = _key(service, mira)
    assert _key(service, mira) == base  # the same recipe, the same key
    for name, values in RENDER_SETTINGS.items():
        value = next(v for v in values if v != getattr(base_settings, name))
        service.settings = dataclasses.replace(base_settings, **{name: value})
        assert _key(service, mira) != base, f"[expressions] {name} does not change the render's cache key"
    service.settings = base_settings
    assert _key(service, mira) == base
    assert _key(service, mira, "anger") != base  # and each label has its own
    tuned = dataclasses.replace(mira, emotion_prompts={"joy": "beaming"}, appearance="a sailor")
    assert _key(service, tuned) != base


async def test_the_render_cache_key_changes_with_the_face_region_and_mask(service: ExpressionService) -> None:
    mira = service.personas.load("mira")
    assert mira.face_box is not None
    base = _key(service, mira)
    x, y, w, h = mira.face_box
    assert _key(service, dataclasses.replace(mira, face_box=(x + 8, y, w, h))) != base  # moved
    assert _key(service, dataclasses.replace(mira, face_box=(x, y, w - 20, h))) != base  # resized
    # A hand-drawn mask file, and that file edited in place.
    mask_path = service.personas.avatars / "mira-mask.png"
    Image.new("L", (512, 640), 0).save(mask_path)
    with Image.open(mask_path) as blank:
        drawn = blank.copy()
    drawn.paste(255, (150, 180, 360, 400))
    drawn.save(mask_path)
    masked = dataclasses.replace(mira, face_mask=mask_path.name)
    with_mask = _key(service, masked)
    assert with_mask != base
    drawn.paste(255, (100, 100, 420, 460))
    drawn.save(mask_path)
    assert _key(service, masked) != with_mask
    # The portrait itself repainted.
    portrait = service.personas.portrait_path(mira)
    assert portrait is not None
    with Image.open(portrait) as image:
        repainted = image.convert("RGB")
    repainted.paste((10, 20, 30), (0, 0, 30, 30))
    repainted.save(portrait)
    assert _key(service, mira) != base


def test_a_missing_hub_model_with_local_files_only_names_the_setting(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    settings = dataclasses.replace(
        load_config(write_config(tmp_path)).expressions, model="someone/not-downloaded", local_files_only=True
    )
    with pytest.raises(ExpressionError, match=r"not downloaded and \[expressions\] local_files_only = true"):
        load_pipeline(settings, tmp_path)
