"""Faces with no model: the drawn set (marks placed on the face box or a corner badge), its cache and
its place among the faces, and the face detection that gives imported cards their box."""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.cli.main import main as cli_main
from bot.config import Config, load_config
from bot.errors import ExpressionError
from bot.expressions import ExpressionService
from bot.expressions.detect import STRONG_NEIGHBOURS, FaceFinding, find_face
from bot.expressions.drawn import LOOKS, draw_face, looks_for
from bot.personas import PersonaLibrary
from bot.store import Store

from .support.configs import shipped, write_config

REPO = Path(__file__).resolve().parent.parent
CARDS = REPO.parent / "shared" / "cards"
LABELS = list(LOOKS)  # the ten default labels
MIRA_BOX = (166, 200, 180, 190)
DISCORD_SIZE = 128  # a face as small as Discord shows it on a phone
needs_cards = pytest.mark.skipif(not CARDS.is_dir(), reason="../shared/cards is not beside this checkout")


def mira() -> Image.Image:
    with Image.open(shipped() / "avatars" / "mira.png") as image:
        return image.convert("RGB")


def small(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((DISCORD_SIZE, DISCORD_SIZE * image.height // image.width)))


def changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    return np.any(np.asarray(before.convert("RGBA")) != np.asarray(after.convert("RGBA")), axis=2)


@pytest.mark.parametrize("box", [MIRA_BOX, None], ids=["face box", "badge"])
def test_every_label_looks_different_at_discord_size(box) -> None:
    labels = [*LABELS, "smug", "happy", "determined"]  # happy: a second joy, drawn as its own tag
    faces = {label: small(draw_face(mira(), box, label, labels)) for label in labels}
    for a, b in itertools.combinations(labels, 2):
        # Pixels that differ plainly (by more than 48 of 255 in a channel) at thumbnail size: at least
        # an 8x8 patch of the 128-pixel-wide picture.
        plain = (np.abs(faces[a].astype(int) - faces[b].astype(int)).max(axis=2) > 48).sum()
        assert plain >= 64, (a, b, plain)


def test_only_the_marks_change_pixels() -> None:
    portrait = mira()
    x, y, w, h = MIRA_BOX
    for label in LABELS:
        moved = changed(portrait, draw_face(portrait, MIRA_BOX, label, LABELS))
        rows, cols = np.nonzero(moved)
        if label == "neutral":
            assert not moved.any()  # neutral is the portrait itself
            continue
        assert moved.sum() > 0.05 * w * h, label  # visible: at least a twentieth of the face's area
        # Every changed pixel lies around the face (the box grown by half its size), none elsewhere.
        assert rows.min() >= y - h // 2 and rows.max() < y + h + h // 2, label
        assert cols.min() >= x - w // 2 and cols.max() < x + w + w // 2, label
    # The tint and the tears stay on the face itself (give or take the smoothing of their edges).
    rows, cols = np.nonzero(changed(portrait, draw_face(portrait, MIRA_BOX, "sadness", LABELS)))
    assert rows.min() >= y - 3 and rows.max() < y + h + 3 and cols.min() >= x - 3 and cols.max() < x + w + 3


def test_without_a_face_box_the_mark_is_a_corner_badge() -> None:
    portrait = mira()
    side = round(0.34 * min(portrait.size))
    for label in LABELS[1:]:
        rows, cols = np.nonzero(changed(portrait, draw_face(portrait, None, label, LABELS)))
        assert rows.min() >= portrait.height - side - side // 12 - 1, label  # the bottom-right corner
        assert cols.min() >= portrait.width - side - side // 12 - 1, label
    assert not changed(portrait, draw_face(portrait, None, "neutral", LABELS)).any()


def test_drawing_is_deterministic_and_keeps_mode_and_transparency() -> None:
    portrait = mira().convert("RGBA")
    alpha = np.asarray(portrait)[..., 3].copy()
    alpha[:100] = 0  # a transparent band at the top, as cut-out portraits have
    portrait.putalpha(Image.fromarray(alpha))
    one = draw_face(portrait, MIRA_BOX, "love", LABELS)
    two = draw_face(portrait, MIRA_BOX, "love", LABELS)
    assert one.mode == "RGBA" and one.tobytes() == two.tobytes()
    outside = ~changed(portrait, one)
    assert np.array_equal(np.asarray(one)[..., 3][outside], alpha[outside])
    assert draw_face(mira().convert("L"), MIRA_BOX, "joy", LABELS).mode == "L"


def test_marks_scale_with_the_face() -> None:
    canvas = Image.new("RGB", (1600, 1600), (90, 120, 150))
    small_box, large_box = (600, 600, 150, 150), (500, 500, 600, 600)
    for label in ("anger", "question", "tears"):
        small_area = changed(canvas, draw_face(canvas, small_box, label, LABELS)).sum()
        large_area = changed(canvas, draw_face(canvas, large_box, label, LABELS)).sum()
        assert 10 < large_area / small_area < 22, label  # 4x the side: about 16x the area


def test_a_face_at_the_edge_keeps_its_marks_inside_the_picture() -> None:
    portrait = mira()
    corner = (portrait.width - 120, 0, 120, 120)  # top right: the "?" would sit outside
    face = draw_face(portrait, corner, "confusion", LABELS)
    assert face.size == portrait.size
    rows, cols = np.nonzero(changed(portrait, face))
    assert cols.min() >= corner[0] - 60 and rows.max() < corner[3] + 60
    # The mark was moved in, not cut: as many pixels change as for the same face in the middle.
    middle = changed(portrait, draw_face(portrait, (200, 200, 120, 120), "confusion", LABELS)).sum()
    assert 0.9 < changed(portrait, face).sum() / middle < 1.1


def test_labels_with_a_known_meaning_get_its_look_once() -> None:
    looks = looks_for(["happy", "joy", "angry", "smug"])
    assert looks["happy"] == LOOKS["joy"]  # a synonym takes the look
    assert looks["joy"].symbol == "tag"  # joy's look is taken: a tag of its own
    assert looks["angry"] == LOOKS["anger"]
    assert looks["smug"].symbol == "tag"


# -- the drawn faces in the service --------------------------------------------------------------------


async def test_without_a_model_each_label_shows_its_drawn_face(drawn_service: ExpressionService) -> None:
    persona = drawn_service.personas.load("mira")
    portrait = drawn_service.personas.portrait_path(persona)
    paths = {label: (await drawn_service.image_for(persona, label)).path for label in persona.labels}
    assert paths["neutral"] == portrait
    assert len(set(paths.values())) == len(persona.labels)  # one face per label
    with Image.open(portrait) as original:  # type: ignore[arg-type]
        for label, path in paths.items():
            assert path is not None
            with Image.open(path) as face:
                expected = draw_face(original, MIRA_BOX, label, persona.labels)
                assert face.tobytes() == expected.tobytes(), label


async def test_drawn_faces_are_cached_and_follow_portrait_and_box(drawn_service: ExpressionService) -> None:
    library = drawn_service.personas
    persona = library.load("mira")
    first = await drawn_service.drawn(persona, "joy")
    assert first is not None
    made = first.stat().st_mtime_ns
    drawn_service.drawn_faces._memo.clear()  # a restart: the file on disk is found again, not redrawn
    again = await drawn_service.drawn(persona, "joy")
    assert again == first and first.stat().st_mtime_ns == made
    # Another box: another face, and the old one is removed.
    moved = dataclasses.replace(persona, face_box=(100, 100, 200, 200))
    second = await drawn_service.drawn(moved, "joy")
    assert second is not None and second != first and not first.exists()
    # Another portrait (same size, new pixels): drawn anew.
    portrait = library.portrait_path(persona)
    assert portrait is not None
    with Image.open(portrait) as image:
        image.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(portrait)
    os.utime(portrait, ns=(made + 10**9, made + 10**9))
    third = await drawn_service.drawn(moved, "joy")
    assert third is not None and third != second
    # Other labels' faces stay.
    sad = await drawn_service.drawn(moved, "sadness")
    await drawn_service.drawn(dataclasses.replace(persona, face_box=(50, 50, 100, 100)), "joy")
    assert sad is not None and sad.exists()


async def test_sprites_win_over_drawn_faces_and_drawn_can_be_switched_off(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, "[expressions]\ndrawn = false\n", sprites=False))
    store = await Store.open(config.resolve(config.store.path))
    service = ExpressionService(config, store, PersonaLibrary.from_config(config))
    try:
        persona = service.personas.load("mira")
        assert (await service.image_for(persona, "joy")).path == service.personas.portrait_path(persona)
        folder = service.sprites_dir / "mira"
        folder.mkdir(parents=True)
        Image.new("RGB", (64, 64), "red").save(folder / "neutral.png")
        assert (await service.image_for(persona, "joy")).path == folder / "neutral.png"
        service.settings = dataclasses.replace(service.settings, drawn=True)
        drawn = await service.image_for(persona, "joy")
        assert drawn.path == await service.drawn(persona, "joy") and drawn.path.parent.name == "drawn"
        Image.new("RGB", (64, 64), "blue").save(folder / "joy.png")
        assert (await service.image_for(persona, "joy")).path == folder / "joy.png"
    finally:
        await service.close()
        await store.close()


async def test_a_face_box_outside_the_portrait_falls_back_to_the_badge(
    drawn_service: ExpressionService, caplog: pytest.LogCaptureFixture
) -> None:
    persona = dataclasses.replace(drawn_service.personas.load("mira"), face_box=(480, 600, 100, 100))
    path = await drawn_service.image_for(persona, "anger")
    await drawn_service.image_for(persona, "joy")
    assert path.path is not None
    with Image.open(path.path) as face:
        expected = draw_face(mira(), None, "anger", persona.labels)
        assert face.convert("RGB").tobytes() == expected.tobytes()
    assert caplog.text.count("lies outside the 512x640 portrait") == 1  # said once, not every turn


async def test_a_persona_without_a_portrait_has_no_drawn_face(drawn_service: ExpressionService) -> None:
    tobin = dataclasses.replace(drawn_service.personas.load("mira"), slug="nobody", portrait="")
    assert await drawn_service.drawn(tobin, "joy") is None
    assert (await drawn_service.image_for(tobin, "joy")).path is None


async def test_the_contact_sheet_shows_drawn_faces_one_per_label(drawn_service: ExpressionService) -> None:
    persona = drawn_service.personas.load("mira")
    seen: list[tuple[int, int]] = []
    faces = await drawn_service.render_all(
        persona, list(persona.labels), 3, lambda d, t, _: seen.append((d, t))
    )
    assert [name for name, _ in faces] == list(persona.labels)  # no variants without a model
    assert faces[1][1] == await drawn_service.drawn(persona, "joy")
    assert seen[-1] == (10, 10)


# -- face detection --------------------------------------------------------------------------------------


def overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two x, y, w, h boxes."""
    w = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


@needs_cards
def test_seraphinas_face_is_found_not_her_hand() -> None:
    with Image.open(CARDS / "st_seraphina.png") as card:
        finding = find_face(card)
    face, hand = (155, 90, 95, 95), (270, 429, 98, 98)  # marked by eye on the card
    assert finding.strong and finding.detector == "anime" and finding.box is not None
    assert overlap(finding.box, face) > 0.4 and overlap(finding.box, hand) == 0


@needs_cards
def test_a_face_found_on_a_large_portrait_is_placed_on_the_portrait() -> None:
    """Large portraits are searched at a reduced size: the box found there comes back in the portrait's
    own pixels, on the face (not on a shrunken copy's coordinates)."""
    with Image.open(CARDS / "st_seraphina.png") as card:
        large = card.convert("RGB").resize((card.width * 3, card.height * 3), Image.Resampling.LANCZOS)
    assert max(large.size) > 1024
    finding = find_face(large)
    face, hand = (155 * 3, 90 * 3, 95 * 3, 95 * 3), (270 * 3, 429 * 3, 98 * 3, 98 * 3)
    assert finding.strong and finding.box is not None
    assert overlap(finding.box, face) > 0.4 and overlap(finding.box, hand) == 0


@needs_cards
def test_a_hooded_face_a_logo_and_a_plain_circle_find_nothing() -> None:
    for card in ("aicharlib_melina.png", "choral_default_chan.png", "ossirytk_skynet.png"):
        with Image.open(CARDS / card) as image:
            assert not find_face(image).strong, card


def test_a_weak_match_is_not_kept_and_says_how_to_set_the_box() -> None:
    weak = FaceFinding((132, 164, 241, 241), "photo", STRONG_NEIGHBOURS - 1)
    line = weak.describe("run `persona face mira --box {box}`")
    assert not weak.strong
    assert "weak photo face match at [132, 164, 241, 241], not used" in line
    assert "--box 132 164 241 241" in line
    assert "--box X Y WIDTH HEIGHT" in FaceFinding(None).describe("run `--box {box}`")


def test_opencv_without_cascades_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenCV 5 moved cascade classifiers to opencv-contrib: with the plain 5.x package the finding
    names the fix instead of raising AttributeError."""
    import types

    five = types.ModuleType("cv2")
    five.__version__ = "5.0.0"  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "cv2", five)
    with pytest.raises(ExpressionError, match=r"OpenCV 5.0.0 has no cascade classifier: install"):
        find_face(mira())


@needs_cards
def test_importing_cards_keeps_found_faces_and_says_how_to_mark_the_rest(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--config", str(config.root / "config.toml"), "persona", "import"]
    for card in ("st_seraphina.png", "aicharlib_melina.png", "ossirytk_shodan.png", "ossirytk_skynet.png"):
        assert cli_main([*args, str(CARDS / card)]) == 0
    out = capsys.readouterr().out
    library = PersonaLibrary.from_config(config)
    seraphina = library.load("seraphina").face_box
    assert seraphina is not None and overlap(seraphina, (155, 90, 95, 95)) > 0.4
    assert "Seraphina: face found by the anime detector at [138, 79, 125, 125]" in out
    assert (config.resolve(config.store.path).parent / "seraphina-face.png").is_file()  # the preview
    assert library.load("shodan").face_box is not None  # a photographic face
    for slug, name in (("melina", "Melina"), ("skynet", "Skynet")):
        assert library.load(slug).face_box is None
        assert f"{name}: no face found in the portrait; faces show as a badge." in out
        # The studio's drag box first (no guessing numbers), the command second.
        assert (
            "To mark the face, drag the box over it in the studio (./run studio), or run"
            f" `./run persona face {slug} --box X Y WIDTH HEIGHT`" in out
        )


def test_persona_face_detect_keeps_a_box_it_is_not_sure_of(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = config.root / "persona" / "mira.toml"
    before = toml.read_bytes()
    assert (
        cli_main(["--config", str(config.root / "config.toml"), "persona", "face", "mira", "--detect"]) == 0
    )
    out = capsys.readouterr().out
    assert "only a weak photo face match" in out and "the face region stays as it was" in out
    assert toml.read_bytes() == before


async def test_listings_say_where_each_personas_faces_come_from(drawn_service: ExpressionService) -> None:
    library = drawn_service.personas
    mira = library.load("mira")
    assert drawn_service.kind_of_faces(mira) == "drawn faces"
    folder = drawn_service.sprites_dir / "mira"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "joy.png")
    assert drawn_service.kind_of_faces(mira) == "hand-made (1 of 10), drawn faces"
    for label in mira.labels:
        Image.new("RGB", (8, 8)).save(folder / f"{label}.png")
    assert drawn_service.kind_of_faces(mira) == "hand-made faces"
    nobody = dataclasses.replace(mira, slug="nobody", portrait="")
    assert drawn_service.kind_of_faces(nobody) == "no portrait"


def test_a_card_that_carries_its_face_box_keeps_it(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--config", str(config.root / "config.toml"), "persona"]
    card = config.root / "mira-card.png"
    assert cli_main([*args, "export", "mira", str(card)]) == 0
    assert cli_main([*args, "import", str(card), "--name", "mira-again"]) == 0
    out = capsys.readouterr().out
    assert PersonaLibrary.from_config(config).load("mira-again").face_box == MIRA_BOX
    assert "face" not in out.split("imported", 1)[1].split("\n", 1)[1]  # nothing looked for, nothing said


@needs_cards
def test_an_import_stands_when_its_face_cannot_be_looked_for(
    config: Config, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import bot.cli.persona as persona_cli

    def unreadable(*_args, **_kwargs):
        raise ExpressionError("portrait avatars/seraphina.png cannot be read: Input/output error")

    monkeypatch.setattr(persona_cli, "locate_face", unreadable)
    card = str(CARDS / "st_seraphina.png")
    assert cli_main(["--config", str(config.root / "config.toml"), "persona", "import", card]) == 0
    out = capsys.readouterr().out
    assert "imported 'Seraphina'" in out and "its face could not be looked for: portrait" in out
    assert PersonaLibrary.from_config(config).load("seraphina").face_box is None
