"""Draws the example persona's original art: avatars/mira.png (the portrait) and a hand-made expression
set, avatars/sprites/mira/LABEL.png for each of the 10 default labels. The PNGs are committed; run this
again only to change the drawing.

Every expression is the portrait with only the face redrawn: the whole picture is drawn with that
expression's eyes, brows, mouth, blush and tears, and only the face box is pasted onto the portrait, so
every pixel outside the face box is identical to the portrait (the tests check it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

W, H = 512, 640
FACE_BOX = (166, 200, 180, 190)  # x, y, width, height: the same as persona/mira.toml's face_box
EYES = (222, 290)  # centre x of the left and right eye
EYE_Y = 264
MOUTH = (256, 338)
INK = (60, 36, 70)
LIPS = (170, 70, 80)
BLUSH = (240, 150, 160)
TEAR = (150, 200, 245)
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Face:
    eyes: str = "open"  # open, wide, closed_happy, half, narrow, hearts
    look: tuple[int, int] = (0, 0)  # pupil offset
    brows: str = "soft"  # soft, raised, sad, angry, puzzled
    mouth: str = "smile"  # smile, grin, laugh, frown, snarl, o, small_o, wavy, skew
    blush: int = 0  # 0 none, 1 light, 2 deep with hatching
    tears: bool = False
    mark: str = ""  # sweat, question, heart


FACES: dict[str, Face] = {
    "neutral": Face(),
    "joy": Face(eyes="closed_happy", brows="raised", mouth="grin", blush=1),
    "amusement": Face(eyes="closed_happy", brows="soft", mouth="laugh", blush=1),
    "sadness": Face(eyes="half", look=(0, 3), brows="sad", mouth="frown", tears=True),
    "anger": Face(eyes="narrow", brows="angry", mouth="snarl"),
    "fear": Face(eyes="wide", brows="sad", mouth="wavy", mark="sweat"),
    "surprise": Face(eyes="wide", brows="raised", mouth="o"),
    "love": Face(eyes="hearts", brows="soft", mouth="smile", blush=2, mark="heart"),
    "embarrassment": Face(eyes="open", look=(6, 2), brows="sad", mouth="wavy", blush=2, mark="sweat"),
    "confusion": Face(eyes="open", look=(-3, -4), brows="puzzled", mouth="skew", mark="question"),
}


def background(draw: ImageDraw.ImageDraw) -> None:
    for y in range(H):  # dusk sky behind her
        t = y / H
        draw.line([(0, y), (W, y)], fill=(int(40 + 60 * t), int(50 + 30 * t), int(110 - 30 * t)))
    for i in range(40):  # a few stars
        x, y = (i * 97) % W, (i * 53) % (H // 2)
        draw.ellipse([x, y, x + 2, y + 2], fill=(230, 230, 255))
    draw.ellipse([120, 90, 392, 420], fill=(52, 34, 70))  # hair, back
    draw.polygon([(90, 640), (150, 470), (362, 470), (422, 640)], fill=(40, 110, 120))  # cloak
    draw.rectangle([228, 380, 284, 480], fill=(238, 200, 170))  # neck
    draw.ellipse([166, 150, 346, 400], fill=(245, 212, 184))  # face
    draw.pieslice([150, 110, 362, 330], 180, 360, fill=(70, 44, 92))  # fringe
    draw.line([(256, 282), (250, 318), (260, 320)], fill=(210, 160, 140), width=3)  # nose
    draw.ellipse([318, 160, 350, 192], fill=(250, 220, 120))  # moon hairpin
    draw.ellipse([328, 156, 356, 186], fill=(70, 44, 92))


def heart(draw: ImageDraw.ImageDraw, cx: int, cy: int, r: int, fill: tuple[int, int, int]) -> None:
    draw.ellipse([cx - r, cy - r, cx, cy], fill=fill)
    draw.ellipse([cx, cy - r, cx + r, cy], fill=fill)
    draw.polygon([(cx - r, cy - r // 3), (cx + r, cy - r // 3), (cx, cy + r)], fill=fill)


def eyes(draw: ImageDraw.ImageDraw, face: Face) -> None:
    dx, dy = face.look
    for cx in EYES:
        if face.eyes == "closed_happy":  # ^ ^
            draw.arc([cx - 16, EYE_Y - 8, cx + 16, EYE_Y + 14], 200, 340, fill=INK, width=4)
            continue
        if face.eyes == "hearts":
            draw.ellipse([cx - 17, EYE_Y - 14, cx + 17, EYE_Y + 14], fill=(255, 255, 255))
            heart(draw, cx, EYE_Y + 1, 11, (220, 60, 100))
            continue
        half_height = {"wide": 18, "narrow": 8, "half": 11}.get(face.eyes, 14)
        half_width = 19 if face.eyes == "wide" else 17
        pupil = 6 if face.eyes == "wide" else 9
        draw.ellipse(
            [cx - half_width, EYE_Y - half_height, cx + half_width, EYE_Y + half_height], fill=(255, 255, 255)
        )
        top = EYE_Y - half_height
        draw.ellipse(
            [cx - pupil + dx, top + 4 + dy, cx + pupil + dx, top + 4 + 2 * pupil + dy], fill=(60, 140, 130)
        )
        draw.ellipse([cx - 4 + dx, top + pupil + dy, cx + 4 + dx, top + pupil + 8 + dy], fill=(20, 20, 30))
        if face.eyes in ("half", "narrow"):  # heavy upper lid
            draw.rectangle([cx - 20, top - 6, cx + 20, top + 3], fill=(245, 212, 184))
            draw.line([(cx - 18, top + 3), (cx + 18, top + 3)], fill=INK, width=3)


def brows(draw: ImageDraw.ImageDraw, face: Face) -> None:
    for side, cx in zip((-1, 1), EYES, strict=True):
        inner, outer = cx - side * 18, cx + side * 18  # inner end is towards the nose
        if face.brows == "raised":
            draw.arc([cx - 20, 222, cx + 20, 242], 200, 340, fill=INK, width=4)
        elif face.brows == "sad":  # inner ends up
            draw.line([(inner, 232), (outer, 244)], fill=INK, width=4)
        elif face.brows == "angry":  # inner ends down, thick
            draw.line([(inner, 250), (outer, 234)], fill=INK, width=6)
        elif face.brows == "puzzled":  # one up, one down
            if side < 0:
                draw.arc([cx - 20, 220, cx + 20, 240], 200, 340, fill=INK, width=4)
            else:
                draw.line([(inner, 246), (outer, 242)], fill=INK, width=4)
        else:
            draw.arc([cx - 20, 232, cx + 20, 252], 200, 340, fill=INK, width=4)


def mouth(draw: ImageDraw.ImageDraw, face: Face) -> None:
    x, y = MOUTH
    kind = face.mouth
    if kind == "smile":
        draw.arc([x - 30, y - 16, x + 30, y + 18], 20, 160, fill=LIPS, width=4)
    elif kind == "grin":
        draw.chord([x - 30, y - 20, x + 30, y + 20], 0, 180, fill=(150, 50, 60))
        draw.chord([x - 26, y - 14, x + 26, y + 2], 0, 180, fill=(255, 255, 255))
    elif kind == "laugh":
        draw.chord([x - 32, y - 18, x + 32, y + 30], 0, 180, fill=(130, 40, 55))
        draw.ellipse([x - 14, y + 10, x + 14, y + 26], fill=(230, 110, 120))  # tongue
    elif kind == "frown":
        draw.arc([x - 26, y + 2, x + 26, y + 30], 200, 340, fill=LIPS, width=4)
    elif kind == "snarl":
        draw.rectangle([x - 24, y, x + 24, y + 12], fill=(255, 255, 255), outline=LIPS, width=3)
        for tx in range(x - 16, x + 17, 8):
            draw.line([(tx, y), (tx, y + 12)], fill=(200, 190, 190), width=1)
    elif kind == "o":
        draw.ellipse([x - 12, y - 4, x + 12, y + 24], fill=(130, 40, 55), outline=LIPS, width=2)
    elif kind == "wavy":
        points = [(x - 22 + i, y + 8 + 4 * math.sin(i / 4.0)) for i in range(0, 45, 2)]
        draw.line(points, fill=LIPS, width=3)
    elif kind == "skew":
        draw.line([(x - 20, y + 12), (x + 18, y + 4)], fill=LIPS, width=4)


def extras(draw: ImageDraw.ImageDraw, face: Face) -> None:
    left, right = EYES[0] - 30, EYES[1] + 30
    if face.blush:
        for cx in (left + 6, right - 6):
            draw.ellipse([cx - 20, 292, cx + 20, 312], fill=BLUSH)
            if face.blush > 1:
                for i in range(-12, 13, 8):
                    draw.line([(cx + i - 4, 308), (cx + i + 4, 296)], fill=(215, 100, 120), width=2)
    if face.tears:
        for cx in EYES:
            draw.polygon([(cx - 10, EYE_Y + 14), (cx - 16, EYE_Y + 34), (cx - 4, EYE_Y + 34)], fill=TEAR)
            draw.ellipse([cx - 17, EYE_Y + 28, cx - 3, EYE_Y + 42], fill=TEAR)
    if face.mark == "sweat":
        draw.polygon([(322, 222), (314, 244), (330, 244)], fill=TEAR)
        draw.ellipse([313, 236, 331, 254], fill=TEAR)
    elif face.mark == "question":
        draw.arc([306, 212, 330, 236], 180, 90, fill=(250, 240, 200), width=4)
        draw.line([(318, 236), (318, 246)], fill=(250, 240, 200), width=4)
        draw.ellipse([315, 252, 321, 258], fill=(250, 240, 200))
    elif face.mark == "heart":
        heart(draw, 322, 228, 12, (230, 70, 110))


def draw(face: Face) -> Image.Image:
    image = Image.new("RGB", (W, H))
    canvas = ImageDraw.Draw(image)
    background(canvas)
    extras(canvas, face)
    eyes(canvas, face)
    brows(canvas, face)
    mouth(canvas, face)
    return image.filter(ImageFilter.SMOOTH)


def write_set(slug: str, draw: Callable[[Face], Image.Image], face_box: tuple[int, int, int, int]) -> None:
    """avatars/SLUG.png (the neutral picture) and avatars/sprites/SLUG/LABEL.png: for each expression,
    the portrait with only the face box taken from that expression's picture."""
    portrait = draw(FACES["neutral"])
    out = ROOT / "avatars" / f"{slug}.png"
    portrait.save(out, optimize=True)
    print(f"wrote {out}")
    x, y, w, h = face_box
    sprites = ROOT / "avatars" / "sprites" / slug
    sprites.mkdir(parents=True, exist_ok=True)
    for label, face in FACES.items():
        image = portrait.copy()
        image.paste(draw(face).crop((x, y, x + w, y + h)), (x, y))
        image.save(sprites / f"{label}.png", optimize=True)
        print(f"wrote {sprites / f'{label}.png'}")


def main() -> None:
    write_set("mira", draw, FACE_BOX)


if __name__ == "__main__":
    main()
