"""Text made safe for a terminal: what a card, a member, a file name or the model wrote is shown, never
obeyed by the terminal.

Terminals act on control characters: ESC starts the sequences that move the cursor, clear the screen,
rename the window or (OSC 52) write the clipboard; the 8-bit C1 codes (CSI, OSC, DCS, APC...) do the same
on terminals that take them; BEL, backspace and a lone carriage return rewrite what is shown. Every such
character becomes a visible stand-in (ESC is shown as "␛"), so a whole sequence prints as inert text,
also when it arrives split across two streamed chunks. Newlines and tabs stay. The project's own colours
and pictures do not pass through here.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TextIO

# C0 controls but tab and newline, DEL, and the C1 range.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)  # the Control Pictures block: ␀ … ␛ … ␟
    if code == 0x7F:
        return "␡"
    return f"\\x{code:02x}"  # C1 codes have no pictures; their hex is shown


def safe_text(text: str) -> str:
    """`text` with every control character a terminal would act on shown instead (Windows line ends
    become plain newlines first)."""
    return _CONTROL.sub(_visible, text.replace("\r\n", "\n"))


class SafeFormatter(logging.Formatter):
    """Log lines quote names, file names and messages from outside: made safe like the rest."""

    def format(self, record: logging.LogRecord) -> str:
        return safe_text(super().format(record))


def echo(text: str, file: TextIO | None = None) -> None:
    """print() for the command line, with `text` made safe."""
    print(safe_text(text), file=file or sys.stdout)


def counted(n: int, thing: str) -> str:
    """ "1 fact", "2 facts", "0 facts": a count as a person writes it."""
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"
