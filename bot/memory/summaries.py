"""The background summariser: when a prompt window moves, the lines that left it are folded into that
(channel, persona)'s summary by the model, between replies: it starts only when no reply waits for the
model, and gives way (to try again later) the moment one does."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.bounded import LRUDict
from bot.config import MemoryConfig
from bot.errors import BotError, GaveWay
from bot.llm import LLMBackend
from bot.llm.base import Message
from bot.store import Store, StoredMessage, Summary

_log = logging.getLogger(__name__)

SESSION = "memory"  # the model's evaluated prefix for summaries, apart from every channel's
MAX_PENDING = 256  # (channel, persona) summaries waiting; the oldest request gives way to a newer one
SOURCE_LINES = 400  # lines read per job (the newest unsummarised ones); older ones stay findable by recall
PROMPT_ROOM = 0.6  # share of the context one summarising prompt may fill with lines
RETRY_SECONDS = 2.0  # after giving way to a reply

SYSTEM = (
    "You keep the notes of a roleplay. Update the summary with the new lines: who is who, names, places,"
    " objects, promises, what happened and how people feel. Plain sentences, past tense, no dialogue."
    " Keep every fact of the old summary that still matters."
)


@dataclass(frozen=True)
class Job:
    channel_id: int
    persona: str  # whose view: in a cast, a persona knows only what it saw
    persona_name: str
    personas: tuple[str, ...]  # the conversation's personas (the store's history filter)
    before_id: int  # the window's first line: everything older may be summarised


class Summariser:
    def __init__(
        self, store: Store, llm: Callable[[], LLMBackend], config: MemoryConfig, count: Callable[[str], int]
    ) -> None:
        self.store = store
        self._llm = llm  # read at each job: the engine's model may be swapped
        self.config = config
        self._count = count
        self._jobs: LRUDict[tuple[int, str], Job] = LRUDict(MAX_PENDING)
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._checked: LRUDict[tuple[int, str], int] = LRUDict(4096)  # before_id already found done
        self.last_seconds: float | None = None  # the last summary's model time (bench memory reads it)
        self.idle = asyncio.Event()
        self.idle.set()

    def request(self, job: Job) -> None:
        """Summarise what left this window, soon; a newer request for the same key replaces the older."""
        key = (job.channel_id, job.persona)
        if self._checked.get(key) == job.before_id and key not in self._jobs:
            return
        self._jobs[key] = job
        self.idle.clear()
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="memory summaries")

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
                done = await self._summarise(job)
            except BotError as exc:
                _log.warning("memory: could not summarise %s in %s: %s", job.persona, job.channel_id, exc)
                done = True
            if done:
                self._checked[key] = job.before_id
            else:
                self._jobs.setdefault(key, job)
                await asyncio.sleep(RETRY_SECONDS)

    async def _summarise(self, job: Job) -> bool:
        """Fold the lines before the window into the summary, one prompt-sized chunk at a time (each
        kept as it is done). False when it gave way to a reply and must run again."""
        while True:
            base = await self.store.summary(job.channel_id, job.persona)
            if base is not None and base.edited:
                return True  # an admin's summary is kept as written
            after = base.through_id if base is not None else 0
            lines = await self.store.lines_between(
                job.channel_id, list(job.personas), after, job.before_id, SOURCE_LINES
            )
            if not lines:
                return True
            chunk = await asyncio.to_thread(self._chunk, lines, base)
            text = await self._ask(job, chunk, base)
            if text is None:
                return False
            if not await self.store.put_summary(job.channel_id, job.persona, text, chunk, base):
                _log.info("memory: a summary of %s was overtaken by an edit or erasure", job.channel_id)
                continue  # read again: what changed is summarised afresh, or not at all

    def _chunk(self, lines: list[StoredMessage], base: Summary | None) -> list[StoredMessage]:
        room = int(self._llm().n_ctx * PROMPT_ROOM) - self.config.summary_tokens
        room -= self._count(base.text) if base is not None else 0
        chunk: list[StoredMessage] = []
        for line in lines:
            room -= self._count(line.content) + 4
            if room < 0 and chunk:
                break
            chunk.append(line)
        return chunk

    async def _ask(self, job: Job, chunk: list[StoredMessage], base: Summary | None) -> str | None:
        """The model's new summary; None when a reply started waiting for the model meanwhile."""
        llm = self._llm()
        shown = "\n".join(f"{m.author_name}: {' '.join(m.content.split())}" for m in chunk)
        old = base.text if base is not None else "(nothing yet)"
        words = self.config.summary_tokens * 3 // 5
        messages: list[Message] = [
            {"role": "system", "content": SYSTEM},
            {
                "role": "user",
                "content": f"Summary so far, as {job.persona_name} knows it:\n{old}\n\n"
                f"New lines:\n{shown}\n\nWrite the updated summary in at most {words} words.",
            },
        ]
        started = time.perf_counter()
        text = await ask_between_replies(llm, messages, self.config.summary_tokens, SESSION)
        if text is None:
            return None
        self.last_seconds = time.perf_counter() - started
        return " ".join(text.split()) or None

    async def close(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker


async def ask_between_replies(
    llm: LLMBackend, messages: list[Message], max_tokens: int, session: str
) -> str | None:
    """The model's answer to background work (a summary, a member's notes), written only while no reply
    waits: None, to be asked again later, the moment one does."""
    if llm.pending > 0:
        return None  # a reply is being written: try again in a while
    prompt = await asyncio.to_thread(llm.render, messages)
    generation = llm.generate(prompt, max_tokens=max_tokens, session=session, give_way=True)
    parts: list[str] = []
    chunks = generation.chunks()
    try:
        async for part in chunks:
            parts.append(part)
            if llm.pending > 1:  # a reply is waiting behind this one: give way at once
                return None
    except GaveWay:  # a reply came while the prompt was read; what was read is kept for the next try
        return None
    finally:
        with contextlib.suppress(Exception):
            await chunks.aclose()  # type: ignore[attr-defined]
    return "".join(parts).strip() or None
