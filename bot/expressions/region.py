"""The face region of a portrait: reading the portrait, the box or mask a render may redraw, its
feathering, a preview, and compositing the redrawn face back so that every pixel outside the mask stays
the portrait's own."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageFilter

from bot.errors import ExpressionError
from bot.images import decode_image
from bot.personas import Persona, PersonaLibrary


def read_portrait(library: PersonaLibrary, persona: Persona, max_pixels: int) -> tuple[Image.Image, bytes]:
    """A persona's portrait, decoded within the pixel limit, and its file's bytes."""
    path = library.portrait_path(persona)
    if path is None:
        raise ExpressionError(f"persona '{persona.slug}' has no portrait (set [portrait] image in its file)")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ExpressionError(f"portrait not found: {path}") from None
    except OSError as exc:
        raise ExpressionError(f"portrait {path} cannot be read: {exc.strerror}") from None
    return decode_image(raw, f"portrait {path}", max_pixels=max_pixels, error=ExpressionError), raw


def check_face_box(box: tuple[int, int, int, int], size: tuple[int, int], where: str) -> None:
    """Raise ExpressionError unless `box` is a usable face region of a portrait of this size."""
    x, y, w, h = box
    width, height = size
    if w <= 0 or h <= 0:
        raise ExpressionError(f"{where}: face region {list(box)} is empty")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise ExpressionError(f"{where}: face region {list(box)} lies outside the {width}x{height} portrait")
    if w >= width and h >= height:
        raise ExpressionError(
            f"{where}: face region {list(box)} covers the whole portrait; mark only the face"
        )


def face_mask(
    persona: Persona, portrait_size: tuple[int, int], avatars: Path, dilate: int, blur: int
) -> Image.Image:
    """The feathered face mask (mode L, white = redraw) for a persona's portrait."""
    where = f"persona '{persona.slug}'"
    if persona.face_mask:
        path = avatars / Path(persona.face_mask).name
        try:
            with Image.open(path) as raw:
                # The header's size first: a mask must match the portrait, and decoding one that claims
                # 20000x20000 would take gigabytes.
                if raw.size != portrait_size:
                    raise ExpressionError(
                        f"{where}: face mask is {raw.size}, the portrait is {portrait_size}"
                    )
                mask = raw.convert("L")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ExpressionError(f"{where}: face mask {path} cannot be read: {exc}") from None
        mask = mask.point(lambda v: 255 if v > 127 else 0)
        box = mask.getbbox()
        if box is None:
            raise ExpressionError(f"{where}: face mask {path.name} is empty (no white pixels)")
        if mask.getextrema() == (255, 255):
            raise ExpressionError(f"{where}: face mask covers the whole portrait; mark only the face")
    else:
        if persona.face_box is None:
            raise ExpressionError(
                f"{where} has no face region: find it with `./run persona face {persona.slug} --detect`,"
                f' set it with `--box X Y WIDTH HEIGHT`, or give face_mask = "file.png" under [portrait]'
            )
        box4 = persona.face_box
        check_face_box(box4, portrait_size, where)
        x, y, w, h = box4
        mask = Image.new("L", portrait_size, 0)
        mask.paste(255, (x, y, x + w, y + h))
    if dilate > 0:
        mask = dilate_mask(mask, dilate)
    if blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return mask


def face_preview(portrait: Image.Image, mask: Image.Image) -> Image.Image:
    """The portrait with everything outside the (feathered) face mask dimmed and the mask's bounding
    box outlined: what a render may change, at a glance."""
    from PIL import ImageDraw, ImageEnhance

    base = portrait.convert("RGB")
    out = Image.composite(base, ImageEnhance.Brightness(base).enhance(0.35), mask)
    box = mask.point(lambda v: 255 if v > 127 else 0).getbbox()
    if box is not None:
        ImageDraw.Draw(out).rectangle(box, outline=(255, 60, 60), width=3)
    return out


def dilate_mask(mask: Image.Image, radius: int) -> Image.Image:
    """Grow the white area by `radius` pixels (a square kernel, done separably in numpy: Pillow's
    MaxFilter takes hundreds of milliseconds here and holds the GIL, stalling the event loop)."""
    import numpy as np

    grown = np.asarray(mask) > 127
    for axis in (0, 1):
        source, grown = grown, grown.copy()
        for shift in range(1, radius + 1):
            ahead: list[slice] = [slice(None), slice(None)]
            behind: list[slice] = [slice(None), slice(None)]
            ahead[axis], behind[axis] = slice(shift, None), slice(None, -shift)
            grown[tuple(ahead)] |= source[tuple(behind)]
            grown[tuple(behind)] |= source[tuple(ahead)]
    return Image.fromarray(grown.astype(np.uint8) * 255, mode="L")


def composite(portrait: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """The generated face over the portrait through the mask; where the mask is 0, the portrait's own
    pixel (alpha included) is kept exactly."""
    base = portrait.convert("RGBA")
    face = generated.convert("RGB").resize(portrait.size, Image.Resampling.LANCZOS).convert("RGBA")
    face.putalpha(base.getchannel("A"))
    out = Image.composite(face, base, mask)
    return out if portrait.mode == "RGBA" else out.convert(portrait.mode)
