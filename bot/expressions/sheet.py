"""Contact sheets: every face of a persona in one labelled grid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image


def contact_sheet(
    faces: Sequence[tuple[str, Path | Image.Image]], thumb: int = 256, columns: int = 5
) -> Image.Image:
    """A labelled grid of faces, so a person can check all expressions at a glance."""
    from PIL import ImageDraw

    columns = max(1, min(columns, len(faces)))
    rows = (len(faces) + columns - 1) // columns
    caption = 24
    sheet = Image.new("RGB", (columns * thumb, rows * (thumb + caption)), (24, 24, 28))
    draw = ImageDraw.Draw(sheet)
    for i, (label, source) in enumerate(faces):
        image = Image.open(source) if isinstance(source, Path) else source
        image = image.convert("RGB")
        image.thumbnail((thumb, thumb))
        x, y = (i % columns) * thumb, (i // columns) * (thumb + caption)
        sheet.paste(image, (x + (thumb - image.width) // 2, y + (thumb - image.height) // 2))
        draw.text((x + 8, y + thumb + 5), label, fill=(235, 235, 240))
    return sheet
