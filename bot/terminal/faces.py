"""Showing a persona's face in the terminal: real pixels where the terminal speaks Sixel or Kitty's
graphics protocol, coloured half-blocks elsewhere (textual-image picks), nothing when output is not a
terminal (the caller prints the image path instead)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TextIO

from PIL import Image

_log = logging.getLogger(__name__)

FACE_CELLS = 32  # width of the face in terminal columns, unless the config says otherwise
# Context around the face box, as a fraction of its size: enough to hold the marks of a drawn face,
# which sit beside the head.
MARGIN = 0.3


def face_crop(image: Image.Image, box: tuple[int, int, int, int] | None) -> Image.Image:
    """The face with a little context (the whole picture when no face box is known)."""
    if box is None:
        return image
    x, y, w, h = box
    dx, dy = int(w * MARGIN), int(h * MARGIN)
    left, top = max(0, x - dx), max(0, y - dy)
    return image.crop((left, top, min(image.width, x + w + dx), min(image.height, y + h + dy)))


class TerminalFaces:
    """Draws faces inline when `out` is a terminal and images are wanted."""

    def __init__(
        self, out: TextIO, enabled: bool = True, *, width: int = FACE_CELLS, renderable: Any = None
    ) -> None:
        """`renderable`: the textual-image class to draw with (default: the one it picks for this
        terminal)."""
        self._console: Any = None
        self._image: Any = None
        self.width = width
        if not (enabled and out.isatty()):
            return
        try:
            # Imported here, before the chat's input thread starts: on import textual-image asks the
            # terminal which graphics protocol it speaks, and the answer arrives on standard input.
            from rich.console import Console

            if renderable is None:
                from textual_image.renderable import Image as renderable
        except ImportError:  # an optional nicety: without it the image path is shown
            return
        self._console = Console(file=out, highlight=False)
        self._image = renderable

    @property
    def active(self) -> bool:
        return self._console is not None

    def show(self, path: Path, box: tuple[int, int, int, int] | None) -> bool:
        """Draw the face in `path`; False when it could not be drawn (the caller shows the path)."""
        if not self.active:
            return False
        try:
            with Image.open(path) as image:
                face = face_crop(image.convert("RGB"), box)
        except (OSError, ValueError) as exc:
            _log.debug("cannot read %s: %s", path, exc)
            return False
        try:
            # height="auto": the height follows the picture's shape in the terminal's own cell size (a
            # width alone takes the height from the pixel count, squashing or stretching the face).
            self._console.print(self._image(face, width=self.width, height="auto"))
        except Exception as exc:  # a terminal it cannot handle, e.g. one reporting a size of 0
            _log.warning("cannot draw faces in this terminal (%s); showing file paths instead", exc)
            self._console = None
            return False
        return True
