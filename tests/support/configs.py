"""Config files and folders for tests: each test gets its own database, personas and avatars."""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
SHIPPED_PATHS = ("persona", "avatars", "config.toml")


@functools.cache
def shipped() -> Path:
    """The shipped persona/, avatars/ and config.toml as the checkout's last commit holds them, copied
    once per test run: the personas a user imported, the settings they changed and the faces the bot
    rendered in the working tree never reach a test. Outside a git checkout (an unpacked release), the
    working tree's, less the render cache."""
    target = Path(tempfile.mkdtemp(prefix="rp-bot-shipped-"))
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", "HEAD", *SHIPPED_PATHS],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
    except (OSError, subprocess.SubprocessError, tarfile.TarError):
        for name in SHIPPED_PATHS:
            source = REPO / name
            if source.is_dir():
                shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("cache"))
            else:
                shutil.copyfile(source, target / name)
    return target


def write_config(folder: Path, extra: str = "", *, sprites: bool = True, model: str = "") -> Path:
    """A config.toml in `folder` with its own database, personas and avatars (copied from the repo).
    `sprites=False` leaves out the shipped expression sets, so that faces are rendered; `model` adds
    lines to the [model] table (a server backend, say)."""
    shutil.copytree(shipped() / "persona", folder / "persona", dirs_exist_ok=True)
    skip = ("cache",) if sprites else ("cache", "sprites")
    shutil.copytree(
        shipped() / "avatars", folder / "avatars", dirs_exist_ok=True, ignore=shutil.ignore_patterns(*skip)
    )
    path = folder / "config.toml"
    path.write_text(
        "[model]\nn_ctx = 2048\nmax_reply_tokens = 48\ntemperature = 0.0\nseed = 7\n"
        + model
        + '[store]\npath = "data/test.sqlite3"\n'
        # `auto` would measure the judges in the background during every test; test_emotion covers it.
        # The encoder loads in the background, so which judge read a reply would depend on timing;
        # test_emotion_encoder covers it.
        + '[emotion]\njudge = "classifier"\nencoder = false\n'
        # Recall by meaning loads the encoder and embeds in the background: which lines a turn recalls
        # would depend on timing; test_recall_meaning covers it.
        + "[memory]\nmeaning = false\n"
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

    text = (shipped() / "persona" / "mira.toml").read_text().replace("Mira", name)
    image = ""
    if portrait:
        image = f"{slug}.png"
        with Image.open(shipped() / "avatars" / "mira.png") as mira:
            ImageOps.invert(mira.convert("RGB")).save(folder / "avatars" / image)
    text = text.replace('image = "mira.png"', f'image = "{image}"')
    if icon_url is not None:
        import json

        assets = [{"type": "icon", "uri": icon_url, "name": "main", "ext": "png"}]
        (folder / "persona" / f"{slug}.card.json").write_text(json.dumps({"assets": assets}))
        text += f'\n[card]\nextra = "{slug}.card.json"\n'
    (folder / "persona" / f"{slug}.toml").write_text(text)
