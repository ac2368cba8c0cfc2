"""Parsing the project's own source in tests that read it."""

from __future__ import annotations

import ast

TRIES = 5


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    """`ast.parse`, tried again when CPython 3.11 reports "AST constructor recursion depth mismatch": the
    constructor counts its depth per interpreter, not per thread, so a parse in another thread at the same
    moment (a library loading in the background of an earlier test) spoils the count (CPython gh-106905)."""
    for attempt in range(TRIES):
        try:
            return ast.parse(source, filename)
        except SystemError:
            if attempt == TRIES - 1:
                raise
    raise AssertionError("unreachable")
