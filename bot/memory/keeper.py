"""A channel's memory as the turn and the admins see it: what goes into the next prompt, what the
summariser should fold in, and the commands that show and correct it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot.bounded import LRUDict
from bot.config import MemoryConfig
from bot.errors import InputError
from bot.llm import LLMBackend
from bot.memory.meaning import MeaningIndex
from bot.memory.members import MAX_NOTE_CHARS, NotesJob, NotesWriter, note_lines
from bot.memory.recall import (
    WORDS_WEIGHT,
    PromptMemory,
    RecalledLine,
    fuse,
    match_words,
    name_words,
    paired,
    recalled_line,
    without_names,
)
from bot.memory.summaries import Job, Summariser
from bot.store import MemberNotes, Pin, Store, StoredMessage, Summary

_log = logging.getLogger(__name__)

RECALL_CANDIDATES = 3  # lines looked up per recalled line kept: some fall inside the window or over budget
MAX_PIN_CHARS = 300
MAX_SUMMARY_CHARS = 4000
SHOWN_CHANNELS = 1024  # channels whose last recalled lines /memory show can tell
KNOWN_CHANNELS = 65536  # channels whose server is remembered in RAM (the store has them all)


@dataclass(frozen=True)
class MemoryView:
    """What /memory show tells: each persona's summary, the pins, the last lines recalled."""

    summaries: dict[str, Summary]
    pins: list[Pin]
    recalled: list[StoredMessage]


class Memory:
    def __init__(
        self, store: Store, llm: Callable[[], LLMBackend], config: MemoryConfig, count: Callable[[str], int]
    ) -> None:
        self.store = store
        self.config = config
        self.summariser = Summariser(store, llm, config, count)
        self.meaning = MeaningIndex(store, lambda: int(getattr(llm(), "pending", 0) or 0) > 0)
        self.notes = NotesWriter(store, llm)
        self._servers: LRUDict[int, int | None] = LRUDict(KNOWN_CHANNELS)  # channel -> its server
        # The ids of the lines each channel's last prompt recalled (re-read from the store when shown, so
        # an erased one is never shown again).
        self._recalled: LRUDict[int, tuple[int, ...]] = LRUDict(SHOWN_CHANNELS)

    async def for_prompt(
        self,
        channel_id: int,
        persona: str,
        personas: Sequence[str],
        history: Sequence[StoredMessage],
        before_id: int,
    ) -> tuple[PromptMemory, Summary | None]:
        """The pins, the stored summary (the caller decides whether the window shows it yet) and the
        stored lines older than `before_id` that best match the latest member's message, best first."""
        if not self.config.enabled:
            return PromptMemory(), None
        pins = [p.text for p in await self.store.pins(channel_id)]
        summary = await self.store.summary(channel_id, persona)
        asked = next((m.content for m in reversed(history) if m.role == "user"), "")
        lines = await self._recall(channel_id, personas, history, asked, before_id)
        member = await self._member_notes(channel_id, history)
        return PromptMemory(pins, summary.text if summary else "", lines, member), summary

    # -- members ---------------------------------------------------------------------------------------

    async def note_server(self, channel_id: int, server_id: int) -> None:
        """The channel is in this server (each front-end says so at every turn): members' notes are
        kept per server."""
        if self._servers.get(channel_id, -1) != server_id:
            await self.store.note_server(channel_id, server_id)
            self._servers[channel_id] = server_id

    async def server_of(self, channel_id: int) -> int | None:
        if channel_id not in self._servers:
            self._servers[channel_id] = next(iter(await self.store.servers_of([channel_id])), None)
        return self._servers[channel_id]

    async def members_on(self, server_id: int) -> bool:
        """Whether members' notes are kept and used in this server (its admins' choice, else the config)."""
        chosen = await self.store.member_memory_on(server_id)
        return self.config.enabled and self.config.members and (chosen is None or chosen)

    async def set_members(self, server_id: int, on: bool) -> None:
        await self.store.set_member_memory(server_id, on)

    async def _member_notes(self, channel_id: int, history: Sequence[StoredMessage]) -> str:
        """The notes on the member who spoke last, for the prompt."""
        speaker = next((m for m in reversed(history) if m.role == "user"), None)
        server = await self.server_of(channel_id)
        if (
            speaker is None
            or speaker.author_id is None
            or server is None
            or not await self.members_on(server)
        ):
            return ""
        notes = await self.store.member_notes(server, speaker.author_id)
        if notes is None or not notes.text.strip():
            return ""
        return f"What {speaker.author_name} has told you about themselves (your notes):\n{notes.text}"

    async def heard(self, channel_id: int, member_id: int, name: str) -> None:
        """A member's turn is over: fold what they said into their notes, in the background."""
        server = await self.server_of(channel_id)
        if server is not None and await self.members_on(server):
            self.notes.request(NotesJob(server, member_id, name))

    async def member_view(self, server_id: int, member_id: int) -> MemberNotes | None:
        return await self.store.member_notes(server_id, member_id)

    async def correct_member(self, server_id: int, member_id: int, text: str) -> MemberNotes | None:
        """The member's own notes, kept as written (bulleted, bounded); empty text erases them."""
        lines = note_lines(text)
        notes = "\n".join(f"- {line}" for line in lines)
        if len(notes) > MAX_NOTE_CHARS:
            raise InputError(f"the notes are {len(notes)} characters long; at most {MAX_NOTE_CHARS}")
        newest = await self.store.member_lines(server_id, member_id, 0, 1)
        await self.store.edit_member_notes(server_id, member_id, notes, newest[-1].id if newest else 0)
        if not notes:
            await self.store.checkpoint()  # erased notes leave the write-ahead log at once
        return await self.store.member_notes(server_id, member_id)

    async def forget_member(self, member_id: int, channel_ids: Sequence[int]) -> int:
        """/forget-me: the member's notes in the servers of these channels, and their waiting jobs."""
        self.notes.drop(member_id)
        servers = await self.store.servers_of(channel_ids)
        removed = await self.store.forget_member_notes(member_id, sorted(servers))
        await self.store.give_back_space()
        return removed

    def start(self) -> None:
        """Begin recall by meaning (the encoder loads, stored lines are embedded) in the background."""
        if self.config.enabled and self.config.meaning:
            self.meaning.start()

    async def _recall(
        self,
        channel_id: int,
        personas: Sequence[str],
        history: Sequence[StoredMessage],
        asked: str,
        before_id: int,
    ) -> list[RecalledLine]:
        """The earlier lines found by words (FTS5) and by meaning, merged by rank; each of the best few
        brings the lines just before and after it, ranked below it (the answer to a question is often the
        line after the one that matches it). The builder keeps the best that fit the recall budget."""
        names = name_words(m.author_name for m in history)
        wanted = self.config.recall_lines * RECALL_CANDIDATES
        words = self.store.recall(channel_id, personas, match_words(asked, names), before_id, wanted)
        if self.config.meaning:
            self.meaning.wake()  # the member's new line is stored: embed it soon
            meaning = self.meaning.search(
                channel_id, without_names(asked, names), personas, before_id, wanted
            )
            by_words, by_meaning = await asyncio.gather(words, meaning)
        else:
            by_words, by_meaning = await words, []
        found = {m.id: m for m in [*by_words, *by_meaning]}
        scores = fuse([([m.id for m in by_words], WORDS_WEIGHT), ([m.id for m in by_meaning], 1.0)])
        best = sorted(scores, key=scores.__getitem__, reverse=True)[: self.config.recall_lines]
        around = await self.store.neighbours(channel_id, personas, best, before_id)
        for row_id in best:
            earlier, later = around.get(row_id, (None, None))
            for near, score in paired(found[row_id], earlier, later, scores[row_id]):
                found.setdefault(near.id, near)
                scores[near.id] = max(scores.get(near.id, 0.0), score)
        ranked = sorted(scores, key=lambda row_id: (-scores[row_id], -row_id))
        return [recalled_line(found[row_id]) for row_id in ranked]

    def recalled(self, channel_id: int, lines: Sequence[RecalledLine]) -> None:
        """The lines the built prompt kept, for /memory show."""
        self._recalled[channel_id] = tuple(line.id for line in lines)

    def window_moved(
        self, channel_id: int, persona: str, name: str, personas: Sequence[str], first_id: int
    ) -> None:
        """The prompt window now starts at `first_id`: what is older may be summarised."""
        if self.config.enabled and self.config.summaries:
            self.summariser.request(Job(channel_id, persona, name, tuple(personas), first_id))

    # -- the admins' view ---------------------------------------------------------------------------------

    async def view(self, channel_id: int) -> MemoryView:
        recalled = []
        for row_id in self._recalled.get(channel_id, ()):
            if (message := await self.store.message(row_id)) is not None:
                recalled.append(message)
        summaries = await self.store.summaries_of(channel_id)
        return MemoryView(summaries, await self.store.pins(channel_id), recalled)

    async def edit_summary(self, channel_id: int, persona: str, text: str, through_id: int) -> None:
        if len(text) > MAX_SUMMARY_CHARS:
            raise InputError(f"the summary is {len(text)} characters long; at most {MAX_SUMMARY_CHARS}")
        await self.store.edit_summary(channel_id, persona, text, through_id)

    async def pin(self, channel_id: int, text: str) -> list[Pin]:
        text = " ".join(text.split())
        if not text:
            raise InputError("the fact to pin is empty")
        if len(text) > MAX_PIN_CHARS:
            raise InputError(f"the fact is {len(text)} characters long; at most {MAX_PIN_CHARS}")
        pins = await self.store.pins(channel_id)
        if len(pins) >= self.config.max_pins:
            raise InputError(
                f"the channel has {len(pins)} pinned facts, the most memory.max_pins allows; unpin one first"
            )
        await self.store.add_pin(channel_id, text)
        return await self.store.pins(channel_id)

    async def unpin(self, channel_id: int, number: int) -> list[Pin]:
        """Remove the `number`th pin (1-based, as /memory show lists them)."""
        pins = await self.store.pins(channel_id)
        if not 1 <= number <= len(pins):
            raise InputError(f"there is no pinned fact {number} (the channel has {len(pins)})")
        await self.store.remove_pin(channel_id, pins[number - 1].id)
        return await self.store.pins(channel_id)

    async def close(self) -> None:
        await self.summariser.close()
        await self.meaning.close()
        await self.notes.close()
