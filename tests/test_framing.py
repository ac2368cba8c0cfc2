"""Faces people can see at the size Discord shows them: where a portrait's face is small (a full-body
card), every face is shown as a bust framed on it, the marks drawn at the bust's scale; the frame is the
same for every label, and renders, the portrait and the terminal follow it."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.cli.main import main as cli_main
from bot.config import DEFAULT_LABELS, Config, load_config
from bot.expressions import ExpressionService
from bot.expressions.framing import SHOWN, frame_for, shown_scale
from bot.personas import PersonaLibrary
from bot.store import Store

from .support.configs import write_config

CARDS = Path(__file__).resolve().parent.parent.parent / "shared" / "cards"
needs_cards = pytest.mark.skipif(not CARDS.is_dir(), reason="../shared/cards is not beside this checkout")
LABELS = list(DEFAULT_LABELS)
# Visibly different: CIE76 colour distance above 10 (about four just-noticeable differences: plain to
# anyone looking, not a shift only an instrument sees) over at least a 16x16-pixel patch's worth of the
# face region, in the picture as Discord shows it.
VISIBLE_DELTA_E = 10.0
VISIBLE_PIXELS = 256
# Readable: the face spans at least a fifth of the 400 pixels Discord shows (80 pixels: eyes, mouth and
# a blush can be told apart; at 30-40 pixels, as a full-body card's face is shown, they cannot).
READABLE_FACE = 0.2


def as_shown(image: Image.Image) -> Image.Image:
    """The picture as Discord shows an attachment: scaled (never enlarged) to fit 400 by 400 pixels."""
    scale = shown_scale(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def lab(image: Image.Image) -> np.ndarray:
    """CIELAB (D65) of an sRGB picture."""
    rgb = np.asarray(image, dtype=np.float64) / 255.0
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = (
        linear
        @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
        / np.array([0.95047, 1.0, 1.08883])
    )
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def face_region(box: tuple[int, int, int, int], scale: float, size: tuple[int, int]) -> tuple[slice, slice]:
    """The face box as shown, grown by half its size each way (the marks sit around the head)."""
    x, y, w, h = (v * scale for v in box)
    top, bottom = max(0, int(y - h / 2)), min(size[1], int(y + 1.5 * h))
    left, right = max(0, int(x - w / 2)), min(size[0], int(x + 1.5 * w))
    return slice(top, bottom), slice(left, right)


def visible_difference(a: Image.Image, b: Image.Image, region: tuple[slice, slice]) -> int:
    """Pixels of the region whose colours differ visibly between two pictures of the same size."""
    distance = np.linalg.norm(lab(a)[region] - lab(b)[region], axis=-1)
    return int((distance > VISIBLE_DELTA_E).sum())


async def shown_faces(service: ExpressionService, slug: str) -> tuple[dict[str, Image.Image], tuple]:
    """Every label's face as Discord shows it, and the face box in those pictures."""
    persona = service.personas.load(slug)
    faces, boxes = {}, set()
    for label in LABELS:
        image = await service.image_for(persona, label)
        assert image.path is not None and image.box is not None
        with Image.open(image.path) as picture:
            faces[label] = picture.convert("RGB")
        boxes.add((faces[label].size, image.box))
    assert len(boxes) == 1, boxes  # one frame for every label: the character does not jump
    ((size, box),) = boxes
    return faces, (size, box)


def check_legible(faces: dict[str, Image.Image], size: tuple[int, int], box: tuple[int, int, int, int]):
    scale = shown_scale(size)
    assert box[2] * scale >= READABLE_FACE * SHOWN, (box, size)
    shown = {label: as_shown(face) for label, face in faces.items()}
    region = face_region(box, scale, next(iter(shown.values())).size)
    for a, b in itertools.combinations(LABELS, 2):
        assert visible_difference(shown[a], shown[b], region) >= VISIBLE_PIXELS, (a, b)


def import_card(config: Config, card: Path) -> None:
    assert cli_main(["--config", str(config.root / "config.toml"), "persona", "import", str(card)]) == 0


# -- the rule --------------------------------------------------------------------------------------------


def test_a_large_face_or_no_face_shows_the_whole_picture() -> None:
    assert frame_for((512, 640), (166, 200, 180, 190), 0.25, 0.4) is None  # Mira: 112 of 400 pixels
    assert frame_for((512, 640), None, 0.25, 0.4) is None
    assert frame_for((832, 1216), (380, 120, 90, 95), 0.0, 0.4) is None  # framing off


def test_a_small_face_is_framed_as_a_bust_inside_the_picture() -> None:
    for size, box in (
        ((832, 1216), (380, 120, 90, 95)),  # full body, face near the top
        ((832, 1216), (0, 0, 60, 60)),  # in the corner: the frame moves inside the picture
        ((832, 1216), (760, 1150, 60, 60)),
        ((300, 2000), (100, 900, 50, 50)),  # narrower than a bust would be
    ):
        frame = frame_for(size, box, 0.25, 0.4)
        assert frame is not None
        left, top, right, bottom = frame.crop
        assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]
        x, y, w, h = box
        assert left <= x and x + w <= right and top <= y and y + h <= bottom  # the whole face is in
        assert max(frame.size) >= SHOWN  # enlarged to what Discord shows, marks drawn at that scale
        shown = frame.box_in_frame(box)
        assert shown[2] * shown_scale(frame.size) >= READABLE_FACE * SHOWN


# -- on real cards ---------------------------------------------------------------------------------------


@needs_cards
async def test_every_card_with_a_face_shows_every_label_visibly_different_at_discord_size(
    drawn_service: ExpressionService,
) -> None:
    service = drawn_service
    config = service.config
    framed = []
    for card in sorted(CARDS.glob("*.png")):
        import_card(config, card)
    library = PersonaLibrary.from_config(config)
    personas = [library.load(slug) for slug in library.names()]
    with_faces = [p for p in personas if p.face_box is not None and p.slug not in ("mira", "tobin")]
    assert {p.slug for p in with_faces} >= {"seraphina", "shodan"}
    for persona in with_faces:
        faces, (size, box) = await shown_faces(service, persona.slug)
        check_legible(faces, size, box)
        framed.append(size != Image.open(library.portrait_path(persona)).size)  # type: ignore[arg-type]
    assert any(framed)  # Seraphina's face is a fifth of what Discord shows: she is shown as a bust


@needs_cards
async def test_a_full_body_card_is_legible_only_because_it_is_framed(tmp_path: Path) -> None:
    """Seraphina drawn small on a tall canvas, as full-body cards are: framed, every label reads; with
    framing off, the same test fails (the face is a 40-pixel smudge)."""
    for framing, legible in (("", True), ("framing_min_face = 0\n", False)):
        root = tmp_path / ("on" if legible else "off")
        config = load_config(write_config(root, f"[expressions]\n{framing}", sprites=False))
        with Image.open(CARDS / "st_seraphina.png") as card:
            small = card.convert("RGB").resize((200, 300), Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (832, 1216), (70, 110, 80))
        canvas.paste(small, (316, 40))
        canvas.save(root / "avatars" / "full.png")
        (root / "persona" / "full.toml").write_text(
            'name = "Full"\ndescription = "d"\n'
            '[portrait]\nimage = "full.png"\nface_box = [385, 80, 62, 62]\n',
            "utf-8",
        )
        store = await Store.open(config.resolve(config.store.path))
        service = ExpressionService(config, store, PersonaLibrary.from_config(config))
        try:
            faces, (size, box) = await shown_faces(service, "full")
            if legible:
                check_legible(faces, size, box)
            else:
                with pytest.raises(AssertionError):
                    check_legible(faces, size, box)
        finally:
            await service.close()
            await store.close()


# -- every picture follows the frame ---------------------------------------------------------------------


@pytest.fixture
async def framed_service(drawn_service: ExpressionService) -> ExpressionService:
    service = drawn_service
    """Mira with a face small enough to be framed."""
    persona = service.personas.load("mira")
    service.personas.set_face_box(persona, (220, 120, 60, 60))
    return service


async def test_renders_and_the_portrait_are_framed_as_the_drawn_faces_are(
    framed_service: ExpressionService,
) -> None:
    service = framed_service
    persona = service.personas.load("mira")
    joy, neutral = await service.image_for(persona, "joy"), await service.image_for(persona, "neutral")
    portrait = service.personas.portrait_path(persona)
    assert joy.path is not None and neutral.path is not None and portrait is not None
    assert neutral.path != portrait and joy.box == neutral.box
    frame = frame_for((512, 640), (220, 120, 60, 60), 0.25, 0.4)
    assert frame is not None and joy.box == frame.box_in_frame((220, 120, 60, 60))
    with Image.open(portrait) as original, Image.open(neutral.path) as shown:
        assert shown.size == frame.size
        assert shown.convert("RGB").tobytes() == frame.apply(original.convert("RGB")).tobytes()
    # A render (any picture of the portrait's size) gets the same crop, made once.
    render = service.cache_dir / "mira" / "render-joy.png"
    render.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (512, 640), "purple").save(render)
    framed = service.drawn_faces.framed(persona, render)
    assert framed != render and framed.parent.name == "framed"
    with Image.open(framed) as picture:
        assert picture.size == frame.size and picture.getpixel((5, 5)) == (128, 0, 128)
    made = framed.stat().st_mtime_ns
    assert service.drawn_faces.framed(persona, render) == framed and framed.stat().st_mtime_ns == made
    # What the studio lists is what Discord gets.
    assert (await service.face_source(persona, "neutral"))[0] == neutral.path


async def test_hand_made_sprites_are_shown_as_they_were_made(framed_service: ExpressionService) -> None:
    service = framed_service
    persona = service.personas.load("mira")
    folder = service.sprites_dir / "mira"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64), "blue").save(folder / "joy.png")
    assert (await service.image_for(persona, "joy")).path == folder / "joy.png"


async def test_the_terminal_crops_the_face_where_it_lies_in_the_framed_picture(
    framed_service: ExpressionService,
) -> None:
    from bot.terminal.faces import face_crop

    persona = framed_service.personas.load("mira")
    image = await framed_service.image_for(persona, "sadness")
    assert image.path is not None and image.box is not None
    with Image.open(image.path) as picture:
        crop = face_crop(picture, image.box)
    _, _, w, h = image.box
    # The face with its margin, inside the bust: not a corner of the bust cut at the portrait's box.
    assert crop.width >= w and crop.height >= h and crop.width < picture.width
