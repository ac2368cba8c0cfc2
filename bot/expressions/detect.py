"""Finding the face in a portrait: OpenCV's cascades, the anime/manga one first (most cards are drawn),
then the frontal one for photographs. A match is kept (written as the persona's face_box) only when it
is strong; a weak or missing one is reported with how to set the box by hand, never guessed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from bot.config import ExpressionsConfig
from bot.errors import ExpressionError
from bot.expressions.region import check_face_box, face_mask, face_preview, read_portrait
from bot.files import png_bytes
from bot.personas import Persona, PersonaLibrary

ANIME_CASCADE = Path(__file__).with_name("data") / "lbpcascade_animeface.xml"
DETECT_SIDE = 1024  # larger portraits are searched at this size: a face is still 50+ pixels there
MIN_NEIGHBOURS = 5  # the cascade's author's setting
# Neighbouring matches a face needs before it is kept unasked. On the cards in our corpus a real face
# gathers 38-87, while the frontal cascade's hit on a hand gathers 13 and a drawn face it half-sees 7.
STRONG_NEIGHBOURS = 20


@dataclass(frozen=True)
class FaceFinding:
    """What the detectors saw: the best box (None if nothing), which detector, and how sure."""

    box: tuple[int, int, int, int] | None
    detector: str = ""  # "anime" or "photo"
    neighbours: int = 0
    problem: str = ""  # why no detector could run (OpenCV missing), if so

    @property
    def strong(self) -> bool:
        return self.box is not None and self.neighbours >= STRONG_NEIGHBOURS

    def describe(self, set_by_hand: str, kept: str = "faces show as a badge") -> str:
        """One line for the user. `set_by_hand` says how to set the box in their front-end, with `{box}`
        where the numbers go; `kept` what stays in use when no box is saved."""
        by_hand = set_by_hand.format(box="X Y WIDTH HEIGHT")
        if self.problem:
            return f"{kept}: {self.problem}. To mark the face, {by_hand}"
        if self.box is None:
            return f"no face found in the portrait; {kept}. To mark the face, {by_hand}"
        where = f"[{', '.join(map(str, self.box))}]"
        if self.strong:
            return f"face found by the {self.detector} detector at {where} (x, y, width, height)"
        numbers = " ".join(map(str, self.box))
        return (
            f"only a weak {self.detector} face match at {where}, not used; {kept}. If that is the face,"
            f" {set_by_hand.format(box=numbers)}"
        )


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise ExpressionError(
            "face detection needs OpenCV: pip install 'opencv-python-headless>=4.8,<5'"
        ) from None
    if not hasattr(cv2, "CascadeClassifier"):
        # OpenCV 5 moved cascade classifiers out of the main package into opencv-contrib.
        raise ExpressionError(
            f"OpenCV {cv2.__version__} has no cascade classifier: install"
            " 'opencv-python-headless>=4.8,<5' (or opencv-contrib-python-headless for OpenCV 5)"
        )
    return cv2


def find_face(portrait: Image.Image) -> FaceFinding:
    """The most likely face in a portrait. Raises ExpressionError only when OpenCV cannot run."""
    cv2 = _cv2()
    import numpy as np

    grey = portrait.convert("L")
    scale = max(grey.size) / DETECT_SIDE if max(grey.size) > DETECT_SIDE else 1.0
    if scale > 1.0:
        grey = grey.resize((round(grey.width / scale), round(grey.height / scale)))
    if min(grey.size) < 48:  # too small to hold a face a cascade can see (24x24 windows)
        return FaceFinding(None)
    pixels = cv2.equalizeHist(np.asarray(grey, dtype=np.uint8))
    smallest = max(24, min(grey.size) // 12)
    cascades = (
        ("anime", str(ANIME_CASCADE)),
        ("photo", cv2.data.haarcascades + "haarcascade_frontalface_default.xml"),
    )
    for detector, path in cascades:
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise ExpressionError(f"the {detector} face detector could not be loaded from {path}")
        boxes, counts = cascade.detectMultiScale2(
            pixels, scaleFactor=1.1, minNeighbors=MIN_NEIGHBOURS, minSize=(smallest, smallest)
        )
        if len(boxes):
            best = max(range(len(boxes)), key=lambda i: (int(counts[i]), int(boxes[i][2])))
            x, y, w, h = (round(int(v) * scale) for v in boxes[best])
            w, h = min(w, portrait.width - x), min(h, portrait.height - y)
            return FaceFinding((x, y, w, h), detector, int(counts[best]))
    return FaceFinding(None)


@dataclass(frozen=True)
class FaceReport:
    """A persona's face region after `locate_face`: what detection found, where a box was saved, and a
    preview of the region (None when the persona has none: its faces go on a badge)."""

    persona: Persona
    finding: FaceFinding | None  # None: no detection was asked for
    saved: Path | None  # the persona file the box was written to
    preview: bytes | None  # PNG: the portrait dimmed outside what a render may redraw


def needs_looking_for(library: PersonaLibrary, persona: Persona) -> bool:
    """Whether a just-imported persona's face should be looked for: it has a portrait and no face
    region (a card made by this bot carries its region)."""
    return library.existing_portrait(persona) is not None and not (persona.face_box or persona.face_mask)


def locate_face(
    library: PersonaLibrary,
    persona: Persona,
    settings: ExpressionsConfig,
    max_pixels: int,
    *,
    box: tuple[int, int, int, int] | None = None,
    detect: bool = False,
    save: bool = True,
) -> FaceReport:
    """Set the face box by hand (`box`) or by detection (`detect`: kept only when strong), then preview
    the face region. Raises ExpressionError when the persona has no readable portrait or `box` does not
    fit it; a detector that cannot run is reported in the finding, not raised. With `save=False` nothing
    is written: the preview shows `box` (a region being tried), and detection only proposes."""
    where = f"persona '{persona.slug}'"
    portrait, _ = read_portrait(library, persona, max_pixels)
    finding, saved = None, None
    if box is not None:
        check_face_box(box, portrait.size, where)
        if save:
            saved = library.set_face_box(persona, box)
        else:
            persona = dataclasses.replace(persona, face_box=box, face_mask="")
    elif detect:
        try:
            finding = find_face(portrait)
        except ExpressionError as exc:
            finding = FaceFinding(None, problem=str(exc))
        if save and finding.strong and finding.box is not None:
            check_face_box(finding.box, portrait.size, where)
            saved = library.set_face_box(persona, finding.box)
    if saved is not None:
        persona = library.load(persona.slug)
    preview = None
    if persona.face_box or persona.face_mask:
        mask = face_mask(persona, portrait.size, library.avatars, settings.mask_dilate, settings.mask_blur)
        preview = png_bytes(face_preview(portrait, mask))
    return FaceReport(persona, finding, saved, preview)
