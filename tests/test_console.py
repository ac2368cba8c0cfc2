"""`python -m bot chat` as a person uses it: a real process, typed lines, Ctrl-C, and a restart."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .support.configs import REPO, write_config

pytestmark = pytest.mark.slow


class Chat:
    def __init__(self, config: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "--config", str(config), "chat", "--user", "Sam"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env=env,
        )
        self.output = ""
        self._chunks: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read(1):
            self._chunks.put(chunk)

    def expect(self, text: str, limit: float = 120) -> str:
        deadline = time.monotonic() + limit
        while text not in self.output:
            try:
                self.output += self._chunks.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{text!r} never appeared; output so far:\n{self.output}") from None
        return self.output

    def expect_match(self, pattern: str, limit: float = 120) -> re.Match[str]:
        """The first match of `pattern` in the output, once there is one."""
        deadline = time.monotonic() + limit
        while (found := re.search(pattern, self.output, re.DOTALL)) is None:
            try:
                self.output += self._chunks.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{pattern!r} never matched; output so far:\n{self.output}") from None
        return found

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> int:
        return self.proc.wait(timeout=60)


def test_terminal_chat_survives_ctrl_c_and_restart(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    chat = Chat(config)
    chat.expect("[Mira in channel 0; 0 stored messages]")
    chat.expect("Mira: *Mira sets a kettle")  # the greeting opens a new story
    chat.type("Hello Mira, I'm soaked through.")
    out = chat.expect("judged by classifier)]")
    # The face for the judged emotion: output is not a terminal, so its path.
    label = re.findall(r"\[emotion: (\w+) ", out)[-1]
    chat.expect(f"[face: {tmp_path / 'avatars' / 'sprites' / 'mira' / label}.png]")
    # Ctrl-C while a reply is being written cancels that reply only.
    chat.type("Tell me the longest story you know about the sea.")
    chat.expect("Sam> Mira: ")
    time.sleep(0.3)
    chat.proc.send_signal(signal.SIGINT)
    chat.expect("[reply cancelled; your message is kept in the history]")
    chat.type("/quit")
    assert chat.close() == 0

    again = Chat(config)
    # Both user messages and the first reply are there; the cancelled reply is not.
    again.expect("[Mira in channel 0; 3 stored messages]")
    out = again.expect("Sam: Tell me the longest story you know about the sea.")
    assert "Sam: Hello Mira, I'm soaked through." in out
    again.type("/persona ../../etc")
    again.expect("[error: '../../etc' is not a valid persona name")
    again.type("/persona")  # no name: which persona plays here
    again.expect("[playing Mira (mira); emotions: neutral, joy")
    again.type("/personas")
    again.expect("[mira (Mira: hand-made faces), tobin (Tobin: hand-made faces)]")
    again.type("/reset")  # asked first, as on Discord: nothing erased yet
    again.expect("[erase all 3 messages of channel 0? type /reset yes]")
    again.type("/reset yes")
    again.expect("[forgot 3 messages]")
    again.type("/quit")
    assert again.close() == 0


class TerminalChat:
    """`python -m bot chat` in a pseudo-terminal of 100x40 cells, as a person's terminal runs it."""

    def __init__(self, config: Path, *args: str, user: str | None = "Sam") -> None:
        import fcntl
        import pty
        import struct
        import termios

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 800, 800))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "xterm-256color", "COLORTERM": "truecolor"}
        # This pseudo-terminal does not answer cursor-position requests as a real terminal does.
        env["PROMPT_TOOLKIT_NO_CPR"] = "1"
        who = ["--user", user] if user else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "--config", str(config), "chat", *who, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=REPO,
            env=env,
        )
        os.close(slave)
        self.output = b""

    def expect(self, text: bytes, limit: float = 120) -> bytes:
        import select

        deadline = time.monotonic() + limit
        while text not in self.output:
            ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"{text!r} never appeared; output so far:\n{self.output!r}")
            try:
                self.output += os.read(self.master, 65536)
            except OSError:  # the process ended
                raise AssertionError(f"{text!r} never appeared; output:\n{self.output!r}") from None
        return self.output

    def type(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def keys(self, raw: str) -> None:
        os.write(self.master, raw.encode())

    def expect_count(self, text: bytes, count: int, limit: float = 120) -> bytes:
        import select

        deadline = time.monotonic() + limit
        while self.output.count(text) < count:
            ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"{text!r} not seen {count} times; output:\n{self.output!r}")
            self.output += os.read(self.master, 65536)
        return self.output

    def close(self) -> int:
        code = self.proc.wait(timeout=60)
        os.close(self.master)
        return code


HALF_BLOCK = "▀".encode()


def test_terminal_draws_the_face_inline(tmp_path: Path) -> None:
    chat = TerminalChat(write_config(tmp_path))
    opening = chat.expect(b"[commands: ")
    assert HALF_BLOCK in opening and b"[face: " not in opening  # the current face, drawn
    drawn = opening.count(HALF_BLOCK)
    chat.type("/quit")
    assert chat.close() == 0

    plain = TerminalChat(tmp_path / "config.toml", "--no-images")
    opening = plain.expect(b"[commands: ")
    assert HALF_BLOCK not in opening
    assert f"[face: {tmp_path / 'avatars' / 'sprites' / 'mira' / 'neutral.png'}]".encode() in opening
    plain.type("/quit")
    assert plain.close() == 0
    assert drawn >= 24 * 10  # 24 columns wide, several rows: a picture, not a stray character


def test_chat_says_why_the_face_was_kept(tmp_path: Path) -> None:
    import io

    from bot.core import TurnResult
    from bot.emotion import EmotionResult
    from bot.expressions import ExpressionImage
    from bot.llm import GenerationStats
    from bot.personas import Persona
    from bot.terminal.console import Console

    out = io.StringIO()
    console = Console(None, 0, "Sam", out, images=True)  # type: ignore[arg-type]
    face = tmp_path / "fear.png"
    emotion = EmotionResult("fear", "joy", {"fear": 0.3, "joy": 0.4}, "classifier", "joy 0.40 not 0.05 above")
    result = TurnResult(
        "…", emotion, ExpressionImage(face, "fear"), Persona("mira", "Mira"), 1, None, GenerationStats(), 0, 0
    )
    console._show_result(result)
    assert out.getvalue() == (
        "\n[emotion: fear (joy 0.40, fear 0.30; judged by classifier)]\n"
        "[kept the fear face: joy 0.40 not 0.05 above]\n"
        f"[face: {face}]\n"  # not a terminal: the path
    )


def stored_user_messages(folder: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(folder / "data" / "test.sqlite3") as db:
        return [row[0] for row in db.execute("SELECT content FROM messages WHERE role = 'user' ORDER BY id")]


PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"  # what a terminal sends around pasted text
LEFT, UP, ENTER = "\x1b[D", "\x1b[A", "\r"


def test_the_terminal_edits_lines_keeps_history_and_takes_a_paste_whole(tmp_path: Path) -> None:
    import getpass

    config = write_config(tmp_path)
    account = getpass.getuser()
    name = account[:1].upper() + account[1:]
    chat = TerminalChat(config, "--no-images", user=None)  # the name comes from the system account
    chat.expect(f"{name}>".encode())  # prompt_toolkit moves the cursor rather than print the space
    # A pasted block of several lines is one message, not one per line.
    chat.keys(PASTE_START + "The storm broke the mast.\nWe drifted all night." + PASTE_END + ENTER)
    chat.expect_count(b"judged by classifier)]", 1)
    # Arrow keys edit the line: "abd", left, "c" gives "abcd".
    chat.keys("abd" + LEFT + "c" + ENTER)
    chat.expect_count(b"judged by classifier)]", 2)
    chat.keys(UP + ENTER)  # the previous line again, from the history
    chat.expect_count(b"judged by classifier)]", 3)
    chat.keys("/quit" + ENTER)
    assert chat.close() == 0
    assert stored_user_messages(tmp_path) == [
        "The storm broke the mast.\nWe drifted all night.",
        "abcd",
        "abcd",
    ]
    # The history outlives the session.
    again = TerminalChat(config, "--no-images")
    again.expect(b"Sam>")
    again.keys(UP + UP + ENTER)
    again.expect_count(b"judged by classifier)]", 1)
    again.keys("/quit" + ENTER)
    assert again.close() == 0
    assert stored_user_messages(tmp_path)[-1] == "abcd"


def test_terminal_cast_shows_each_speaker_by_name_with_its_face(tmp_path: Path) -> None:
    from .support.configs import add_persona

    config = write_config(tmp_path, '[cast]\nnext_speaker = "order"\n')
    add_persona(tmp_path, "rook", "Rook")
    chat = Chat(config)
    chat.expect("[commands: ")
    chat.type("/cast add rook")
    chat.expect("[cast: Mira, Rook; name one to speak to it]")
    chat.type("Rook, what do you see out there?")
    answered = chat.expect("[emotion: ")
    spoken = answered.split("name one to speak to it]")[1]
    assert "> Rook: " in spoken and "Mira: " not in spoken
    chat.expect("[face: ")
    after = len(chat.output)
    # Rook has no expression set and no renderer here: his face is drawn over his own portrait (or is
    # the portrait itself, for neutral), never Mira's.
    face = chat.expect_match(r"> Rook: .*?\[face: ([^\]]*)\]").group(1)
    avatars = tmp_path / "avatars"
    assert face == str(avatars / "rook.png") or face.startswith(str(avatars / "cache" / "rook" / "drawn"))
    chat.type("Mira, and you?")
    chat.expect("> Mira: ")
    assert "> Mira: " in chat.output[after:]
    chat.type("/quit")
    assert chat.close() == 0
    chat = Chat(config)  # the cast is the channel's: it is there after a restart
    chat.expect("[Mira, Rook in channel")
    chat.type("/cast remove mira")
    chat.expect("[cast: Rook; name one to speak to it]")
    chat.type("/quit")
    assert chat.close() == 0


def test_terminal_memory_shows_pins_and_takes_corrections(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    chat = Chat(config)
    chat.expect("[commands: ")
    chat.type("/memory")
    chat.expect("[no summary yet: one is written once older lines leave the prompt]")
    chat.type("/memory pin The vault code is 7741.")
    chat.expect("[pinned; 1 fact pinned here]")
    chat.type("/memory edit Sam hid the key at the lighthouse.")
    chat.expect("[Mira's summary is kept as written]")
    chat.type("/memory")
    chat.expect("[Mira's summary, corrected by hand: Sam hid the key at the lighthouse.]")
    chat.expect("[pinned 1: The vault code is 7741.]")
    chat.type("/memory unpin ²")  # a digit to str.isdigit(), not to int(): the help, not a traceback
    chat.expect("/memory [edit TEXT|pin TEXT|unpin N]", limit=10)
    chat.type("/memory unpin 0")
    chat.expect("[error: there is no pinned fact 0 (the channel has 1)]")
    chat.type("/memory unpin 4")
    chat.expect("[error: there is no pinned fact 4 (the channel has 1)]")
    assert "Traceback" not in chat.output and chat.proc.poll() is None
    chat.type("/memory unpin 1")
    chat.expect("[unpinned; 0 facts pinned here]")
    chat.type("/quit")
    assert chat.close() == 0


def test_terminal_shows_corrects_and_erases_the_notes_on_you(tmp_path: Path) -> None:
    """/memory me in the terminal, as on Discord: the notes on the one at the keyboard, corrected, erased;
    /memory members off turns them off (and a correction over the bound is one error line)."""
    config = write_config(tmp_path)
    chat = Chat(config)
    chat.expect("[commands: ")
    chat.type("/memory me")
    chat.expect("[no notes on you yet: they are written from what you tell about yourself]")
    chat.type("/memory me My name is Sam; I use she/her")
    chat.expect(
        "[notes on you, as you wrote them:\n- My name is Sam; I use she/her\n/memory me TEXT corrects"
    )
    chat.type("/memory me " + "x" * 700)
    chat.expect("[error: the notes are 702 characters long; at most 600]")
    chat.type("/memory me forget")
    chat.expect("[no notes on you yet")
    chat.type("/memory members off")
    chat.expect("[notes on members are off]")
    chat.type("/memory me")
    chat.expect("[notes on members are off (/memory members on)]")
    assert "Traceback" not in chat.output
    chat.type("/quit")
    assert chat.close() == 0


def _stored_replies(database: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(database) as raw:
        return [
            r[0] for r in raw.execute("SELECT content FROM messages WHERE role = 'assistant' ORDER BY id")
        ]


def _shown_reply(output: str) -> str:
    """The last reply the chat printed: what follows the last "Mira: " up to its emotion line."""
    return output.rsplit("Mira: ", 1)[1].split("\n[emotion: ", 1)[0].strip()


def test_a_reply_shown_is_stored_whenever_the_chat_is_killed(tmp_path: Path) -> None:
    """kill -9 the moment a reply's emotion line is on screen: after a restart the reply is in the
    history. The database's write lock is held from outside while the reply ends, so the kill lands
    exactly in the gap a show-then-store order leaves (there the emotion line appears while the reply
    cannot be stored yet); storing first, nothing is shown until the reply is in."""
    import sqlite3

    config = write_config(tmp_path)
    database = tmp_path / "data" / "test.sqlite3"
    lines = ["Hello Mira, it is raining.", "What is in the kettle?", "Shall we go out later?"]
    for turn, line in enumerate(lines):
        chat = Chat(config)
        chat.expect("stored messages]")
        chat.type(line)
        holder = None
        if turn == 0:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # the member's line is committed: the model is writing
                with sqlite3.connect(database) as raw:
                    if raw.execute("SELECT 1 FROM messages WHERE content = ?", (line,)).fetchone():
                        break
            holder = sqlite3.connect(database, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")  # no write gets through until it lets go
            try:
                chat.expect("\n[emotion: ", limit=2.0)  # shown while it cannot be stored?
                chat.proc.kill()
            except AssertionError:
                pass  # nothing shown yet: the reply waits to be stored first
            holder.execute("ROLLBACK")
            holder.close()
        if chat.proc.poll() is None:
            chat.expect("\n[emotion: ")
            chat.proc.kill()  # SIGKILL, at once: no clean shutdown
        chat.proc.wait(timeout=30)
        shown = _shown_reply(chat.output)
        assert shown, chat.output
        stored = _stored_replies(database)
        assert len(stored) == turn + 1 and stored[-1] == shown, (stored, shown)
    again = Chat(config)
    again.expect(f"[Mira in channel 0; {2 * len(lines)} stored messages]")
    again.type("/quit")
    assert again.close() == 0


def test_terminal_autonomy_speaks_up_once_after_a_quiet_spell_and_stops_when_off(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[autonomy]\nquiet_seconds = 2.0\nmember_seconds = 600.0\n")
    chat = Chat(config)
    chat.expect("[commands: ")
    chat.type("/autonomy sometimes")
    chat.expect("[/autonomy on [QUIET_MINUTES] or /autonomy off]")
    chat.type("/autonomy on 2000")
    chat.expect("[error: quiet_minutes must be between 1 and 1440 (a day)]")
    chat.type("/autonomy on")
    chat.expect("the persona may speak up on its own, at most 3 times an hour")
    chat.type("Mira, the lighthouse lamp just went out.")
    chat.expect("[emotion: ")
    chat.expect_match(r"Mira \(on their own\): \S.*?\[emotion: ")  # its line, then its face
    chat.type("Do you hear the bell?")  # a second line of yours: a second quiet spell, a second line
    chat.expect_match(r"(on their own\): .*){2}\[emotion: ")
    chat.type("/autonomy off")
    chat.expect("[the persona speaks only when spoken to]")
    chat.type("/quit")
    assert chat.close() == 0
    assert chat.output.count("(on their own)") == 2 and "Traceback" not in chat.output
    assert "could not speak up" not in chat.output
