"""The example persona's drawn expression set, sprite-pack label mapping and the face-region tool."""

from __future__ import annotations

import io
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.cli.main import main
from bot.config import DEFAULT_LABELS, Config
from bot.expressions import ExpressionService, plan_sprites
from bot.personas import PersonaLibrary
from bot.store import Store
from bot.terminal.faces import TerminalFaces, face_crop

from .support.configs import shipped

SPRITES = shipped() / "avatars" / "sprites" / "mira"


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


@pytest.mark.parametrize("slug", ["mira", "tobin"])
def test_shipped_set_changes_only_the_face_and_every_face_differs(slug: str) -> None:
    mira = persona_library_for_repo().load(slug)
    assert mira.face_box is not None
    x, y, w, h = mira.face_box
    portrait = pixels(shipped() / "avatars" / f"{slug}.png")
    inside = np.zeros(portrait.shape[:2], bool)
    inside[y : y + h, x : x + w] = True
    faces = {
        label: pixels(shipped() / "avatars" / "sprites" / slug / f"{label}.png") for label in mira.labels
    }
    assert set(mira.labels) == set(DEFAULT_LABELS)
    for label, face in faces.items():
        assert face.shape == portrait.shape, label
        assert (face[~inside] == portrait[~inside]).all(), f"{label} changes pixels outside the face"
    for (a, fa), (b, fb) in itertools.combinations(faces.items(), 2):
        changed = (np.abs(fa - fb).sum(axis=2) > 30).sum()
        assert changed > 400, f"{a} and {b} look alike ({changed} pixels differ)"


def persona_library_for_repo():
    from bot.personas import PersonaLibrary

    return PersonaLibrary(
        shipped() / "persona", shipped() / "avatars", max_card_bytes=10**7, max_pixels=10**8
    )


async def test_each_label_shows_its_own_face_without_a_model(config: Config) -> None:
    store = await Store.open(config.resolve(config.store.path))
    service = ExpressionService(config, store, PersonaLibrary.from_config(config))
    try:
        mira = service.personas.load("mira")
        for label in mira.labels:
            image = await service.image_for(mira, label)
            assert image.path == service.sprites_dir / "mira" / f"{label}.png" and image.fresh is None
            assert image.path.read_bytes() == (SPRITES / f"{label}.png").read_bytes()
        # A label without a sprite: its own drawn face (a tag with its name), never another emotion's.
        custom = mira.__class__(**{**mira.__dict__, "labels": (*mira.labels, "smug")})
        smug = (await service.image_for(custom, "smug")).path
        assert smug == await service.drawn(custom, "smug") and smug is not None
        assert smug.parent == service.cache_dir / "mira" / "drawn"
    finally:
        await service.close()
        await store.close()


def test_sillytavern_sprite_names_map_onto_the_persona_labels() -> None:
    names = [
        "admiration.png",  # ST's finer label: fills joy only if nothing better does
        "happy.png",  # a synonym of joy
        "joy.png",  # exact: wins over both
        "caring.png",  # no love.png in the pack: caring shows love
        "desire.png",  # love is taken by caring (earlier in GoEmotions order)
        "disgust-1.png",  # anger's second variant
        "nervousness.png",
        "smug.png",
        "readme.txt",
    ]
    plan = plan_sprites(DEFAULT_LABELS, names)
    assert plan.stored == {
        "joy.png": "joy.png",
        "caring.png": "love.png",
        "disgust-1.png": "anger-1.png",
        "nervousness.png": "fear.png",
    }
    assert set(plan.unused) == {"admiration.png", "happy.png", "desire.png", "smug.png", "readme.txt"}
    assert plan.unused["smug.png"] == "no emotion 'smug' among the persona's labels"
    assert plan.unused["happy.png"] == "joy.png already gives joy.png"
    # A persona with all 28 labels takes ST's names as they are.
    everything = plan_sprites(
        ["neutral", "admiration", "caring", "desire", "joy", "disgust", "nervousness"], names
    )
    assert everything.stored["admiration.png"] == "admiration.png"
    assert everything.stored["desire.png"] == "desire.png"


def test_face_command_previews_and_sets_the_region(config: Config, tmp_path: Path, capsys) -> None:
    toml = config.resolve("persona/mira.toml")
    before = toml.read_text()
    out = tmp_path / "preview.png"
    assert (
        main(["--config", str(config.root / "config.toml"), "persona", "face", "mira", "--out", str(out)])
        == 0
    )
    assert "face_box = [166, 200, 180, 190]" in capsys.readouterr().out
    with Image.open(out) as preview, Image.open(config.resolve("avatars/mira.png")) as portrait:
        assert preview.size == portrait.size
        # Outside the region the portrait is dimmed; inside it is unchanged.
        assert preview.getpixel((10, 600)) != portrait.convert("RGB").getpixel((10, 600))
        assert preview.getpixel((256, 300)) == portrait.convert("RGB").getpixel((256, 300))

    args = ["--config", str(config.root / "config.toml"), "persona", "face", "mira", "--out", str(out)]
    assert main([*args, "--box", "150", "180", "200", "220"]) == 0
    after = toml.read_text()
    assert "face_box = [150, 180, 200, 220]" in after
    # Only that line changed: the file's comments stay.
    assert after.replace("face_box = [150, 180, 200, 220]", "face_box = [166, 200, 180, 190]") == before
    assert PersonaLibrary.from_config(config).load("mira").face_box == (150, 180, 200, 220)

    assert main([*args, "--box", "400", "500", "300", "300"]) == 2  # outside the 512x640 portrait
    assert "lies outside the 512x640 portrait" in capsys.readouterr().err
    assert toml.read_text() == after


class Terminal(io.StringIO):
    """What the chat writes to, as a terminal: rich and textual-image draw into it for real."""

    def isatty(self) -> bool:
        return True


def drawn_cells(out: Terminal) -> tuple[int, int]:
    """Columns and rows of what was drawn (half-block cells, colour codes removed)."""
    rows = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in out.getvalue().rstrip("\n").split("\n")]
    return max(len(row) for row in rows), len(rows)


@pytest.mark.parametrize(
    ("size", "width", "rows"), [((200, 400), 24, 24), ((400, 200), 24, 6), ((300, 300), 40, 20)]
)
def test_terminal_faces_keep_their_shape_at_the_width_asked(tmp_path: Path, size, width, rows) -> None:
    from textual_image.renderable.halfcell import Image as HalfCells

    path = tmp_path / "face.png"
    Image.new("RGB", size, (200, 60, 90)).save(path)
    out = Terminal()
    faces = TerminalFaces(out, width=width, renderable=HalfCells)
    assert faces.show(path, None)
    # A half-block cell is twice as tall as it is wide and holds two pixel rows: a picture twice as
    # tall as wide takes as many rows as columns.
    assert drawn_cells(out) == (width, rows)


def test_terminal_faces_show_the_face_and_its_marks(tmp_path: Path) -> None:
    from textual_image.renderable.halfcell import Image as HalfCells

    path = tmp_path / "face.png"
    Image.new("RGB", (512, 640), (10, 10, 10)).save(path)
    out = Terminal()
    TerminalFaces(out, width=32, renderable=HalfCells).show(path, (166, 200, 180, 190))
    # The face box with 30 % around it (room for a drawn face's marks): 288 x 304 pixels.
    assert drawn_cells(out) == (32, round(32 * 304 / 288 / 2))
    assert face_crop(Image.open(path), (166, 200, 180, 190)).size == (288, 304)
