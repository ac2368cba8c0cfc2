"""Each persona's drawn faces (bot/expressions/drawn.py) as files: drawn once per portrait, face region
and label, kept in the render cache folder, found again after a restart, and drawn anew only when one
of those changes. Where the face is small in the portrait (bot/expressions/framing.py), faces are drawn
on the framed bust, and `framed` gives a render or the portrait itself the same frame."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from bot.errors import ExpressionError
from bot.expressions.drawn import DRAWN_STYLE, draw_face, look_for
from bot.expressions.framing import Box, Frame, frame_for
from bot.expressions.region import check_face_box, face_mask
from bot.files import atomic_write, png_bytes
from bot.personas import Persona, PersonaLibrary


def file_stamp(path: Path | None) -> tuple[object, ...]:
    """What identifies a file's version cheaply: its path, mtime and size (just the path if missing)."""
    try:
        stat = path.stat() if path is not None else None
    except OSError:
        stat = None
    return (str(path),) if stat is None else (str(path), stat.st_mtime_ns, stat.st_size)


class DrawnFaces:
    """The drawn face files of every persona. `load_portrait` decodes a persona's portrait (within the
    pixel limit) and returns it with its bytes; `warn` says a persona's problem once."""

    def __init__(
        self,
        cache_dir: Path,
        personas: PersonaLibrary,
        load_portrait: Callable[[Persona], tuple[Image.Image, bytes]],
        warn: Callable[[Persona, str], None],
        framing: tuple[float, float] = (0.0, 0.4),
    ) -> None:
        self.cache_dir = cache_dir
        self.personas = personas
        self._load_portrait = load_portrait
        self._warn = warn
        self.framing = framing  # (min_face, face_share): see framing.frame_for
        # (persona, label) -> (what the face was drawn from, its file): a hit costs a stat().
        self._memo: dict[tuple[str, str], tuple[object, Path]] = {}
        self._frames: dict[str, tuple[object, tuple[Frame | None, Box | None]]] = {}

    def face(self, persona: Persona, label: str) -> Path | None:
        """The drawn face for `label` (the portrait itself where its look draws nothing); None when the
        persona has no portrait. Blocking: call it on a worker thread. Raises ExpressionError when the
        portrait cannot be read."""
        path = self.personas.existing_portrait(persona)
        if path is None:
            return None
        look = look_for(label, persona.labels)
        files = [path] + ([self.personas.avatars / Path(persona.face_mask).name] if persona.face_mask else [])
        made_from = (
            tuple(file_stamp(f) for f in files),
            persona.face_box,
            tuple(persona.labels),
            self.framing,
        )
        memo = self._memo.get((persona.slug, label))
        if memo is not None and memo[0] == made_from and memo[1].is_file():
            return memo[1]
        portrait, raw = self._load_portrait(persona)
        box = self._box(persona, portrait)
        frame = frame_for(portrait.size, box, *self.framing)
        if not (look.marks or look.tint or look.symbol) and frame is None:
            self._memo[(persona.slug, label)] = (made_from, path)
            return path  # neutral: the portrait as it is
        recipe = [DRAWN_STYLE, hashlib.sha256(raw).hexdigest(), box, label, list(persona.labels)]
        recipe += [frame.crop, frame.size] if frame is not None else []
        key = hashlib.sha256(json.dumps(recipe).encode()).hexdigest()
        folder = self.cache_dir / persona.slug / "drawn"
        target = folder / f"{label}-{key[:16]}.png"
        if not target.is_file():
            if frame is not None:
                # The marks are drawn on the framed bust, at its scale: a full-body card's 40-pixel face
                # would otherwise get 15-pixel marks, enlarged and blurred with the crop.
                portrait, box = frame.apply(portrait), frame.box_in_frame(box) if box else None
            image = draw_face(portrait, box, label, persona.labels)
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(target, png_bytes(image))
            for old in folder.glob("*.png"):  # this label's faces drawn from an older portrait or box
                if old != target and old.stem.rsplit("-", 1)[0] == label:
                    old.unlink(missing_ok=True)
        self._memo[(persona.slug, label)] = (made_from, target)
        return target

    def frame(self, persona: Persona) -> tuple[Frame | None, Box | None]:
        """The persona's frame (None: the whole picture) and where its face lies in what is shown."""
        path = self.personas.existing_portrait(persona)
        files = [path] + ([self.personas.avatars / Path(persona.face_mask).name] if persona.face_mask else [])
        made_from = (tuple(file_stamp(f) for f in files), persona.face_box, self.framing)
        memo = self._frames.get(persona.slug)
        if memo is not None and memo[0] == made_from:
            return memo[1]
        portrait, _ = self._load_portrait(persona)
        box = self._box(persona, portrait)
        frame = frame_for(portrait.size, box, *self.framing)
        result = frame, (frame.box_in_frame(box) if frame is not None and box is not None else box)
        self._frames[persona.slug] = (made_from, result)
        return result

    def shown(self, persona: Persona, source: Path) -> tuple[Path, Box | None]:
        """A picture as it is shown (`framed`) and where the face lies in it; where it cannot be framed,
        the picture as it is (said once)."""
        try:
            return self.framed(persona, source), self.frame(persona)[1]
        except ExpressionError as exc:
            self._warn(persona, f"showing {persona.slug}'s faces unframed: {exc}")
            return source, persona.face_box

    def framed(self, persona: Persona, source: Path) -> Path:
        """A picture the size of the persona's portrait (a render, the portrait itself) in the persona's
        frame: the file itself where the whole picture is shown, else a framed copy, made once."""
        if source.parent.name in ("drawn", "framed"):
            return source  # made here, already framed
        frame, _ = self.frame(persona)
        if frame is None:
            return source
        key = hashlib.sha256(json.dumps([file_stamp(source), frame.crop, frame.size]).encode()).hexdigest()
        folder = self.cache_dir / persona.slug / "framed"
        target = folder / f"{source.stem}-{key[:16]}.png"
        if not target.is_file():
            try:
                with Image.open(source) as image:
                    if image.width < frame.crop[2] or image.height < frame.crop[3]:
                        return source  # smaller than the portrait: shown as it is
                    shown = frame.apply(image.convert("RGBA" if "A" in image.mode else "RGB"))
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise ExpressionError(f"{source} cannot be framed: {exc}") from None
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(target, png_bytes(shown))
        return target

    def _box(self, persona: Persona, portrait: Image.Image) -> tuple[int, int, int, int] | None:
        """Where the marks go: the face box, or the face mask's extent; None (a corner badge) when the
        persona has neither or its region does not fit the portrait (said once)."""
        where = f"persona '{persona.slug}'"
        try:
            if persona.face_mask:
                extent = face_mask(persona, portrait.size, self.personas.avatars, 0, 0).getbbox()
                if extent is None:
                    return None
                return extent[0], extent[1], extent[2] - extent[0], extent[3] - extent[1]
            if persona.face_box:
                check_face_box(persona.face_box, portrait.size, where)
            return persona.face_box
        except ExpressionError as exc:
            self._warn(persona, f"drawing {persona.slug}'s faces on a badge: {exc}")
            return None
