"""Decoding untrusted pictures (card portraits, persona portraits, sprites) in one checked place."""

from __future__ import annotations

import io
import re
import struct
import warnings

from PIL import Image

from bot.errors import BotError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_image(raw: bytes, what: str, *, max_pixels: int, error: type[BotError]) -> Image.Image:
    """The picture as RGB or RGBA. Too many pixels is refused before any pixel is decompressed (from the
    PNG header, else Pillow's own header read), so a decompression bomb costs nothing. Every failure is
    `error` with a message starting with `what`."""

    def too_large(width: int, height: int) -> BotError:
        return error(f"{what} is {width}x{height} pixels, more than the {max_pixels} allowed")

    if raw.startswith(PNG_SIGNATURE) and raw[12:16] == b"IHDR":
        width, height = struct.unpack(">II", raw[16:24])
        if width * height > max_pixels:
            raise too_large(width, height)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            if image.size[0] * image.size[1] > max_pixels:
                raise too_large(*image.size)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise error(f"{what} is too large to decode (decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow names the buffer it read ("cannot identify image file <_io.BytesIO object at 0x…>").
        why = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc)) or type(exc).__name__
        raise error(f"{what} is not a readable image: {why}") from None
    return image.convert("RGBA" if "A" in image.getbands() else "RGB")
