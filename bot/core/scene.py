"""A channel's scene as every part of the core sees it: its lead persona and cast, the face each persona
shows now, the lock its turns take, where each persona's prompt window starts, and the reply it is
delivering at this moment. The turn, the reply controls and the administration share one Scene."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bot.bounded import KeyedLocks, LRUDict
from bot.config import Config
from bot.errors import BotError
from bot.personas import Persona, PersonaLibrary
from bot.store import ChannelState, Store, StoredMessage

_log = logging.getLogger(__name__)

HISTORY_FETCH = 400  # fewest messages read for a window not yet placed; the prompt takes what fits
MAX_WINDOWS = 4096  # (channel, persona) prompt-window starts remembered; a forgotten one is rebuilt once


@dataclass(frozen=True)
class Window:
    """Where a (channel, persona)'s prompt window starts, and the summary it shows: both stay until the
    window moves, so the prompt's start stays byte-identical and a warm turn reads only new tokens."""

    first_id: int  # the first stored message in the window
    summary: str
    erasures: int  # Scene.erasures when placed: an erasure since then refreshes the summary shown


class Scene:
    """Per-channel state shared by the turn, the reply controls and the administration."""

    def __init__(self, config: Config, store: Store, personas: PersonaLibrary) -> None:
        self.config = config
        self.store = store
        self.personas = personas
        self._locks: KeyedLocks[int] = KeyedLocks()
        # Each (channel, persona) prompt window's start and summary; keeps the prompt prefix stable.
        self.windows: LRUDict[tuple[int, str], Window] = LRUDict(MAX_WINDOWS)
        # Bumped by every erasure (delete, edit, /reset, /forget-me) and summary edit: a window placed
        # before it shows the stored summary again, never one that read an erased line.
        self.erasures = 0
        # Each (channel, persona) conversation's `erasures` when the model last read its prompt.
        self._read: LRUDict[tuple[int, str], int] = LRUDict(MAX_WINDOWS)
        # Channels delivering a reply now (one at a time per channel, under its lock): set once it is stored.
        self._delivering: dict[int, asyncio.Event] = {}

    def lock(self, channel_id: int) -> contextlib.AbstractAsyncContextManager[None]:
        """Turns (and resets, cast changes, regenerations) of one channel run one at a time."""
        return self._locks.hold(channel_id)

    async def lead(self, channel_id: int) -> Persona:
        """The channel's own persona: the one it was given, or the config's default."""
        state = await self.store.channel(channel_id)
        return self.personas.load(state.persona or self.config.persona.default)

    async def cast(self, channel_id: int) -> list[Persona]:
        """The personas of a channel, its lead first. A member whose file broke since it joined sits out,
        with a log line, instead of silencing the channel."""
        lead = await self.lead(channel_id)
        members = [lead]
        for member in await self.store.cast_members(channel_id):
            if member.persona == lead.slug:
                continue
            try:
                members.append(self.personas.load(member.persona))
            except BotError as exc:
                _log.warning("cast member %s of channel %s sits out: %s", member.persona, channel_id, exc)
        return members

    async def history(self, channel_id: int, cast: list[Persona]) -> list[StoredMessage]:
        """What a turn reads, oldest first: every message since the cast's earliest window start, so the
        window keeps its start however large the context (a fixed number of newest messages would move
        it every turn once they all fit); the newest ones when a window is not placed yet."""
        personas = [p.slug for p in cast]
        # Even one-token lines ("Sam: k") take a few tokens each: n_ctx lines always fill the context.
        limit = max(HISTORY_FETCH, self.config.model.n_ctx)
        starts = [await self.window(channel_id, slug) for slug in personas]
        if all(starts):
            first = min(w.first_id for w in starts if w is not None)
            return await self.store.history_since(channel_id, personas, first, limit)
        return await self.store.history(channel_id, personas, limit)

    async def previous_emotion(self, channel_id: int, persona: Persona) -> str | None:
        """The emotion `persona` shows in this channel now (None: none yet)."""
        if (state := await self._led_by(channel_id, persona)) is not None:
            return state.last_emotion
        members = {m.persona: m.last_emotion for m in await self.store.cast_members(channel_id)}
        return members.get(persona.slug)

    async def remember_emotion(self, channel_id: int, persona: Persona, label: str | None) -> None:
        if await self._led_by(channel_id, persona) is not None:
            await self.store.update_channel(channel_id, last_emotion=label)
        else:
            await self.store.set_cast_emotion(channel_id, persona.slug, label)

    async def _led_by(self, channel_id: int, persona: Persona) -> ChannelState | None:
        """The channel's state when `persona` is its lead (whose face lives there), else None (a member's
        face lives in its cast row)."""
        state = await self.store.channel(channel_id)
        return state if (state.persona or self.config.persona.default) == persona.slug else None

    def erased(self) -> None:
        """Something stored was erased or corrected: no window keeps showing a summary from before."""
        self.erasures += 1

    def reading(self, channel_id: int, persona: str) -> bool:
        """The model is about to read the persona's prompt in the channel: may it shift its kept context
        over what left the prompt? Only when nothing was erased since it last read it: kept cells were
        computed with everything before them in view, and an erased line must not stay in view."""
        key = (channel_id, persona)
        unerased = self._read.get(key) == self.erasures
        self._read[key] = self.erasures
        return unerased

    async def window(self, channel_id: int, persona: str) -> Window | None:
        """Where the persona's prompt window in the channel starts: as this process placed it, else as
        stored before a restart (then the first turn starts there instead of searching the history for
        a start that fits; it shows the stored summary, as `erasures` -1 never matches)."""
        key = (channel_id, persona)
        window = self.windows.get(key)
        if window is None and (first_id := await self.store.window_start(channel_id, persona)) is not None:
            window = self.windows[key] = Window(first_id, "", -1)
        return window

    async def placed(self, channel_id: int, persona: str, first_id: int) -> None:
        """A window was placed or moved: kept for after a restart."""
        await self.store.save_window(channel_id, persona, first_id)

    async def forget_windows(self, channel_id: int, persona: str | None = None) -> None:
        """Drop the prompt-window starts of a channel (or of one persona in it), kept ones too."""
        for key in [k for k in self.windows if k[0] == channel_id and persona in (None, k[1])]:
            del self.windows[key]
        await self.store.forget_windows(channel_id, persona)

    @contextlib.asynccontextmanager
    async def delivering(self, channel_id: int) -> AsyncIterator[None]:
        """Marks a reply of this channel as being delivered until the block ends (it is then stored, or
        failed): a button pressed on it meanwhile waits for it (see `delivered`)."""
        done = self._delivering[channel_id] = asyncio.Event()
        try:
            yield
        finally:
            done.set()
            if self._delivering.get(channel_id) is done:
                del self._delivering[channel_id]

    async def delivered(self, channel_id: int) -> bool:
        """Wait for the reply this channel is delivering, if any; False when there was none."""
        event = self._delivering.get(channel_id)
        if event is None:
            return False
        await event.wait()
        return True
