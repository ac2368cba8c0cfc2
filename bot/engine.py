"""One turn end to end. This is the only module that knows the order of the steps:

save the user's message -> build the prompt -> stream the reply -> judge its emotion -> save the reply
-> pick the face to show. The Discord front-end and the terminal chat both drive this class.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from bot.bounded import KeyedLocks, LRUDict
from bot.config import Config
from bot.emotion import EmotionJudge, EmotionResult
from bot.errors import BotError
from bot.expressions.service import ExpressionImage
from bot.llm import GenerationStats, LLMBackend
from bot.persona import Persona, PersonaLibrary
from bot.prompt import PromptBuilder, Turn
from bot.speakers import LabelGate, strip_speaker_labels
from bot.store import Store, StoredMessage
from bot.workers import maybe_await

_log = logging.getLogger(__name__)

HISTORY_FETCH = 400  # messages read per turn; the prompt window takes what fits
MAX_STOP_NAMES = 8  # recent speakers whose "Name:" ends a reply (the model must not speak for them)
EMPTY_REPLY = "…"
MAX_WINDOWS = 4096  # (channel, persona) prompt-window starts remembered; a forgotten one is rebuilt once

TextCallback = Callable[[str], Awaitable[None] | None]
Progress = Callable[[int, int, str], Awaitable[None] | None] | None  # done, total, current label
Deliver = Callable[["TurnResult"], Awaitable[int | None]]


@dataclass(frozen=True)
class ChannelSettings:
    enabled: bool
    mode: str  # "all" or "mention"
    last_emotion: str | None


@dataclass(frozen=True)
class EngineStatus:
    model: str
    context: int
    pending_replies: int
    pending_renders: int
    persona: Persona
    judge: str
    cached_faces: int
    messages: int


class ExpressionProvider(Protocol):
    async def image_for(self, persona: Persona, label: str) -> ExpressionImage: ...


class PortraitOnly:
    """Expressions switched off: every emotion shows the plain portrait."""

    def __init__(self, personas: PersonaLibrary) -> None:
        self.personas = personas

    async def image_for(self, persona: Persona, label: str) -> ExpressionImage:
        return ExpressionImage(self.personas.existing_portrait(persona), label)


@dataclass
class TurnResult:
    text: str
    emotion: EmotionResult
    image: ExpressionImage
    persona: Persona
    user_message_id: int
    reply_message_id: int | None  # set once the reply is delivered and stored
    stats: GenerationStats
    emotion_seconds: float
    reply_seconds: float
    timings: dict[str, float] = field(default_factory=dict)


def audience(history: list[StoredMessage], speaker: str, group_name: str) -> str:
    """Who {{user}} is in the persona's permanent text (system prompt, greeting): the one person who
    talks in the channel, or, once several do, a stable name for all of them. Never simply whoever spoke
    last: that would change the prompt's start, and the whole history would be evaluated again, at every
    change of speaker. Each speaker's own name rides on their turns ("Name: text")."""
    speakers = {m.author_name for m in history if m.role == "user"} | {speaker}
    return speaker if len(speakers) == 1 else group_name


def clean_reply(text: str, speakers: list[str]) -> str:
    """The model's text as a chat message: no speaker labels at the start ("Mira:", "Sam:")."""
    return strip_speaker_labels(text.strip(), speakers).strip() or EMPTY_REPLY


class Engine:
    """Serves turns for every channel. Turns in one channel run in order; channels do not wait for each
    other except in the model's own queue."""

    def __init__(
        self,
        config: Config,
        store: Store,
        llm: LLMBackend,
        personas: PersonaLibrary,
        expressions: ExpressionProvider | None = None,
        judge: EmotionJudge | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.llm = llm
        self.personas = personas
        self.expressions = expressions or PortraitOnly(personas)
        self.prompts = PromptBuilder(llm, config.model.max_reply_tokens, config.prompt)
        self.judge = judge or EmotionJudge(config.emotion, llm)
        self._locks: KeyedLocks[int] = KeyedLocks()
        # First stored message id of each channel's prompt window; keeps the prompt prefix stable.
        self._window_ids: LRUDict[tuple[int, str], int] = LRUDict(MAX_WINDOWS)

    def channel_lock(self, channel_id: int) -> contextlib.AbstractAsyncContextManager[None]:
        """Turns (and resets) of one channel run one at a time."""
        return self._locks.hold(channel_id)

    async def persona_for(self, channel_id: int) -> Persona:
        state = await self.store.channel(channel_id)
        return self.personas.load(state.persona or self.config.persona.default)

    async def set_persona(self, channel_id: int, name: str) -> Persona:
        """Switch a channel's persona (validated first); its next reply uses the new one."""
        persona = self.personas.load(name)
        await self.store.update_channel(channel_id, persona=persona.slug, last_emotion=None)
        return persona

    async def current_face(self, channel_id: int) -> ExpressionImage:
        """The face the channel's persona shows now (its last emotion, or neutral)."""
        persona = await self.persona_for(channel_id)
        state = await self.store.channel(channel_id)
        label = state.last_emotion if state.last_emotion in persona.labels else "neutral"
        return await self.expressions.image_for(persona, label)

    async def reset(self, channel_id: int) -> int:
        async with self.channel_lock(channel_id):
            removed = await self.store.clear_channel(channel_id)
            await self.store.update_channel(channel_id, last_emotion=None)
            for key in [k for k in self._window_ids if k[0] == channel_id]:
                del self._window_ids[key]
            return removed

    # -- what the front-ends ask besides turns (they never reach into the store, personas or models) ----

    async def channel_settings(self, channel_id: int) -> ChannelSettings:
        """Whether the bot answers in a channel and how, with the config's defaults filled in."""
        state = await self.store.channel(channel_id)
        defaults = self.config.discord
        return ChannelSettings(
            enabled=state.enabled if state.enabled is not None else defaults.enable_new_channels,
            mode=state.mode or defaults.default_mode,
            last_emotion=state.last_emotion,
        )

    async def configure_channel(
        self, channel_id: int, *, enabled: bool | None = None, mode: str | None = None
    ) -> ChannelSettings:
        changes = {k: v for k, v in (("enabled", enabled), ("mode", mode)) if v is not None}
        if changes:
            await self.store.update_channel(channel_id, **changes)
        return await self.channel_settings(channel_id)

    def persona_names(self) -> list[str]:
        return self.personas.names()

    def persona_overview(self) -> list[tuple[str, str]]:
        """(id, display name) of every persona; a broken file shows why instead of its name."""
        rows = []
        for slug in self.personas.names():
            try:
                rows.append((slug, self.personas.load(slug).name))
            except BotError as exc:
                rows.append((slug, f"(unusable: {exc})"))
        return rows

    async def persona_named(self, channel_id: int, name: str | None = None) -> Persona:
        """The persona called `name`, or the channel's own when no name is given."""
        return self.personas.load(name) if name else await self.persona_for(channel_id)

    def portrait_of(self, persona: Persona) -> Path | None:
        """The persona's portrait file, if it exists."""
        return self.personas.existing_portrait(persona)

    async def import_card(self, raw: bytes, filename: str) -> Persona:
        return await asyncio.to_thread(self.personas.import_card, raw, filename)

    async def export_card(self, persona: Persona, spec: Literal["v2", "v3"]) -> bytes:
        return await asyncio.to_thread(self.personas.export_card, persona, spec)

    async def message_count(self, channel_id: int) -> int:
        return await self.store.count_messages(channel_id)

    async def recent_messages(self, channel_id: int, limit: int) -> list[StoredMessage]:
        """The last messages of the channel's current persona's conversation, oldest first."""
        persona = await self.persona_for(channel_id)
        return await self.store.history(channel_id, persona.slug, limit=limit)

    async def message_edited(self, discord_id: int, text: str) -> bool:
        """Apply an edit made on Discord to the stored message; False if it is not stored."""
        return await self.store.edit_message(discord_id, text)

    async def message_deleted(self, discord_id: int) -> bool:
        return await self.store.delete_message(discord_id)

    async def messages_deleted(self, discord_ids: set[int] | frozenset[int]) -> int:
        return await self.store.delete_messages(discord_ids)

    async def stored_by(self, author_id: int, channel_ids: list[int]) -> int:
        """How many stored messages a member wrote in these channels."""
        return await self.store.count_by_author(author_id, channel_ids)

    async def forget_member(self, author_id: int, channel_ids: list[int]) -> int:
        """Erase a member's messages in these channels: gone from the store and every future prompt."""
        return await self.store.forget_author(author_id, channel_ids)

    async def face(self, persona: Persona, label: str) -> ExpressionImage:
        return await self.expressions.image_for(persona, label)

    async def render_faces(
        self,
        persona: Persona,
        variants: int = 1,
        labels: list[str] | None = None,
        on_progress: Progress = None,
    ) -> list[tuple[str, Path]]:
        """Every face of a persona (sprites where present, renders otherwise), for a contact sheet."""
        from bot.expressions.service import ExpressionService

        if not isinstance(self.expressions, ExpressionService):
            raise BotError("no inpainting model is configured: set [expressions] model in config.toml")
        return await self.expressions.render_all(
            persona, labels or list(persona.labels), variants, on_progress
        )

    async def status(self, channel_id: int) -> EngineStatus:
        persona = await self.persona_for(channel_id)
        return EngineStatus(
            model=self.llm.name,
            context=self.llm.n_ctx,
            pending_replies=self.llm.pending,
            pending_renders=getattr(self.expressions, "pending", 0),
            persona=persona,
            judge=self.judge.describe(),
            cached_faces=await self.store.count_renders(),
            messages=await self.store.count_messages(channel_id),
        )

    async def check_default_persona(self) -> None:
        """Raise BotError if the default persona cannot be used (start-up check)."""
        persona = self.personas.load(self.config.persona.default)
        await asyncio.to_thread(self.prompts.check_persona, persona)

    async def check_message(self, channel_id: int, text: str) -> Persona:
        """Raise InputError for a message that can never be a turn, before anything is stored."""
        persona = await self.persona_for(channel_id)
        await asyncio.to_thread(self.prompts.check_message, persona, text)
        return persona

    async def turn(
        self,
        channel_id: int,
        author_name: str,
        text: str,
        *,
        author_id: int | None = None,
        discord_id: int | None = None,
        on_text: TextCallback | None = None,
        deliver: Deliver | None = None,
    ) -> TurnResult:
        """Run one turn. The user's message is committed before any model work; the reply once
        `deliver` (the front-end's send, returning the sent message's id) has succeeded."""
        async with self.channel_lock(channel_id):
            started = time.perf_counter()
            persona = await self.check_message(channel_id, text)
            user_row = await self.store.add_message(
                channel_id,
                role="user",
                author_name=author_name,
                content=text,
                persona=persona.slug,
                author_id=author_id,
                discord_id=discord_id,
            )
            history = await self.store.history(channel_id, persona.slug, HISTORY_FETCH)
            built = await asyncio.to_thread(self._build, channel_id, persona, history, author_name)

            names = [m.author_name for m in history if m.role == "user"][-MAX_STOP_NAMES:]
            stops = sorted({f"\n{n}:" for n in names} | {"\nUser:", f"\n{persona.name}:"})
            generation = self.llm.generate(built.text, stop=stops, session=channel_id)
            speakers = [persona.name, *names, "User"]
            gate = LabelGate(speakers)
            parts: list[str] = []
            reply_started = time.perf_counter()
            async for chunk in generation.chunks():
                parts.append(chunk)
                if on_text is not None and (visible := gate.feed(chunk)):
                    await maybe_await(on_text(visible))
            if on_text is not None and (visible := gate.flush()):
                await maybe_await(on_text(visible))
            reply_seconds = time.perf_counter() - reply_started
            raw_reply = "".join(parts)
            reply = clean_reply(raw_reply, speakers)

            emotion_started = time.perf_counter()
            state = await self.store.channel(channel_id)
            # The judge reads the reply exactly as generated: those tokens are already evaluated.
            emotion = await self.judge.judge(
                name=persona.name,
                labels=persona.labels,
                reply=raw_reply,
                messages=built.messages,
                previous=state.last_emotion,
                speakers=names,
                session=channel_id,
            )
            emotion_seconds = time.perf_counter() - emotion_started

            image = await self.expressions.image_for(persona, emotion.label)
            result = TurnResult(
                text=reply,
                emotion=emotion,
                image=image,
                persona=persona,
                user_message_id=user_row,
                reply_message_id=None,
                stats=generation.stats,
                emotion_seconds=emotion_seconds,
                reply_seconds=reply_seconds,
            )
            # The reply enters the history only once it was delivered (a failed send stores nothing).
            delivered_id = await deliver(result) if deliver is not None else None
            saving = asyncio.ensure_future(
                self._save_reply(channel_id, persona, reply, emotion, delivered_id)
            )
            try:
                result.reply_message_id = await asyncio.shield(saving)
            except asyncio.CancelledError:
                await saving  # the reply was sent: record it before giving in to the cancellation
                raise
            result.timings["total"] = time.perf_counter() - started
            return result

    async def _save_reply(
        self, channel_id: int, persona: Persona, reply: str, emotion: EmotionResult, discord_id: int | None
    ) -> int:
        row = await self.store.add_message(
            channel_id,
            role="assistant",
            author_name=persona.name,
            content=reply,
            persona=persona.slug,
            emotion=emotion.label,
            discord_id=discord_id,
        )
        await self.store.update_channel(channel_id, last_emotion=emotion.label)
        return row

    def _build(self, channel_id: int, persona: Persona, history: list[StoredMessage], user: str):  # noqa: ANN202
        turns = [Turn(m.role, m.author_name, m.content) for m in history]
        key = (channel_id, persona.slug)
        first_id = self._window_ids.get(key, 0)
        start = next((i for i, m in enumerate(history) if m.id >= first_id), 0)
        built = self.prompts.build(
            persona, turns, audience(history, user, self.config.prompt.audience_name), start
        )
        if history:
            self._window_ids[key] = history[built.window_start].id
        return built
