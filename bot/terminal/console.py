"""Terminal chat on the same engine and store as the Discord bot.

In a terminal, lines are edited with prompt_toolkit (arrow keys, history kept across sessions, a pasted
block of several lines sent as one message). Otherwise (a pipe, a test) input is read on a daemon thread.
Either way the event loop stays free, and Ctrl-C while a reply is being written cancels that reply: the
user's message stays stored, the half reply is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from bot.core import Autonomy, Engine, TurnResult, spell
from bot.errors import BotError, GaveWay, whole_number
from bot.terminal.faces import FACE_CELLS, TerminalFaces
from bot.terminal.safe import counted, safe_text

HELP = (
    "commands: /persona [NAME] (show, or switch), /personas (list), /cast [add|remove NAME] (several"
    " personas), /memory [edit TEXT|pin TEXT|unpin N] (what it remembers), /memory me [TEXT|forget] (its"
    " notes on you), /memory members on|off, /autonomy on [QUIET_MINUTES]|off (the persona speaks up after"
    " a quiet spell), /reset (forget this channel), /quit"
)
QUIET_TICK = 1.0  # seconds between looks for a quiet spell
CONFIRM_RESET = "yes"
# The terminal is one server with one member: the notes /memory me shows are kept under these ids.
TERMINAL_SERVER = 0
TERMINAL_MEMBER = 0


class Console:
    def __init__(
        self,
        engine: Engine,
        channel_id: int,
        user: str,
        out: TextIO = sys.stdout,
        *,
        images: bool = True,
        history_file: Path | None = None,
        face_width: int = FACE_CELLS,
    ) -> None:
        self.engine = engine
        self.history_file = history_file
        self.channel_id = channel_id
        self.user = user
        self.out = out
        self.faces = TerminalFaces(out, images, width=face_width)
        self._shown: Path | None = None  # the face last drawn, so an unchanged face is not drawn again
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._turn: asyncio.Task[TurnResult] | None = None
        self._editor: Any = None
        self._speaking: asyncio.Task[list[TurnResult]] | None = None
        self.autonomy = Autonomy()

    def say(self, text: str = "", end: str = "\n") -> None:
        """Write a line (or a streamed piece of one): every name, message and reply passes here, made
        safe, so none of it can drive the terminal."""
        self.out.write(safe_text(text) + end)
        self.out.flush()

    def _read_stdin(self, loop: asyncio.AbstractEventLoop) -> None:
        if isinstance(sys.stdin, io.TextIOWrapper):
            # Bytes that are not UTF-8 (a pasted Latin-1 line) become U+FFFD instead of ending the chat.
            sys.stdin.reconfigure(errors="replace")
        for line in sys.stdin:
            loop.call_soon_threadsafe(self._lines.put_nowait, line.rstrip("\n"))
        loop.call_soon_threadsafe(self._lines.put_nowait, None)

    def _interrupt(self) -> None:
        if self._turn is not None and not self._turn.done():
            self._turn.cancel()
        else:
            self._lines.put_nowait(None)

    def _line_editor(self) -> Any:
        """A prompt_toolkit session when both ends are a terminal; None for pipes."""
        if not (sys.stdin.isatty() and self.out.isatty()):
            return None
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, InMemoryHistory

        history: Any = InMemoryHistory()
        if self.history_file is not None:
            self.history_file.parent.mkdir(parents=True, exist_ok=True)
            history = FileHistory(str(self.history_file))
        return PromptSession(history=history)

    async def _next_line(self, editor: Any) -> str | None:
        """The next line typed; None at the end of input (Ctrl-D, end of a pipe)."""
        if editor is None:
            self.say(f"{self.user}> ", end="")
            return await self._lines.get()
        while True:
            try:
                # Our SIGINT handler stays in charge: Ctrl-C at the prompt is a key press here.
                line: str = await editor.prompt_async(f"{safe_text(self.user)}> ", handle_sigint=False)
                return line
            except KeyboardInterrupt:
                continue  # Ctrl-C at the prompt clears the line, as in a shell
            except EOFError:
                return None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        editor = self._line_editor()
        if editor is None:
            threading.Thread(target=self._read_stdin, args=(loop,), daemon=True).start()
        # Not possible off the main thread or on Windows: Ctrl-C then simply ends the program.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, self._interrupt)
        self._editor = editor
        await self._show_opening()
        self.say(f"[{HELP}]")
        watcher = asyncio.create_task(self._speak_up_when_quiet())
        try:
            await self._chat(editor)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _chat(self, editor: Any) -> None:
        while True:
            line = await self._next_line(editor)
            if line is None:
                self.say()
                break
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not await self._command(line):
                    break
                continue
            self.autonomy.member_spoke(self.channel_id)
            if self._speaking is not None:
                self._speaking.cancel()  # you go first: a line the persona was writing on its own is dropped

            async def show(result: TurnResult) -> None:
                self._show_result(result)  # each reply of a cast with its own face, as it is done

            self._turn = asyncio.create_task(
                self.engine.turn(
                    self.channel_id,
                    self.user,
                    line,
                    author_id=TERMINAL_MEMBER,
                    server_id=TERMINAL_SERVER,
                    on_text=lambda t: self.say(t, end=""),
                    on_start=lambda speaker: self.say(f"{speaker.name}: ", end=""),
                    deliver=show,
                    store_first=True,
                )
            )
            try:
                await self._turn
            except asyncio.CancelledError:
                if asyncio.current_task() is not None and asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
                self.say("\n[reply cancelled; your message is kept in the history]")
                continue
            except BotError as exc:
                self.say(f"\n[error: {exc}]")
                continue
            finally:
                self._turn = None
                self.autonomy.persona_spoke(self.channel_id)

    async def _speak_up_when_quiet(self) -> None:
        """With /autonomy on: after a quiet spell the persona adds a line on its own, once per line of
        yours, within the hourly cap, only while the model is idle (bot/core/autonomy.py's bounds)."""
        admin = self.engine.admin
        while True:
            await asyncio.sleep(QUIET_TICK)
            settings = await admin.autonomy(self.channel_id)
            if self._turn is not None or not admin.model_idle():
                continue
            if not self.autonomy.quiet_due(self.channel_id, settings):
                continue

            async def show(result: TurnResult) -> int:
                self.autonomy.acted(self.channel_id, quiet_spell=True)
                await self._aside(lambda: self._show_unprompted(result))
                return 0

            lines = min(settings.cast_turns, self.autonomy.room(self.channel_id, settings))
            self._speaking = asyncio.create_task(
                self.engine.speak_up(self.channel_id, show, lines=lines, store_first=True, quiet=True)
            )
            try:
                await self._speaking
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise  # the chat is ending
                # else you typed a line: it goes first, and the half-written one is dropped
            except GaveWay:
                pass
            except BotError as exc:
                await self._aside(functools.partial(self.say, f"[could not speak up: {exc}]"))
                self.autonomy.acted(self.channel_id, quiet_spell=True)  # not again until you speak
            finally:
                self._speaking = None

    async def _aside(self, show: Callable[[], None]) -> None:
        """Print between the lines you type: above the prompt in a terminal, as is in a pipe."""
        if self._editor is None:
            show()
            return
        from prompt_toolkit.application import run_in_terminal

        await run_in_terminal(show)

    def _show_unprompted(self, result: TurnResult) -> None:
        self.say(f"\n{result.persona.name} (on their own): {result.text}")
        self._show_result(result)

    async def _show_opening(self) -> None:
        cast = await self.engine.admin.cast(self.channel_id)
        persona = cast[0]
        count = await self.engine.admin.message_count(self.channel_id)
        names = ", ".join(p.name for p in cast)
        self.say(f"[{names} in channel {self.channel_id}; {count} stored messages]")
        history = await self.engine.admin.recent_messages(self.channel_id, limit=6)
        if not history and persona.greeting:
            self.say(f"{persona.name}: {persona.fill(persona.greeting, self.user)}")
        for message in history:
            self.say(f"{message.author_name}: {message.content}")
        face = await self.engine.admin.current_face(self.channel_id)
        self._show_face(face.path, face.box)

    def _show_result(self, result: TurnResult) -> None:
        emotion = result.emotion
        top = sorted(emotion.probabilities.items(), key=lambda kv: -kv[1])[:3]
        odds = ", ".join(f"{label} {p:.2f}" for label, p in top)
        self.say(f"\n[emotion: {emotion.label} ({odds}; judged by {emotion.judge})]")
        if emotion.kept:
            self.say(f"[kept the {emotion.label} face: {emotion.kept}]")
        self._show_face(result.image.path, result.image.box)
        if result.image.fresh is not None:
            box = result.image.box
            result.image.fresh.add_done_callback(lambda future: self._render_landed(future, box))

    def _show_face(self, path: Path | None, box: tuple[int, int, int, int] | None) -> None:
        if path is None:
            self.say("[face: (no portrait)]")
        elif path == self._shown and self.faces.active:
            return  # the same face as before: the terminal already shows it
        elif not self.faces.show(path, box):
            self.say(f"[face: {path}]")
        self._shown = path

    def _render_landed(
        self, future: asyncio.Future[Path | None], box: tuple[int, int, int, int] | None
    ) -> None:
        if not future.cancelled() and future.exception() is None and future.result() is not None:
            self.say("\n[new face rendered]")
            self._show_face(future.result(), box)

    async def _memory(self, arg: str) -> None:
        """/memory shows the channel's memory; edit, pin and unpin correct it (as /manage memory)."""
        admin, channel = self.engine.admin, self.channel_id
        action, _, text = arg.partition(" ")
        if action in ("me", "members"):
            await self._member_memory(action, text.strip())
            return
        if action == "edit":
            whose = await admin.edit_summary(channel, text)
            self.say(f"[{whose.name}'s summary is {'kept as written' if text.strip() else 'cleared'}]")
        elif action == "pin":
            pins = await admin.pin(channel, text)
            self.say(f"[pinned; {counted(len(pins), 'fact')} pinned here]")
        elif action == "unpin" and (number := whole_number(text)) is not None:
            pins = await admin.unpin(channel, number)
            self.say(f"[unpinned; {counted(len(pins), 'fact')} pinned here]")
        elif action:
            self.say(f"[{HELP}]")
            return
        view = await admin.memory(channel)
        names = {p.slug: p.name for p in await admin.cast(channel)}
        for slug, summary in view.summaries.items():
            edited = ", corrected by hand" if summary.edited else ""
            self.say(f"[{names.get(slug, slug)}'s summary{edited}: {summary.text}]")
        if not view.summaries:
            self.say("[no summary yet: one is written once older lines leave the prompt]")
        for number, pin in enumerate(view.pins, 1):
            self.say(f"[pinned {number}: {pin.text}]")
        for message in view.recalled:
            self.say(f"[recalled: {message.author_name}: {message.content}]")

    async def _member_memory(self, action: str, text: str) -> None:
        """/memory me [TEXT|forget]: the persona's notes on you, corrected or erased; /memory members on|off
        (as /memory me and /manage memory members on Discord)."""
        admin = self.engine.admin
        if action == "members" and text in ("on", "off"):
            await admin.keep_member_notes(TERMINAL_SERVER, text == "on")
            self.say(f"[notes on members are {text}]")
            return
        if action == "me" and text:
            await admin.correct_member_notes(
                TERMINAL_SERVER, TERMINAL_MEMBER, "" if text == "forget" else text
            )
        elif action != "me":
            self.say(f"[{HELP}]")
            return
        notes, kept = await admin.member_notes(TERMINAL_SERVER, TERMINAL_MEMBER)
        if not kept:
            self.say("[notes on members are off (/memory members on)]")
        elif notes is None or not notes.text:
            self.say("[no notes on you yet: they are written from what you tell about yourself]")
        else:
            how = ", as you wrote them" if notes.edited else ""
            self.say(
                f"[notes on you{how}:\n{notes.text}\n/memory me TEXT corrects them,"
                " /memory me forget erases them]"
            )

    async def _autonomy(self, arg: str) -> None:
        """/autonomy on [QUIET_MINUTES] | off: whether the persona speaks up after a quiet spell here."""
        switch, _, minutes = arg.partition(" ")
        quiet = whole_number(minutes.strip()) if minutes.strip() else None
        if switch not in ("on", "off") or (minutes.strip() and quiet is None):
            self.say("[/autonomy on [QUIET_MINUTES] or /autonomy off]")
            return
        settings = await self.engine.admin.configure_autonomy(
            self.channel_id, switch == "on", quiet_minutes=quiet
        )
        if settings.enabled:
            self.autonomy.member_spoke(self.channel_id)  # the quiet spell counts from now
            self.say(
                f"[after {spell(settings.quiet_seconds)} of quiet the persona may speak up on its own,"
                f" at most {settings.max_per_hour} times an hour; /autonomy off stops it]"
            )
        else:
            self.say("[the persona speaks only when spoken to]")

    async def _command(self, line: str) -> bool:
        """Handle a /command; False means quit."""
        name, _, arg = line.partition(" ")
        try:
            if name == "/quit":
                return False
            if name == "/reset":
                # As on Discord, erasing a story is asked for twice.
                if arg.strip() != CONFIRM_RESET:
                    count = await self.engine.admin.message_count(self.channel_id)
                    self.say(f"[erase all {count} messages of channel {self.channel_id}? type /reset yes]")
                    return True
                removed = await self.engine.admin.reset(self.channel_id)
                self.say(f"[forgot {removed} messages]")
                await self._show_opening()
            elif name == "/persona" and not arg.strip():
                persona = await self.engine.admin.persona_for(self.channel_id)
                labels = ", ".join(persona.labels)
                self.say(
                    f"[playing {persona.name} ({persona.slug}); emotions: {labels}; /persona NAME switches]"
                )
            elif name == "/persona" and arg.strip():
                persona = await self.engine.admin.set_persona(self.channel_id, arg.strip())
                self.say(f"[now playing {persona.name}]")
                await self._show_opening()
            elif name == "/cast":
                action, _, who = arg.strip().partition(" ")
                if action == "add" and who.strip():
                    cast = await self.engine.admin.cast_add(self.channel_id, who.strip())
                elif action == "remove" and who.strip():
                    cast = await self.engine.admin.cast_remove(self.channel_id, who.strip())
                elif not action:
                    cast = await self.engine.admin.cast(self.channel_id)
                else:
                    self.say(f"[{HELP}]")
                    return True
                self.say("[cast: " + ", ".join(p.name for p in cast) + "; name one to speak to it]")
            elif name == "/memory":
                await self._memory(arg.strip())
            elif name == "/autonomy":
                await self._autonomy(arg.strip())
            elif name == "/personas":
                listed = [
                    f"{slug} ({shown}{': ' + faces if faces else ''})"
                    for slug, shown, faces in self.engine.admin.persona_overview()
                ]
                self.say("[" + ", ".join(listed) + "]")
            else:
                self.say(f"[{HELP}]")
        except BotError as exc:
            self.say(f"[error: {exc}]")
        return True
