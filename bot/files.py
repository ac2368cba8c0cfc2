"""Writing files so that a reader (or a crash) sees the old content or the new one, never half of it."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

from PIL import Image

from bot.errors import BotError


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, flush it to disk, then rename it over `path`. The
    file keeps its mode when it existed; a new one gets the mode any program would give it (0666 less
    the umask), not the temporary file's private 0600."""
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.chmod(tmp, mode if mode is not None else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    # The only way to read the umask is to set it; set it straight back.
    current = os.umask(0o022)
    os.umask(current)
    return current


def write_all(writes: list[tuple[Path, bytes]]) -> None:
    """Write several files, all of them or none: if one write fails, the files written before it get
    their old content back (or are removed when they are new)."""
    before = {path: path.read_bytes() if path.is_file() else None for path, _ in writes}
    try:
        for path, data in writes:
            atomic_write(path, data)
    except BaseException:
        for path, old in before.items():
            if old is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write(path, old)
        raise


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def check_output(path: Path) -> None:
    """A file the user named to be written: refused with one line when its folder is missing or it
    names a folder, a pipe or a device, before anything else of the command happens."""
    if path.is_dir():
        raise BotError(f"{path}: is a folder; name a file to write")
    if path.exists() and not path.is_file():
        raise BotError(f"{path}: not a regular file (a pipe or a device); name a file to write")
    if not path.parent.is_dir():
        raise BotError(f"{path}: its folder {path.parent} does not exist")


def write_output(path: Path, data: bytes) -> None:
    """Write a file the user named, whole or not at all; one line when it cannot be."""
    check_output(path)
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise BotError(f"{path}: cannot write: {exc.strerror}") from None


def check_input(path: Path) -> None:
    """A file the user named to be read: a regular file (a pipe would block the command for good)."""
    if not path.exists():
        raise BotError(f"{path}: no such file")
    if not path.is_file():
        raise BotError(f"{path}: not a regular file; name the file to read")
