"""Changing a few settings in config.toml by hand's way: only those lines change, every comment and every
other line stays as the user wrote it."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

from bot.errors import ConfigError

TABLE = re.compile(r"^\s*\[([A-Za-z0-9_.-]+)\]\s*(#.*)?$")


def set_values(text: str, changes: dict[tuple[str, str], Any]) -> str:
    """`text` with `[table] key = value` set for each change: the key's line replaced where it is, or
    added at the end of its table (the table made at the end of the file when missing)."""
    lines = text.splitlines(keepends=True)
    for (table, key), value in changes.items():
        rendered = f"{key} = {_toml(value)}\n"
        start, end = _table_span(lines, table)
        if start is None:
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines += ["\n", f"[{table}]\n", rendered]
            continue
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        at = next((i for i in range(start + 1, end) if pattern.match(lines[i])), None)
        if at is not None:
            lines[at] = rendered
        else:
            last = end
            while last > start + 1 and not lines[last - 1].strip():
                last -= 1  # before the blank lines that end the table
            lines.insert(last, rendered)
    edited = "".join(lines)
    try:
        parsed = tomllib.loads(edited)
    except tomllib.TOMLDecodeError:
        parsed = {}
    for (table, key), value in changes.items():
        if parsed.get(table, {}).get(key) != value:
            raise ConfigError(
                f"could not set [{table}] {key} in the config file (a value over several lines there?):"
                " set it by hand"
            )
    return edited


def _table_span(lines: list[str], table: str) -> tuple[int | None, int]:
    start = None
    for i, line in enumerate(lines):
        found = TABLE.match(line)
        if found and start is not None:
            return start, i
        if found and found.group(1) == table:
            start = i
    return start, len(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))  # a TOML basic string is a JSON string
