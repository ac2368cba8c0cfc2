"""Drawn faces: an expression for any portrait with no model, in the visual language of manga, anime and
visual novels (blush, tears, a sweat drop, an anger mark, hearts, sparkles, music notes, gloom lines, "?"
and "!" marks, a tint of the face), placed relative to the face box and scaled to it. With no face box
the label's mark sits on a badge in the portrait's corner.

Only the marks change pixels: everything else is the portrait's own, byte for byte. The same portrait,
box and label always give the same picture (no randomness, no fonts from the system)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from bot.emotion.labels import canonical

DRAWN_STYLE = 1  # part of every drawn face's cache key: bump it when the drawing changes
SUPERSAMPLE = 4  # marks are drawn this much larger, then scaled down: smooth edges without blur
MAX_CANVAS = 2048  # the largest side drawn at; a 4000-pixel face box is drawn with less supersampling
BADGE = 0.34  # the corner badge's diameter, as a fraction of the portrait's shorter side

RGBA = tuple[int, int, int, int]
INK: RGBA = (40, 24, 48, 255)  # the outline around every symbol, so it reads on light and dark art
WHITE: RGBA = (255, 255, 255, 255)


@dataclass(frozen=True)
class Look:
    """How one emotion is drawn: marks around the face, a tint over it, and its badge."""

    marks: tuple[str, ...]
    tint: RGBA | None
    colour: tuple[int, int, int]  # the badge's fill
    symbol: str  # the mark on the badge ("" for none: the plain portrait)


LOOKS: dict[str, Look] = {
    "neutral": Look((), None, (200, 200, 200), ""),
    "joy": Look(("blush", "sparkles"), (255, 215, 80, 46), (250, 190, 40), "sparkles"),
    "amusement": Look(("blush", "notes"), (255, 150, 50, 40), (245, 135, 45), "notes"),
    "sadness": Look(("tears",), (60, 100, 220, 64), (70, 115, 220), "tear"),
    "anger": Look(("anger",), (235, 35, 25, 70), (215, 45, 40), "anger"),
    "fear": Look(("gloom", "sweat"), (110, 80, 170, 70), (105, 75, 160), "gloom_lines"),
    "surprise": Look(("exclaim", "shock"), None, (245, 205, 40), "exclaim"),
    "love": Look(("deep_blush", "hearts"), (255, 110, 170, 46), (235, 80, 145), "heart"),
    "embarrassment": Look(("deep_blush", "sweat"), (255, 90, 90, 36), (230, 110, 100), "sweat"),
    "confusion": Look(("question",), (120, 180, 140, 40), (70, 170, 200), "question"),
}


def looks_for(labels: Sequence[str]) -> dict[str, Look]:
    """Each of a persona's labels and how it is drawn. Labels with a known meaning (or a synonym of one:
    happy is joy) get its look; any other label, or a second synonym of a look already used, gets a
    badge with its name, so every label of a persona is drawn differently."""
    looks: dict[str, Look] = {}
    used: set[str] = set()
    for label in labels:
        meaning = label if label in LOOKS else canonical(label)
        if meaning in LOOKS and meaning not in used:
            looks[label] = LOOKS[meaning]
            used.add(meaning)
        else:
            digest = hashlib.sha256(label.encode()).digest()
            colour = (60 + digest[0] % 170, 60 + digest[1] % 170, 60 + digest[2] % 170)
            looks[label] = Look(("tag",), None, colour, "tag")
    return looks


def look_for(label: str, labels: Sequence[str]) -> Look:
    """How `label` is drawn among a persona's labels (as if it were the last one, if it is not one)."""
    return looks_for(labels if label in labels else [*labels, label])[label]


def draw_face(
    portrait: Image.Image, box: tuple[int, int, int, int] | None, label: str, labels: Sequence[str]
) -> Image.Image:
    """The portrait with `label`'s marks drawn on; a copy, in the portrait's own mode."""
    look = look_for(label, labels)
    base = portrait.convert("RGBA")
    if box is None:
        if look.symbol:
            _badge(base, look, label)
    elif look.marks or look.tint:
        _around_face(base, box, look, label)
    return base if portrait.mode == "RGBA" else base.convert(portrait.mode)


# -- placing ---------------------------------------------------------------------------------------


class _Canvas:
    """A supersampled transparent layer over one region of the portrait, in portrait coordinates."""

    def __init__(self, image: Image.Image, region: tuple[int, int, int, int]) -> None:
        left, top, right, bottom = region
        self.image, self.origin = image, (left, top)
        self.size = (right - left, bottom - top)
        self.ss = max(1, min(SUPERSAMPLE, MAX_CANVAS // max(self.size)))
        self.layer = Image.new("RGBA", (self.size[0] * self.ss, self.size[1] * self.ss), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.layer)

    def p(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.origin[0]) * self.ss, (y - self.origin[1]) * self.ss

    def d(self, length: float) -> int:
        return max(1, round(length * self.ss))

    def done(self) -> None:
        layer = self.layer.resize(self.size, Image.Resampling.LANCZOS)
        region = (*self.origin, self.origin[0] + self.size[0], self.origin[1] + self.size[1])
        self.image.paste(Image.alpha_composite(self.image.crop(region), layer), region[:2])


def _around_face(image: Image.Image, box: tuple[int, int, int, int], look: Look, label: str) -> None:
    x, y, w, h = box
    u = min(w, h)
    # Marks reach past the face box (a "?" beside the head): the region drawn on is the box grown by
    # half its size each way, cut to the portrait.
    region = (
        max(0, x - w // 2),
        max(0, y - h // 2),
        min(image.width, x + w + w // 2),
        min(image.height, y + h + h // 2),
    )
    c = _Canvas(image, region)
    if look.tint:
        c.draw.ellipse([*c.p(x, y), *c.p(x + w, y + h)], fill=look.tint)
    # The corner mark's centre: above the face's right side, moved inward where the portrait ends.
    size = 0.42 * u
    cx = min(x + 0.95 * w, region[2] - size / 2)
    cy = max(y + 0.05 * h, region[1] + size / 2)
    for mark in look.marks:
        if mark in CORNER_MARKS:
            CORNER_MARKS[mark](c, cx, cy, size, label, look)
        else:
            FACE_MARKS[mark](c, box)
    c.done()


def _badge(image: Image.Image, look: Look, label: str) -> None:
    d = max(12, round(BADGE * min(image.size)))
    margin = max(2, d // 12)
    left, top = image.width - d - margin, image.height - d - margin
    c = _Canvas(image, (left, top, left + d, top + d))
    ring = max(1.0, d * 0.05)
    c.draw.ellipse([*c.p(left, top), *c.p(left + d, top + d)], fill=INK)
    c.draw.ellipse(
        [*c.p(left + ring, top + ring), *c.p(left + d - ring, top + d - ring)], fill=(*look.colour, 255)
    )
    CORNER_MARKS[look.symbol](c, left + d / 2, top + d / 2, d * 0.62, label, look)
    c.done()


# -- marks on the face -------------------------------------------------------------------------------


def _cheeks(box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    x, y, w, h = box
    return [(x + 0.27 * w, y + 0.68 * h), (x + 0.73 * w, y + 0.68 * h)]


def _blush(c: _Canvas, box: tuple[int, int, int, int], alpha: int = 120, hatch: bool = False) -> None:
    u = min(box[2], box[3])
    rx, ry = 0.14 * u, 0.065 * u
    for cx, cy in _cheeks(box):
        c.draw.ellipse([*c.p(cx - rx, cy - ry), *c.p(cx + rx, cy + ry)], fill=(255, 95, 120, alpha))
        if hatch:  # the hatched lines of a deep blush
            for i in (-1, 0, 1):
                sx = cx + i * rx * 0.5
                c.draw.line(
                    [c.p(sx - 0.03 * u, cy + ry * 0.7), c.p(sx + 0.03 * u, cy - ry * 0.7)],
                    fill=(200, 30, 60, 230),
                    width=c.d(0.018 * u),
                )


def _deep_blush(c: _Canvas, box: tuple[int, int, int, int]) -> None:
    _blush(c, box, alpha=170, hatch=True)


def _tears(c: _Canvas, box: tuple[int, int, int, int]) -> None:
    x, y, w, h = box
    u = min(w, h)
    for ex in (x + 0.3 * w, x + 0.7 * w):
        top, bottom = y + 0.55 * h, y + 0.86 * h
        c.draw.line([c.p(ex, top), c.p(ex, bottom)], fill=(120, 190, 255, 210), width=c.d(0.045 * u))
        _drop(c, ex, bottom, 0.07 * u, (150, 210, 255, 240))


def _gloom(c: _Canvas, box: tuple[int, int, int, int]) -> None:
    x, y, w, h = box
    u = min(w, h)
    for i in range(9):  # lines hanging from the top of the face, of varied lengths
        lx = x + w * (0.12 + 0.095 * i)
        length = h * (0.22 + 0.12 * ((i * 5) % 3))
        c.draw.line([c.p(lx, y), c.p(lx, y + length)], fill=(55, 25, 85, 190), width=c.d(0.03 * u))


def _shock(c: _Canvas, box: tuple[int, int, int, int]) -> None:
    x, y, w, h = box
    u = min(w, h)
    cx, cy = x + w / 2, y + h / 2
    for angle in (-150, -125, -100, -80, -55, -30):  # short lines bursting from the top of the head
        a = math.radians(angle)
        r1, r2 = 0.58 * u, 0.78 * u
        start, end = (
            (cx + r1 * math.cos(a), cy + r1 * math.sin(a)),
            (cx + r2 * math.cos(a), cy + r2 * math.sin(a)),
        )
        c.draw.line([c.p(*start), c.p(*end)], fill=INK, width=c.d(0.05 * u))
        c.draw.line([c.p(*start), c.p(*end)], fill=(255, 235, 90, 255), width=c.d(0.025 * u))


FACE_MARKS: dict[str, Callable[[_Canvas, tuple[int, int, int, int]], None]] = {
    "blush": _blush,
    "deep_blush": _deep_blush,
    "tears": _tears,
    "gloom": _gloom,
    "shock": _shock,
}


# -- symbols (beside the face, or on the badge): centre (cx, cy), overall size s ----------------------


def _drop(c: _Canvas, cx: float, cy: float, r: float, fill: RGBA) -> None:
    """A drop whose round end is centred on (cx, cy), pointing up."""
    c.draw.polygon(
        [c.p(cx - r * 0.93, cy - r * 0.35), c.p(cx, cy - r * 2.3), c.p(cx + r * 0.93, cy - r * 0.35)],
        fill=fill,
    )
    c.draw.ellipse([*c.p(cx - r, cy - r), *c.p(cx + r, cy + r)], fill=fill)


def _sweat(c: _Canvas, cx: float, cy: float, s: float, label: str, look: Look) -> None:
    r = s * 0.26
    _drop(c, cx, cy + r, r * 1.15, INK)
    _drop(c, cx, cy + r, r, (150, 215, 255, 255))
    c.draw.ellipse([*c.p(cx - r * 0.45, cy + r * 0.6), *c.p(cx - r * 0.1, cy + r * 1.0)], fill=WHITE)


def _heart(c: _Canvas, cx: float, cy: float, s: float, fill: RGBA) -> None:
    r = s * 0.27
    for g, colour in ((s * 0.06, INK), (0.0, fill)):  # the outline, then the heart inside it
        c.draw.ellipse([*c.p(cx - 2 * r - g, cy - r - g), *c.p(cx + g, cy + r + g)], fill=colour)
        c.draw.ellipse([*c.p(cx - g, cy - r - g), *c.p(cx + 2 * r + g, cy + r + g)], fill=colour)
        tip = c.p(cx, cy + 2.2 * r + g * 1.4)
        c.draw.polygon(
            [c.p(cx - 2 * r - g * 0.8, cy + r * 0.2), c.p(cx + 2 * r + g * 0.8, cy + r * 0.2), tip],
            fill=colour,
        )


def _hearts(c: _Canvas, cx: float, cy: float, s: float, label: str, look: Look) -> None:
    _heart(c, cx, cy, s, (255, 70, 135, 255))
    _heart(c, cx - s * 0.75, cy + s * 0.55, s * 0.55, (255, 120, 170, 255))


def _single_heart(c: _Canvas, cx: float, cy: float, s: float, label: str, look: Look) -> None:
    _heart(c, cx, cy - s * 0.12, s * 1.1, (255, 70, 135, 255))


def _star(c: _Canvas, cx: float, cy: float, r: float, fill: RGBA) -> None:
    points = []
    for i in range(8):  # a four-pointed sparkle
        a = math.pi / 4 * i - math.pi / 2
        radius = r if i % 2 == 0 else r * 0.28
        points.append(c.p(cx + radius * math.cos(a), cy + radius * math.sin(a)))
    c.draw.polygon(points, fill=fill, outline=INK, width=c.d(r * 0.08))


def _sparkles(c: _Canvas, cx: float, cy: float, s: float, label: str, look: Look) -> None:
    _star(c, cx, cy, s * 0.5, (255, 248, 170, 255))
    _star(c, cx + s * 0.45, cy + s * 0.5, s * 0.28, WHITE)
    _star(c, cx - s * 0.4, cy - s * 0.45, s * 0.2, (255, 248, 170, 255))


def _notes(c: _Canvas, cx: float, cy: float, s: float, label: str, look: Look) -> None:
    for dx, dy, k in ((-0.22, 0.1, 1.0), (0.28, -0.12, 0.8)):  # two eighth notes
        hx, hy, r = cx + dx * s, cy + (dy + 0.25) * s, s * 0.13 * k
        for grow, colour in ((s * 0.04, INK), (0.0, (255, 175, 60, 255))):
            c.draw.ellipse(
                [*c.p(hx - r * 1.2 - grow, hy - r - grow), *c.p(hx + r * 1.2 + grow, hy + r + grow)],
                fill=colour,
            )
            c.draw.line(
                [c.p(hx + r, hy), c.p(hx + r, hy - s * 0.5 * k)], fill=colour, width=c.d(s * 0.05 + grow * 2)
            )
            c.draw.line(
                [c.p(hx + r, hy - s * 0.5 * k), c.p(hx + r + s * 0.18 * k, hy - s * 0.32 * k)],
                fill=colour,
                width=c.d(s * 0.05 + grow * 2),
            )


def _anger(c: _Canvas, cx: float, cy: float, s: float, label: str, look: Look) -> None:
    """The cross-popping vein: four curved brackets around a centre."""
    r = s * 0.45
    for grow, colour in ((s * 0.05, INK), (0.0, (230, 30, 30, 255))):
        width = c.d(s * 0.1 + grow * 2)
        for qx, qy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            ox, oy = cx + qx * r * 0.95, cy + qy * r * 0.95
            start = {(-1, -1): 0, (1, -1): 90, (1, 1): 180, (-1, 1): 270}[(qx, qy)]
            c.draw.arc(
                [*c.p(ox - r * 0.75, oy - r * 0.75), *c.p(ox + r * 0.75, oy + r * 0.75)],
                start,
                start + 90,
                fill=colour,
                width=width,
            )


def _exclaim(c: _Canvas, cx: float, cy: float, s: float, label: str, look: Look) -> None:
    for grow, colour in ((s * 0.06, INK), (0.0, (255, 225, 40, 255))):
        c.draw.polygon(
            [
                c.p(cx - s * 0.14 - grow, cy - s * 0.5 - grow),
                c.p(cx + s * 0.14 + grow, cy - s * 0.5 - grow),
                c.p(cx + s * 0.05 + grow, cy + s * 0.18 + grow),
                c.p(cx - s * 0.05 - grow, cy + s * 0.18 + grow),
            ],
            fill=colour,
        )
        r = s * 0.09 + grow
        c.draw.ellipse([*c.p(cx - r, cy + s * 0.36 - r), *c.p(cx + r, cy + s * 0.36 + r)], fill=colour)


def _question(c: _Canvas, cx: float, cy: float, s: float, label: str, look: Look) -> None:
    r = s * 0.24
    top = cy - s * 0.22
    for grow, colour in ((s * 0.05, INK), (0.0, (110, 215, 255, 255))):
        width = c.d(s * 0.11 + grow * 2)
        c.draw.arc([*c.p(cx - r, top - r), *c.p(cx + r, top + r)], 180, 400, fill=colour, width=width)
        hook = (cx + r * math.cos(math.radians(40)) * 0.9, top + r * math.sin(math.radians(40)) * 0.9)
        c.draw.line(
            [c.p(*hook), c.p(cx, top + r * 1.4), c.p(cx, cy + s * 0.16)],
            fill=colour,
            width=width,
            joint="curve",
        )
        d = s * 0.08 + grow
        c.draw.ellipse([*c.p(cx - d, cy + s * 0.36 - d), *c.p(cx + d, cy + s * 0.36 + d)], fill=colour)


def _gloom_symbol(c: _Canvas, cx: float, cy: float, s: float, label: str, look: Look) -> None:
    for i in range(5):
        lx = cx + (i - 2) * s * 0.16
        length = s * (0.45 + 0.2 * ((i * 2) % 3))
        c.draw.line([c.p(lx, cy - s * 0.42), c.p(lx, cy - s * 0.42 + length)], fill=INK, width=c.d(s * 0.07))


def _tag(c: _Canvas, cx: float, cy: float, s: float, label: str, look: Look) -> None:
    """The label's name on a coloured tag, for labels with no symbol of their own."""
    font = ImageFont.load_default_imagefont()  # Pillow's own bitmap font: the same on every machine
    text = label.upper()[:10]
    left, top, right, bottom = font.getbbox(text)
    glyphs = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(glyphs).text((1 - left, 1 - top), text, fill=255, font=font)
    width = s * 1.1
    height = width * glyphs.height / glyphs.width
    x0, y0 = cx - width / 2, cy - height / 2
    pad = s * 0.08
    c.draw.rounded_rectangle(
        [*c.p(x0 - pad, y0 - pad), *c.p(x0 + width + pad, y0 + height + pad)],
        radius=c.d(pad),
        fill=(*look.colour, 255),
        outline=INK,
        width=c.d(s * 0.04),
    )
    scaled = glyphs.resize((c.d(width), c.d(height)), Image.Resampling.NEAREST)
    left_px, top_px = c.p(x0, y0)
    c.layer.paste(INK, (round(left_px), round(top_px)), scaled)


CORNER_MARKS: dict[str, Callable[[_Canvas, float, float, float, str, Look], None]] = {
    "sweat": _sweat,
    "tear": _sweat,  # the same drop; the badge's colour tells them apart
    "hearts": _hearts,
    "heart": _single_heart,
    "sparkles": _sparkles,
    "notes": _notes,
    "anger": _anger,
    "exclaim": _exclaim,
    "question": _question,
    "gloom_lines": _gloom_symbol,
    "tag": _tag,
}
