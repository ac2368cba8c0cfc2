"""Hand-made expression sets: SillyTavern sprite names, which pack file becomes which of a persona's
faces, and storing a checked pack."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.emotion.labels import GOEMOTIONS, canonical, projection
from bot.errors import ExpressionError
from bot.files import png_bytes, write_all
from bot.images import decode_image
from bot.personas import Persona

SPRITE_NAME = re.compile(r"^(?P<label>[a-z][a-z_-]{0,31}?)(?:-(?P<variant>\d{1,3}))?\.png$")
MAX_SPRITE_BYTES = 10_000_000
MAX_PACK_FILES = 200
MAX_PACK_BYTES = 100_000_000  # a whole sprite pack, unpacked


def sprite_name(label: str, variant: int = 0) -> str:
    """SillyTavern's sprite file names: joy.png, then joy-1.png, joy-2.png for variants."""
    return f"{label}.png" if variant == 0 else f"{label}-{variant}.png"


@dataclass(frozen=True)
class SpriteImport:
    stored: dict[str, str]  # pack file -> the persona's sprite file it becomes
    unused: dict[str, str]  # pack file -> why it was not used


def plan_sprites(labels: Sequence[str], names: Sequence[str]) -> SpriteImport:
    """Which pack files become which of the persona's sprites. A file named after one of the labels
    (or a synonym: happy.png for joy) is used as that label; SillyTavern's finer labels fill labels
    still missing (admiration.png shows joy when there is no joy.png)."""
    by_canonical = {canonical(label): label for label in labels}
    fills = projection(labels)
    stored: dict[str, str] = {}
    unused: dict[str, str] = {}
    taken: dict[str, str] = {}
    fallback: list[tuple[int, str, str]] = []
    for name in dict.fromkeys(names):
        match = SPRITE_NAME.match(name)
        if match is None:
            unused[name] = "not a sprite (expected LABEL.png or LABEL-N.png)"
            continue
        word, variant = match["label"], int(match["variant"] or 0)
        label = word if word in labels else by_canonical.get(canonical(word))
        if label is None:
            if canonical(word) in fills:
                fallback.append(
                    (GOEMOTIONS.index(canonical(word)), name, sprite_name(fills[canonical(word)], variant))
                )
            else:
                unused[name] = f"no emotion '{word}' among the persona's labels"
            continue
        target = sprite_name(label, variant)
        if target in taken and word != label:  # joy.png beats happy.png for joy
            unused[name] = f"{taken[target]} already gives {target}"
            continue
        if target in taken:
            unused[taken[target]] = f"{name} already gives {target}"
            del stored[taken[target]]
        stored[name], taken[target] = target, name
    for _, name, target in sorted(fallback):
        if target in taken:
            unused[name] = f"{taken[target]} already gives {target}"
        else:
            stored[name], taken[target] = target, name
    return SpriteImport(stored, unused)


def store_sprites(
    folder: Path,
    persona: Persona,
    files: Sequence[tuple[str, bytes | Callable[[], bytes]]],
    max_pixels: int,
) -> SpriteImport:
    """Store hand-made sprites (name, PNG bytes or a function reading them) for a persona in `folder`.
    SillyTavern's label names (GoEmotions' 28) and common synonyms are mapped onto the persona's
    labels. Files are read and checked one at a time (only their re-encoded PNGs are kept) and
    nothing is written unless every one is good; unused files are reported with the reason."""
    if len(files) > MAX_PACK_FILES:
        raise ExpressionError(f"sprite pack has {len(files)} files, more than {MAX_PACK_FILES}")
    plan = plan_sprites(persona.labels, [Path(name).name.lower() for name, _ in files])
    accepted: list[tuple[str, bytes]] = []
    for name, data in files:
        base = Path(name).name.lower()
        target = plan.stored.get(base)
        if target is None:
            continue
        raw = data() if callable(data) else data
        if len(raw) > MAX_SPRITE_BYTES:
            raise ExpressionError(f"sprite {base} is {len(raw)} bytes, more than {MAX_SPRITE_BYTES}")
        image = decode_image(raw, f"sprite {base}", max_pixels=max_pixels, error=ExpressionError)
        accepted.append((target, png_bytes(image.convert("RGBA"))))
    if not accepted:
        raise ExpressionError(
            f"no usable sprites found (expected files named after {persona.slug}'s emotions, like "
            f"joy.png or joy-1.png; unused: {', '.join(plan.unused) or 'none'})"
        )
    folder.mkdir(parents=True, exist_ok=True)
    write_all([(folder / target, encoded) for target, encoded in accepted])
    return plan
