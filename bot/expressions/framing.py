"""What part of a portrait is shown: the whole picture where its face is large enough to read at the size
Discord shows an attachment, else a bust framed on the face.

Discord shows an attachment within about 400 by 400 pixels, so a full-body card's face (a tenth of the
width) becomes a 30-pixel smudge whose blush or tears nobody can see. When the face, shown so, would be
narrower than `framing_min_face` of those 400 pixels, the face is shown as a bust: a 4:5 crop in which
the face spans `framing_face` of the width, its centre a third of the way down, moved inside the picture
where it would cross an edge, and enlarged to SHOWN pixels high where the crop is smaller. The frame
depends only on the picture's size and the face box, never on the label, so every face of a persona is
framed alike and the character does not jump between replies. Drawn marks are drawn on the framed
picture, at its scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

SHOWN = 400  # pixels: the box Discord shows an attachment in (and the studio a face)
ASPECT = 4 / 5  # width / height of a bust
FACE_CENTRE = 0.36  # the face's centre, as a fraction of the bust's height from its top

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Frame:
    """A crop of the portrait (left, top, right, bottom) and the size it is shown at."""

    crop: tuple[int, int, int, int]
    size: tuple[int, int]

    def box_in_frame(self, box: Box) -> Box:
        """A box in portrait coordinates, in the framed picture's coordinates."""
        left, top, right, bottom = self.crop
        sx, sy = self.size[0] / (right - left), self.size[1] / (bottom - top)
        x, y, w, h = box
        return round((x - left) * sx), round((y - top) * sy), max(1, round(w * sx)), max(1, round(h * sy))

    def apply(self, image: Image.Image) -> Image.Image:
        cropped = image.crop(self.crop)
        if cropped.size == self.size:
            return cropped
        return cropped.resize(self.size, Image.Resampling.LANCZOS)


def frame_for(size: tuple[int, int], box: Box | None, min_face: float, face_share: float) -> Frame | None:
    """The bust to show for a portrait of `size` whose face is `box`; None to show the whole picture (no
    box, a face already wide enough, or framing off: min_face 0)."""
    if box is None or min_face <= 0:
        return None
    width, height = size
    x, y, w, h = box
    if w * shown_scale(size) >= min_face * SHOWN:
        return None
    crop_w = min(width, max(w / face_share, 1.0))
    crop_h = min(height, crop_w / ASPECT)
    crop_w = min(crop_w, crop_h * ASPECT) if crop_h < crop_w / ASPECT else crop_w
    centre_x, centre_y = x + w / 2, y + h / 2
    left = min(max(0.0, centre_x - crop_w / 2), width - crop_w)
    top = min(max(0.0, centre_y - FACE_CENTRE * crop_h), height - crop_h)
    crop = (round(left), round(top), round(left + crop_w), round(top + crop_h))
    crop_size = (crop[2] - crop[0], crop[3] - crop[1])
    scale = max(1.0, SHOWN / crop_size[1])  # never shrunk here: Discord scales a large picture itself
    return Frame(crop, (round(crop_size[0] * scale), round(crop_size[1] * scale)))


def shown_scale(size: tuple[int, int]) -> float:
    """How much Discord scales a picture of this size to show it (at most 1: it never enlarges)."""
    return min(1.0, SHOWN / size[0], SHOWN / size[1])
