from __future__ import annotations

from pathlib import Path

import pytest

from bot.files import write_all


def test_write_all_puts_everything_back_when_one_write_fails(tmp_path: Path) -> None:
    old = tmp_path / "old.txt"
    old.write_bytes(b"before")
    new = tmp_path / "new.txt"
    blocked = tmp_path / "a-file" / "x.txt"  # its parent is a file: this write fails
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OSError):
        write_all([(old, b"after"), (new, b"fresh"), (blocked, b"never")])
    assert old.read_bytes() == b"before" and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "old.txt"]  # no temporary files left
    write_all([(old, b"after"), (new, b"fresh")])
    assert (old.read_bytes(), new.read_bytes()) == (b"after", b"fresh")
