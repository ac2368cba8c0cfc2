"""Untrusted text never drives the terminal: a card's greeting, members' names and messages, sprite-pack
file names and the model's own words reach the screen with every control character shown, not obeyed
(no window title, no clipboard write through OSC 52, no cleared screen), in the chat and in every
command that prints them."""

from __future__ import annotations

import io
import json
import re
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bot.terminal.safe import safe_text

from .support.cardfiles import plain_png
from .support.configs import REPO, write_config

ESC, BEL, ST = "\x1b", "\x07", "\x1b\\"
# One of each class a terminal acts on, 7-bit and 8-bit forms.
ATTACKS = {
    "CSI clear screen": f"{ESC}[2J{ESC}[H",
    "OSC window title": f"{ESC}]0;PWNED{BEL}",
    "OSC 52 clipboard": f"{ESC}]52;c;cm0gLXJmIH4={BEL}",
    "OSC 8 hyperlink": f"{ESC}]8;;http://evil.example{ST}click{ESC}]8;;{ST}",
    "DCS": f"{ESC}Pq#0;2;0;0;0{ST}",
    "APC (kitty graphics)": f"{ESC}_Ga=d{ST}",
    "PM and SOS": f"{ESC}^secret{ST}{ESC}Xsos{ST}",
    "C1 CSI": "\x9b2J",
    "C1 OSC": "\x9d52;c;eA==\x07",
    "C1 DCS, APC, ST": "\x90q\x9c\x9fG\x9c",
    "bell, backspace, carriage return, delete": "a\x07b\x08c\rd\x7fe",
    "NUL, vertical tab, form feed": "x\x00y\x0bz\x0c",
}
HOSTILE = "".join(ATTACKS.values())
# What a terminal would act on: C0 controls but tab and newline, DEL, C1.
ACTIVE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@pytest.mark.parametrize("attack", list(ATTACKS.values()), ids=list(ATTACKS))
def test_every_class_of_control_is_shown_not_obeyed(attack: str) -> None:
    shown = safe_text(f"before {attack} after\tand\nnext")
    assert not ACTIVE.search(shown), repr(shown)
    assert shown.startswith("before ") and shown.endswith(" after\tand\nnext")  # tab and newline stay
    if ESC in attack:
        assert "␛" in shown  # visible, so the user sees that something was there


def test_a_sequence_split_across_streamed_pieces_stays_inert() -> None:
    text = f"Hello {ESC}]52;c;cm0gLXJmIH4={BEL} there"
    pieces = [safe_text(text[i : i + 3]) for i in range(0, len(text), 3)]
    assert "".join(pieces) == safe_text(text) and not ACTIVE.search("".join(pieces))


def test_windows_line_ends_are_plain_line_ends() -> None:
    assert safe_text("one\r\ntwo") == "one\ntwo"


def _hostile_setup(tmp_path: Path) -> Path:
    """A config whose default persona came from a card with a hostile greeting, name and description, and
    whose store holds a member with a hostile display name and message (as Discord members can be)."""
    config = write_config(tmp_path)
    card = {
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {
            "name": f"Vex{ESC}]0;PWNED{BEL}",
            "description": f"A trickster. {HOSTILE}",
            "personality": "",
            "scenario": "",
            "first_mes": f"Welcome! {HOSTILE}",
            "mes_example": "",
        },
    }
    card_file = tmp_path / "vex.json"
    card_file.write_text(json.dumps(card))
    done = _cli(config, "persona", "import", str(card_file), "--name", "vex")
    assert done.returncode == 0, done.stderr
    text = config.read_text().replace("[store]\n", '[persona]\ndefault = "vex"\n[store]\n')
    config.write_text(text)
    return config


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "bot", "--config", str(config), *args],
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )


def _inert(output: bytes) -> None:
    """None of the attacks' own bytes reach the screen; their visible stand-ins do."""
    for raw in ("\x1b]0;PWNED", "\x1b]52;", "\x1b[2J", "\x1b]8;;http", "\x1bPq", "\x1b_G", "\x1b^"):
        assert raw.encode() not in output, raw
    for c1 in ("\x9b", "\x9d", "\x90", "\x9f"):
        assert c1.encode() not in output, repr(c1)  # as UTF-8 (\xc2\x9b ...)
    assert "␛]52;c;".encode() in output


def test_persona_commands_print_hostile_cards_safely(tmp_path: Path) -> None:
    config = _hostile_setup(tmp_path)
    listed = _cli(config, "persona", "list")
    assert listed.returncode == 0 and "Vex␛]0;PWNED␇".encode() in listed.stdout, listed.stderr
    shown = _cli(config, "persona", "show", "vex")
    assert shown.returncode == 0, shown.stderr
    _inert(shown.stdout + shown.stderr)


def test_sprite_pack_names_are_printed_safely(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    pack = tmp_path / "pack.zip"
    with zipfile.ZipFile(pack, "w") as archive:
        archive.writestr("joy.png", plain_png())
        # (Not all of HOSTILE: zipfile cuts a name at a NUL, and a "/" makes a folder.)
        name = "".join(
            ATTACKS[k] for k in ("OSC 52 clipboard", "CSI clear screen", "C1 OSC", "OSC window title")
        )
        archive.writestr(f"weird{name}.png", plain_png())
    done = _cli(config, "expressions", "import", "--persona", "mira", str(pack))
    _inert(done.stdout + done.stderr)


@pytest.mark.slow
def test_the_chat_in_a_terminal_shows_hostile_text_without_obeying_it(tmp_path: Path) -> None:
    """In a pseudo-terminal: the card's greeting when the chat opens, a member's name and message stored
    from Discord, and the persona's name as each reply starts."""
    from .test_console import TerminalChat

    config = _hostile_setup(tmp_path)
    chat = TerminalChat(config, "--no-images")
    chat.expect(b"Sam>")
    chat.type("/quit")
    assert chat.close() == 0
    _inert(chat.output)
    assert b"Welcome! " in chat.output

    # A member of a Discord channel, seen later by an admin who opens that channel in the terminal.
    db = tmp_path / "data" / "test.sqlite3"
    with sqlite3.connect(db) as raw:
        raw.execute(
            "INSERT INTO messages (channel_id, author_name, role, content, persona, created_at)"
            " VALUES (77, ?, 'user', ?, 'vex', 0)",
            (f"Eve{ESC}]0;PWNED{BEL}", f"hi {HOSTILE}"),
        )
    chat = TerminalChat(config, "--no-images", "--channel", "77")
    chat.expect(b"Sam>")
    chat.type("/quit")
    assert chat.close() == 0
    _inert(chat.output)
    assert "Eve␛]0;PWNED␇: hi".encode() in chat.output


@pytest.mark.slow
async def test_the_models_streamed_words_are_shown_safely(tmp_path: Path, model) -> None:
    """The model writes an escape sequence, streamed in pieces that split it: the terminal gets it
    inert, the names around it too."""
    from bot.config import load_config
    from bot.core import Engine
    from bot.personas import PersonaLibrary
    from bot.store import Store
    from bot.terminal.console import Console

    from .support.scripted import Scripted

    config = load_config(write_config(tmp_path))
    store = await Store.open(config.resolve(config.store.path))
    try:
        reply = f"Sure. {HOSTILE} Done."
        engine = Engine(config, store, Scripted(model, [reply], chunk=3), PersonaLibrary.from_config(config))
        out = io.StringIO()
        console = Console(engine, 5, f"Sam{ESC}[2J", out, images=False)
        await engine.turn(5, console.user, "Say it.", on_text=lambda t: console.say(t, end=""))
        await console._show_opening()
        written = out.getvalue()
        assert not ACTIVE.search(written), repr(written[:300])
        assert "Sam␛[2J: Say it." in written and "␛]52;c;" in written
    finally:
        await store.close()


def test_log_lines_quoting_untrusted_text_are_safe() -> None:
    """The command line's log handler: a warning that names a persona or a file from outside."""
    import logging

    from bot.terminal.safe import SafeFormatter

    record = logging.LogRecord(
        "bot", logging.WARNING, __file__, 1, "cast member %s sits out", (HOSTILE,), None
    )
    line = SafeFormatter("%(levelname)s %(message)s").format(record)
    assert line.startswith("WARNING cast member ") and not ACTIVE.search(line)
