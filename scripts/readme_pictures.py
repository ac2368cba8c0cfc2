"""Draws the README's pictures of faces made with no model (docs/): the example personas as any imported
card is, without their hand-made sets, through the bot's own commands. Run it again after changing the
drawn faces (bot/expressions/drawn.py).

- docs/drawn-sheet.png: Mira's drawn set, placed on her face box (`./run expressions render`'s sheet).
- docs/drawn-love.png: one of those faces as Discord shows it.
- docs/badge-sheet.png: Tobin's drawn set with no face box: the corner badge.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def bot(folder: Path, *args: str) -> None:
    command = [sys.executable, "-m", "bot", "--config", str(folder / "config.toml"), *args]
    subprocess.run(command, check=True, cwd=ROOT)


def main() -> None:
    DOCS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        shutil.copytree(ROOT / "persona", folder / "persona")
        shutil.copytree(
            ROOT / "avatars", folder / "avatars", ignore=shutil.ignore_patterns("cache", "sprites")
        )
        (folder / "config.toml").write_text('[store]\npath = "data/bot.sqlite3"\n')
        tobin = folder / "persona" / "tobin.toml"
        tobin.write_text(re.sub(r"^face_box = .*\n", "", tobin.read_text(), flags=re.MULTILINE))
        bot(folder, "expressions", "render", "--persona", "mira", "--sheet", str(DOCS / "drawn-sheet.png"))
        bot(folder, "expressions", "render", "--persona", "tobin", "--sheet", str(DOCS / "badge-sheet.png"))
        [love] = (folder / "avatars" / "cache" / "mira" / "drawn").glob("love-*.png")
        with Image.open(love) as face:
            face.convert("RGB").resize((256, 320), Image.Resampling.LANCZOS).save(DOCS / "drawn-love.png")
    for name in ("drawn-sheet.png", "badge-sheet.png", "drawn-love.png"):
        with Image.open(DOCS / name) as picture:  # smaller files for the repository
            picture.convert("RGB").save(DOCS / name, optimize=True)
        print(f"wrote {DOCS / name}")


if __name__ == "__main__":
    main()
