"""Memory of each member: short notes of what a member told about themselves (name, pronouns, likes,
family, pets, running jokes), kept per server and member, written by the model in the background between
replies as summaries are, and put in the prompt when that member speaks.

The model's notes are untrusted text: a note is kept only when a word of it comes from the member's own
lines or the notes before (a small model asked for facts invents some), lines that tell nothing about the
speaker ("I", "my", "me") never reach the model, and the notes are bounded in lines and characters. A
member sees, corrects and erases their notes (`/memory me`); their correction is kept as written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot.bounded import LRUDict
from bot.errors import BotError
from bot.llm import LLMBackend
from bot.llm.base import Message
from bot.memory.recall import STOPWORDS, WORD
from bot.memory.summaries import ask_between_replies
from bot.store import MemberNotes, Store, StoredMessage

_log = logging.getLogger(__name__)

SESSION = "member notes"  # the model's evaluated prefix for notes, apart from every channel's
MAX_PENDING = 256  # members whose notes wait to be written; the oldest request gives way to a newer one
SOURCE_LINES = 40  # of the member's newest lines read per job
NOTE_TOKENS = 160  # the model's answer, at most
MAX_NOTE_LINES = 12
MAX_NOTE_CHARS = 600
MAX_LINE_CHARS = 160
RETRY_SECONDS = 2.0  # after giving way to a reply
# A line that may tell something about its speaker.
TELLING = re.compile(r"\b(?:i|i'm|im|i've|i'd|my|me|mine|myself|call me)\b", re.IGNORECASE)
BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")

SYSTEM = (
    "You keep notes about one member of a roleplay chat: only what the member told about themselves"
    " (name, pronouns, age, home, work, likes and dislikes, pets, family and friends, running jokes)."
    " Never invent anything, never note what characters in the story did."
)


@dataclass(frozen=True)
class NotesJob:
    server_id: int
    member_id: int
    name: str  # the member's display name, as the model sees their lines


def note_lines(text: str) -> list[str]:
    """The notes as lines, each without its bullet."""
    lines = (BULLET.sub("", line).strip() for line in text.splitlines())
    return [" ".join(line.split()) for line in lines if line]


GROUNDED_SHARE = 1.0  # of a note's words that the member must have said (or the notes before held)


def _stem(word: str) -> str:
    """A crude stem, enough to match "works" with "work" and "cats" with "cat"."""
    word = word.removesuffix("'s")
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _content(text: str, leave_out: set[str]) -> set[str]:
    return {
        _stem(w)
        for w in WORD.findall(text.lower())
        if len(w) >= 3 and w not in STOPWORDS and w not in leave_out
    }


def grounded(answer: str, base: str, said: Sequence[str], name: str) -> str:
    """The model's notes, each line kept only where GROUNDED_SHARE of its words (not stopwords, not the
    member's name) come from what the member said or the notes before: a small model asked for facts
    invents some ("she/his", a piano for a violin). Then the earlier notes the answer left out, within
    MAX_NOTE_LINES and MAX_NOTE_CHARS."""
    own = set(WORD.findall(name.lower()))
    known = _content("\n".join([*said, base]), own)
    kept: list[str] = []
    for line in [*note_lines(answer), *note_lines(base)]:
        line = line[:MAX_LINE_CHARS]
        words = _content(line, own)
        if (
            words
            and len(words & known) >= GROUNDED_SHARE * len(words)
            and line.lower() not in {k.lower() for k in kept}
        ):
            kept.append(line)
    notes: list[str] = []
    for line in kept[:MAX_NOTE_LINES]:
        if sum(len(n) + 3 for n in notes) + len(line) + 3 > MAX_NOTE_CHARS:
            break
        notes.append(line)
    return "\n".join(f"- {line}" for line in notes)


class NotesWriter:
    """Writes members' notes in the background, one member at a time, giving way to replies."""

    def __init__(self, store: Store, llm: Callable[[], LLMBackend]) -> None:
        self.store = store
        self._llm = llm  # read at each job: the engine's model may be swapped
        self._jobs: LRUDict[tuple[int, int], NotesJob] = LRUDict(MAX_PENDING)
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()  # set while no job waits (tests, bench)
        self.idle.set()
        self.last_answer: str | None = None  # the model's last notes as it wrote them (tests, bench)
        self.stored = asyncio.Event()  # set each time a member's notes are stored (tests wait on it)

    def request(self, job: NotesJob) -> None:
        """Bring these notes up to date with what the member said, soon."""
        self._jobs[(job.server_id, job.member_id)] = job
        self.idle.clear()
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="member notes")

    def drop(self, member_id: int) -> None:
        """Forget the member's waiting jobs (their words are being erased)."""
        for key in [k for k in self._jobs if k[1] == member_id]:
            del self._jobs[key]

    async def _run(self) -> None:
        while True:
            if not self._jobs:
                self.idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            key = next(iter(self._jobs))
            job = self._jobs.pop(key)
            try:
                done = await self._write(job)
            except BotError as exc:
                _log.warning("memory: could not write notes on member %s: %s", job.member_id, exc)
                done = True
            if not done:
                self._jobs.setdefault(key, job)
                await asyncio.sleep(RETRY_SECONDS)

    async def _write(self, job: NotesJob) -> bool:
        """Fold the member's new lines into their notes. False when it gave way to a reply."""
        for _ in range(3):  # overtaken by an edit or erasure: read again, a few times at most
            base = await self.store.member_notes(job.server_id, job.member_id)
            if base is not None and base.edited:
                return True  # the member's own notes are kept as written
            lines = await self.store.member_lines(
                job.server_id, job.member_id, base.through_id if base else 0, SOURCE_LINES
            )
            if not lines:
                return True
            telling = [m for m in lines if TELLING.search(m.content)]
            text = base.text if base is not None else ""
            if telling:
                answer = await self._ask(job, telling, base)
                if answer is None:
                    return False
                self.last_answer = answer
                text = grounded(answer, text, [m.content for m in telling], job.name)
            if await self.store.put_member_notes(job.server_id, job.member_id, text, lines, base):
                self.stored.set()
                return True
        return True

    async def _ask(
        self, job: NotesJob, lines: Sequence[StoredMessage], base: MemberNotes | None
    ) -> str | None:
        shown = "\n".join(f"{job.name}: {' '.join(m.content.split())}" for m in lines)
        old = base.text if base is not None and base.text else "(nothing yet)"
        messages: list[Message] = [
            {"role": "system", "content": SYSTEM},
            {
                "role": "user",
                "content": f"Notes about {job.name} so far:\n{old}\n\nNew lines by {job.name}:\n{shown}\n\n"
                f"Write the updated notes about {job.name}: one short fact per line, each starting"
                " with '- '. Keep the earlier notes that still hold. Nothing else.",
            },
        ]
        return await ask_between_replies(self._llm(), messages, NOTE_TOKENS, SESSION)

    async def close(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
