"""Config files and folders for tests: each test gets its own database, personas and avatars."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def write_config(folder: Path, extra: str = "", *, sprites: bool = True, model: str = "") -> Path:
    """A config.toml in `folder` with its own database, personas and avatars (copied from the repo).
    `sprites=False` leaves out the shipped expression sets, so that faces are rendered; `model` adds
    lines to the [model] table (a server backend, say)."""
    shutil.copytree(REPO / "persona", folder / "persona", dirs_exist_ok=True)
    skip = ("cache",) if sprites else ("cache", "sprites")
    shutil.copytree(
        REPO / "avatars", folder / "avatars", dirs_exist_ok=True, ignore=shutil.ignore_patterns(*skip)
    )
    path = folder / "config.toml"
    path.write_text(
        "[model]\nn_ctx = 2048\nmax_reply_tokens = 48\ntemperature = 0.0\nseed = 7\n"
        + model
        + '[store]\npath = "data/test.sqlite3"\n'
        # `auto` would measure the judges in the background during every test; test_emotion covers it.
        + '[emotion]\njudge = "classifier"\n'
        + extra
    )
    return path


def folder_snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def expression_settings(model: Path | str) -> str:
    return (
        f'[expressions]\nmodel = "{model}"\nresolution = 64\nsteps = 2\nmask_dilate = 2\nmask_blur = 3\n'
        "crop_padding = 8\nlocal_files_only = true\n"
    )


def add_persona(
    folder: Path, slug: str, name: str, *, portrait: bool = True, icon_url: str | None = None
) -> None:
    """Another persona beside Mira in a test's persona folder: Mira's file under another name, with her
    portrait in other colours (so that its faces are its own), or with none; `icon_url` as its card's
    V3 icon asset."""
    from PIL import Image, ImageOps

    text = (REPO / "persona" / "mira.toml").read_text().replace("Mira", name)
    image = ""
    if portrait:
        image = f"{slug}.png"
        with Image.open(REPO / "avatars" / "mira.png") as mira:
            ImageOps.invert(mira.convert("RGB")).save(folder / "avatars" / image)
    text = text.replace('image = "mira.png"', f'image = "{image}"')
    if icon_url is not None:
        import json

        assets = [{"type": "icon", "uri": icon_url, "name": "main", "ext": "png"}]
        (folder / "persona" / f"{slug}.card.json").write_text(json.dumps({"assets": assets}))
        text += f'\n[card]\nextra = "{slug}.card.json"\n'
    (folder / "persona" / f"{slug}.toml").write_text(text)
