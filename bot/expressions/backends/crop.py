"""The face crop an image server is sent, and its answer pasted back. Sending only the crop (not a
4000-pixel portrait) keeps uploads small and gives the face the model's whole resolution; the bot still
composites the answer through its own mask, so a server's own blending never reaches outside the face."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from bot.config import ExpressionsConfig
from bot.errors import ExpressionError
from bot.expressions.region import composite

MIN_SIDE = 64  # the smallest latent a Stable Diffusion model renders sensibly (8 latent pixels)
SDXL_NAME_HINTS = ("xl", "pony", "illustrious", "noob")  # checkpoint names that mean a 1024 model


@dataclass(frozen=True)
class FaceCrop:
    box: tuple[int, int, int, int]  # in portrait pixels
    image: Image.Image  # RGB, at the render size
    mask: Image.Image  # L (white: redraw), at the render size


def server_resolution(settings: ExpressionsConfig) -> int:
    """The long side a server renders the crop at: `resolution`, else the checkpoint's likely own size
    (a server does not say what family its checkpoint is; SDXL-family names say 1024)."""
    if settings.resolution:
        return settings.resolution
    name = settings.model.lower()
    return 1024 if any(hint in name for hint in SDXL_NAME_HINTS) else 512


def _round8(value: float) -> int:
    return max(MIN_SIDE, round(value / 8) * 8)


def face_crop(portrait: Image.Image, mask: Image.Image, padding: int, size: int) -> FaceCrop:
    """The square around the mask's white area plus `padding` (kept inside the portrait), scaled so its
    long side is `size` and both sides are multiples of 8."""
    bbox = mask.getbbox()
    if bbox is None:
        raise ExpressionError("the face mask is empty: set the persona's face box")
    left, top, right, bottom = bbox
    side = max(right - left, bottom - top) + 2 * padding
    width, height = portrait.size
    cx, cy = (left + right) / 2, (top + bottom) / 2
    box_w, box_h = min(side, width), min(side, height)
    x0 = int(min(max(cx - box_w / 2, 0), width - box_w))
    y0 = int(min(max(cy - box_h / 2, 0), height - box_h))
    box = (x0, y0, x0 + int(box_w), y0 + int(box_h))
    scale = size / max(box_w, box_h)
    render_size = (_round8(box_w * scale), _round8(box_h * scale))
    image = portrait.convert("RGB").crop(box).resize(render_size, Image.Resampling.LANCZOS)
    return FaceCrop(box, image, mask.crop(box).resize(render_size, Image.Resampling.LANCZOS))


def paste_back(
    portrait: Image.Image, mask: Image.Image, crop: FaceCrop, rendered: Image.Image
) -> Image.Image:
    """The server's crop back in the portrait, through the bot's own mask."""
    x0, y0, x1, y1 = crop.box
    whole = portrait.convert("RGB")
    whole.paste(rendered.convert("RGB").resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS), (x0, y0))
    return composite(portrait, whole, mask)
