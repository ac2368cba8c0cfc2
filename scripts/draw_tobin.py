"""Draws the second example persona's original art: avatars/tobin.png (the old ferryman's portrait) and
his hand-made expression set, avatars/sprites/tobin/LABEL.png for each of the 10 default labels. The
PNGs are committed; run this again only to change the drawing.

As for Mira (scripts/draw_mira.py, whose expression recipes and writer this reuses), every expression
is the whole picture drawn with that expression's eyes, brows, mouth, blush and tears, and only the face
box is pasted onto the portrait, so every pixel outside the face box is the portrait's own.
"""

from __future__ import annotations

import math

from draw_mira import Face, heart, write_set
from PIL import Image, ImageDraw, ImageFilter

W, H = 512, 640
FACE_BOX = (166, 200, 180, 190)  # x, y, width, height: the same as persona/tobin.toml's face_box
EYES = (222, 290)
EYE_Y = 268
MOUTH = (256, 352)
INK = (52, 36, 30)
SKIN = (222, 178, 146)
BEARD = (232, 230, 224)
BEARD_SHADE = (196, 192, 186)
CAP = (128, 36, 40)
BLUSH = (236, 120, 110)
TEAR = (150, 200, 245)


def background(draw: ImageDraw.ImageDraw) -> None:
    for y in range(H):  # the keeper's room by lamplight: warm at the top, dark below
        t = y / H
        draw.line([(0, y), (W, y)], fill=(int(92 - 50 * t), int(62 - 36 * t), int(40 - 18 * t)))
    for x in range(0, W, 64):  # plank seams
        draw.line([(x, 0), (x, H)], fill=(48, 30, 20), width=3)
    draw.ellipse([26, 60, 156, 190], fill=(70, 60, 52))  # a porthole on a stormy sea
    draw.ellipse([36, 70, 146, 180], fill=(38, 52, 78))
    for i in range(4):
        y = 128 + i * 12
        draw.arc([40, y - 10, 142, y + 10], 200, 340, fill=(120, 150, 180), width=2)
    draw.polygon([(70, 640), (130, 470), (382, 470), (442, 640)], fill=(34, 44, 70))  # pea coat
    draw.polygon([(200, 470), (256, 560), (312, 470)], fill=(24, 30, 50))  # collar
    draw.ellipse([160, 250, 190, 310], fill=SKIN)  # ears
    draw.ellipse([322, 250, 352, 310], fill=SKIN)
    draw.ellipse([178, 160, 334, 400], fill=SKIN)  # face
    # The beard: a broad white shape from the cheekbones to well below the chin, then the moustache.
    draw.polygon([(184, 300), (200, 420), (256, 486), (312, 420), (328, 300), (256, 330)], fill=BEARD)
    draw.ellipse([184, 300, 328, 470], fill=BEARD)
    for i in range(7):  # a few strands
        x = 206 + i * 17
        draw.line([(x, 380), (x + 4, 450 - abs(i - 3) * 10)], fill=BEARD_SHADE, width=2)
    draw.chord([150, 96, 362, 300], 180, 360, fill=CAP)  # wool cap
    draw.rectangle([160, 186, 352, 214], fill=(104, 26, 32))  # its folded brim
    for x in range(170, 350, 12):
        draw.line([(x, 188), (x, 212)], fill=(90, 22, 28), width=2)
    draw.ellipse([242, 280, 272, 318], fill=(206, 140, 120))  # a weathered nose


def moustache(draw: ImageDraw.ImageDraw) -> None:
    x, y = MOUTH
    draw.chord([x - 50, y - 30, x + 2, y + 4], 180, 360, fill=BEARD)
    draw.chord([x - 2, y - 30, x + 50, y + 4], 180, 360, fill=BEARD)
    draw.arc([x - 50, y - 30, x + 2, y + 4], 200, 340, fill=BEARD_SHADE, width=2)
    draw.arc([x - 2, y - 30, x + 50, y + 4], 200, 340, fill=BEARD_SHADE, width=2)


def pipe(draw: ImageDraw.ImageDraw) -> None:
    x, y = MOUTH
    draw.line([(x + 26, y + 4), (x + 62, y + 16)], fill=(70, 44, 28), width=6)
    draw.rectangle([x + 56, y + 2, x + 78, y + 34], fill=(96, 58, 34), outline=(60, 36, 22), width=2)


def eyes(draw: ImageDraw.ImageDraw, face: Face) -> None:
    dx, dy = face.look
    for side, cx in zip((-1, 1), EYES, strict=True):
        outer = cx + side * 20
        for k in (-1, 0, 1):  # crow's feet: forty years of squinting at the sea
            draw.line([(outer, EYE_Y), (outer + side * 10, EYE_Y + k * 6)], fill=(170, 120, 96), width=2)
        if face.eyes == "closed_happy":
            draw.arc([cx - 14, EYE_Y - 6, cx + 14, EYE_Y + 12], 200, 340, fill=INK, width=4)
            continue
        if face.eyes == "hearts":
            heart(draw, cx, EYE_Y + 2, 11, (210, 50, 80))
            continue
        half_height = {"wide": 14, "narrow": 5, "half": 8}.get(face.eyes, 10)
        half_width = 14 if face.eyes == "wide" else 12
        draw.ellipse(
            [cx - half_width, EYE_Y - half_height, cx + half_width, EYE_Y + half_height], fill=(250, 246, 236)
        )
        pupil = 5 if face.eyes == "wide" else 7
        draw.ellipse(
            [cx - pupil + dx, EYE_Y - pupil + dy, cx + pupil + dx, EYE_Y + pupil + dy], fill=(60, 80, 110)
        )
        draw.ellipse([cx - 2 + dx, EYE_Y - 4 + dy, cx + 2 + dx, EYE_Y + dy], fill=(255, 255, 255))
        if face.eyes in ("half", "narrow"):  # heavy lids
            top = EYE_Y - half_height
            draw.rectangle([cx - 16, top - 8, cx + 16, top + 2], fill=SKIN)
            draw.line([(cx - 14, top + 2), (cx + 14, top + 2)], fill=INK, width=3)


def brows(draw: ImageDraw.ImageDraw, face: Face) -> None:
    """Bushy white brows: each stroke drawn dark and then white, so it reads on the skin."""
    for side, cx in zip((-1, 1), EYES, strict=True):
        inner, outer = cx - side * 20, cx + side * 20
        if face.brows == "raised":
            lines = [(inner, 236), (cx, 226), (outer, 236)]
        elif face.brows == "sad":
            lines = [(inner, 234), (cx, 240), (outer, 250)]
        elif face.brows == "angry":
            lines = [(inner, 256), (cx, 248), (outer, 238)]
        elif face.brows == "puzzled":
            lines = (
                [(inner, 234), (cx, 224), (outer, 232)]
                if side < 0
                else [(inner, 250), (cx, 248), (outer, 246)]
            )
        else:
            lines = [(inner, 246), (cx, 240), (outer, 244)]
        draw.line(lines, fill=(150, 146, 140), width=12, joint="curve")
        draw.line(lines, fill=BEARD, width=8, joint="curve")


def mouth(draw: ImageDraw.ImageDraw, face: Face) -> None:
    x, y = MOUTH
    dark = (96, 40, 40)
    kind = face.mouth
    if kind == "smile":
        draw.arc([x - 22, y - 6, x + 22, y + 16], 20, 160, fill=dark, width=4)
    elif kind == "grin":
        draw.chord([x - 24, y - 6, x + 24, y + 22], 0, 180, fill=dark)
        draw.chord([x - 20, y - 4, x + 20, y + 8], 0, 180, fill=(245, 240, 225))
    elif kind == "laugh":
        draw.chord([x - 26, y - 8, x + 26, y + 34], 0, 180, fill=dark)
        draw.ellipse([x - 10, y + 14, x + 10, y + 28], fill=(210, 100, 100))
    elif kind == "frown":
        draw.arc([x - 22, y + 6, x + 22, y + 28], 200, 340, fill=dark, width=4)
    elif kind == "snarl":
        draw.rectangle([x - 20, y + 2, x + 20, y + 14], fill=(245, 240, 225), outline=dark, width=3)
    elif kind == "o":
        draw.ellipse([x - 10, y, x + 10, y + 24], fill=dark)
    elif kind == "wavy":
        points = [(x - 20 + i, y + 10 + 3 * math.sin(i / 3.0)) for i in range(0, 41, 2)]
        draw.line(points, fill=dark, width=3)
    elif kind == "skew":
        draw.line([(x - 18, y + 14), (x + 16, y + 6)], fill=dark, width=4)


def extras(draw: ImageDraw.ImageDraw, face: Face) -> None:
    if face.blush:
        for cx in (EYES[0] - 14, EYES[1] + 14):
            draw.ellipse([cx - 18, 292, cx + 18, 310], fill=BLUSH)
            if face.blush > 1:
                for i in range(-10, 11, 8):
                    draw.line([(cx + i - 4, 306), (cx + i + 4, 296)], fill=(200, 80, 80), width=2)
    if face.tears:
        for cx in EYES:
            draw.polygon([(cx - 8, EYE_Y + 10), (cx - 14, EYE_Y + 30), (cx - 2, EYE_Y + 30)], fill=TEAR)
            draw.ellipse([cx - 15, EYE_Y + 24, cx - 1, EYE_Y + 38], fill=TEAR)
    if face.mark == "sweat":
        draw.polygon([(326, 228), (318, 250), (334, 250)], fill=TEAR)
        draw.ellipse([317, 242, 335, 260], fill=TEAR)
    elif face.mark == "question":
        draw.arc([314, 222, 338, 246], 180, 90, fill=(250, 240, 200), width=4)
        draw.line([(326, 246), (326, 256)], fill=(250, 240, 200), width=4)
        draw.ellipse([323, 262, 329, 268], fill=(250, 240, 200))
    elif face.mark == "heart":
        heart(draw, 330, 236, 12, (220, 60, 100))


def draw(face: Face) -> Image.Image:
    image = Image.new("RGB", (W, H))
    canvas = ImageDraw.Draw(image)
    background(canvas)
    extras(canvas, face)
    eyes(canvas, face)
    brows(canvas, face)
    mouth(canvas, face)
    moustache(canvas)
    pipe(canvas)
    return image.filter(ImageFilter.SMOOTH)


def main() -> None:
    write_set("tobin", draw, FACE_BOX)


if __name__ == "__main__":
    main()
