"""Each persona's drawn faces (bot/expressions/drawn.py) as files: drawn once per portrait, face region
and label, kept in the render cache folder, found again after a restart, and drawn anew only when one
of those changes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from bot.errors import ExpressionError
from bot.expressions.drawn import DRAWN_STYLE, draw_face, look_for
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
    ) -> None:
        self.cache_dir = cache_dir
        self.personas = personas
        self._load_portrait = load_portrait
        self._warn = warn
        # (persona, label) -> (what the face was drawn from, its file): a hit costs a stat().
        self._memo: dict[tuple[str, str], tuple[object, Path]] = {}

    def face(self, persona: Persona, label: str) -> Path | None:
        """The drawn face for `label` (the portrait itself where its look draws nothing); None when the
        persona has no portrait. Blocking: call it on a worker thread. Raises ExpressionError when the
        portrait cannot be read."""
        path = self.personas.existing_portrait(persona)
        if path is None:
            return None
        look = look_for(label, persona.labels)
        if not (look.marks or look.tint or look.symbol):
            return path  # neutral: the portrait as it is
        files = [path] + ([self.personas.avatars / Path(persona.face_mask).name] if persona.face_mask else [])
        made_from = (tuple(file_stamp(f) for f in files), persona.face_box, tuple(persona.labels))
        memo = self._memo.get((persona.slug, label))
        if memo is not None and memo[0] == made_from and memo[1].is_file():
            return memo[1]
        portrait, raw = self._load_portrait(persona)
        box = self._box(persona, portrait)
        recipe = [DRAWN_STYLE, hashlib.sha256(raw).hexdigest(), box, label, list(persona.labels)]
        key = hashlib.sha256(json.dumps(recipe).encode()).hexdigest()
        folder = self.cache_dir / persona.slug / "drawn"
        target = folder / f"{label}-{key[:16]}.png"
        if not target.is_file():
            image = draw_face(portrait, box, label, persona.labels)
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(target, png_bytes(image))
            for old in folder.glob("*.png"):  # this label's faces drawn from an older portrait or box
                if old != target and old.stem.rsplit("-", 1)[0] == label:
                    old.unlink(missing_ok=True)
        self._memo[(persona.slug, label)] = (made_from, target)
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
