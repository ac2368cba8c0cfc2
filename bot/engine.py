"""One turn end to end. This is the only module that knows the order of the steps:

save the user's message -> choose who speaks (the channel's persona, or one of its cast) -> build that
persona's prompt -> stream the reply -> judge its emotion -> pick the face to show -> deliver -> save the
reply; then, in a cast, perhaps another persona's reply, up to [cast] max_turns. The Discord front-end and
the terminal chat both drive this class; it also regenerates a reply and browses its versions.
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
from bot.cast import (
    SPEAKER_PRIME,
    last_speaker,
    named_in,
    next_in_order,
    speaker_options,
    speaker_question,
    turns_for,
)
from bot.config import Config
from bot.emotion import EmotionJudge, EmotionResult
from bot.errors import BotError, InputError
from bot.expressions.service import ExpressionImage
from bot.llm import GenerationStats, LLMBackend
from bot.persona import Persona, PersonaLibrary
from bot.prompt import PromptBuilder
from bot.speakers import LabelGate, strip_speaker_labels
from bot.store import ChannelState, Store, StoredMessage
from bot.workers import maybe_await

_log = logging.getLogger(__name__)

HISTORY_FETCH = 400  # messages read per turn; the prompt window takes what fits
MAX_STOP_NAMES = 8  # recent speakers whose "Name:" ends a reply (the model must not speak for them)
EMPTY_REPLY = "…"
MAX_WINDOWS = 4096  # (channel, persona) prompt-window starts remembered; a forgotten one is rebuilt once

TextCallback = Callable[[str], Awaitable[None] | None]
Progress = Callable[[int, int, str], Awaitable[None] | None] | None  # done, total, current label
Deliver = Callable[["TurnResult"], Awaitable[int | None]]
SpeakerCallback = Callable[[Persona], Awaitable[None] | None]


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
    cast: list[str]  # the names of the channel's personas, its lead first


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
    cast_size: int = 1  # personas in the channel: with several, each posts under its own name
    followed_by: list[TurnResult] = field(default_factory=list)  # the cast's further replies
    version: int = 0  # a regenerated reply: its version number, and how many there are
    versions: int = 1


@dataclass(frozen=True)
class ReplyState:
    """A sent reply as its controls see it."""

    row_id: int
    channel_id: int
    persona: Persona | None  # None: the persona's file is gone
    text: str
    emotion: str | None
    prompted_by: int | None  # the member whose message it answers
    version: int
    versions: int
    latest: bool  # only the conversation's latest message can be regenerated or browsed
    cast_size: int


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
        # Channels delivering a reply now (one at a time per channel, under its lock): set once it is stored.
        self._delivering: dict[int, asyncio.Event] = {}

    def channel_lock(self, channel_id: int) -> contextlib.AbstractAsyncContextManager[None]:
        """Turns (and resets) of one channel run one at a time."""
        return self._locks.hold(channel_id)

    async def persona_for(self, channel_id: int) -> Persona:
        state = await self.store.channel(channel_id)
        return self.personas.load(state.persona or self.config.persona.default)

    async def set_persona(self, channel_id: int, name: str) -> Persona:
        """Switch a channel's persona (validated first); its next reply uses the new one. A cast gives way
        to the one persona: a new scene."""
        persona = self.personas.load(name)
        await self.store.update_channel(channel_id, persona=persona.slug, last_emotion=None)
        await self.store.clear_cast(channel_id)
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
        """The last messages of the channel's conversation (its persona's, or its cast's), oldest first."""
        cast = await self.cast(channel_id)
        return await self.store.history(channel_id, [p.slug for p in cast], limit=limit)

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
            cast=[p.name for p in await self.cast(channel_id)],
        )

    async def check_default_persona(self) -> None:
        """Raise BotError if the default persona cannot be used (start-up check)."""
        persona = self.personas.load(self.config.persona.default)
        await asyncio.to_thread(self.prompts.check_persona, persona)

    # -- the cast: several personas in one channel ----------------------------------------------------

    async def cast(self, channel_id: int) -> list[Persona]:
        """The personas of a channel, its lead (the channel's persona) first. A member whose file broke
        since it joined sits out, with a log line, instead of silencing the channel."""
        lead = await self.persona_for(channel_id)
        members = [lead]
        for member in await self.store.cast_members(channel_id):
            if member.persona == lead.slug:
                continue
            try:
                members.append(self.personas.load(member.persona))
            except BotError as exc:
                _log.warning("cast member %s of channel %s sits out: %s", member.persona, channel_id, exc)
        return members

    async def cast_add(self, channel_id: int, name: str) -> list[Persona]:
        """Add a persona to the channel's cast (validated first); returns the cast."""
        persona = self.personas.load(name)
        await asyncio.to_thread(self.prompts.check_persona, persona)
        async with self.channel_lock(channel_id):
            cast = await self.cast(channel_id)
            if persona.slug in {p.slug for p in cast}:
                raise InputError(f"{persona.name} is already in this channel's cast")
            limit = self.config.cast.max_members
            if len(cast) >= limit:
                raise InputError(f"the cast is full: {limit} personas (raise [cast] max_members)")
            await self.store.add_cast_member(channel_id, persona.slug)
            return await self.cast(channel_id)

    async def cast_remove(self, channel_id: int, name: str) -> list[Persona]:
        """Take a persona out of the cast; its lines leave the others' prompts. The lead's place goes to
        the next member, with the conversation. Returns the cast."""
        async with self.channel_lock(channel_id):
            cast = await self.cast(channel_id)
            wanted = name.strip().lower()
            target = next((p for p in cast if wanted in (p.slug, p.name.lower())), None)
            if target is None:
                members = ", ".join(p.name for p in cast)
                raise InputError(f"'{name}' is not in this channel's cast (it has: {members})")
            if len(cast) == 1:
                raise InputError("a channel keeps one persona at least: switch it with /manage persona")
            if target.slug == cast[0].slug:
                await self.store.hand_lead(channel_id, target.slug, cast[1].slug)
            else:
                await self.store.remove_cast_member(channel_id, target.slug)
            self._window_ids.pop((channel_id, target.slug), None)
            return await self.cast(channel_id)

    async def named_member(self, channel_id: int, text: str) -> Persona | None:
        """The member of the channel's cast (of two or more) that a message names, if any."""
        cast = await self.cast(channel_id)
        return named_in(text, cast) if len(cast) > 1 else None

    async def _history(self, channel_id: int, cast: list[Persona]) -> list[StoredMessage]:
        return await self.store.history(channel_id, [p.slug for p in cast], HISTORY_FETCH)

    async def _leads(self, channel_id: int, persona: Persona) -> ChannelState | None:
        """The channel's state when `persona` is its lead (whose face lives there), else None (a member's
        face lives in its cast row)."""
        state = await self.store.channel(channel_id)
        return state if (state.persona or self.config.persona.default) == persona.slug else None

    async def _previous_emotion(self, channel_id: int, persona: Persona) -> str | None:
        if (state := await self._leads(channel_id, persona)) is not None:
            return state.last_emotion
        members = {m.persona: m.last_emotion for m in await self.store.cast_members(channel_id)}
        return members.get(persona.slug)

    async def _remember_emotion(self, channel_id: int, persona: Persona, label: str | None) -> None:
        if await self._leads(channel_id, persona) is not None:
            await self.store.update_channel(channel_id, last_emotion=label)
        else:
            await self.store.set_cast_emotion(channel_id, persona.slug, label)

    async def _choose(
        self,
        channel_id: int,
        cast: list[Persona],
        history: list[StoredMessage],
        user: str,
        candidates: list[Persona],
        stop: str | None,
    ) -> Persona | None:
        """Who speaks next among `candidates`, asked of the model as the emotion judge asks: a question
        after the conversation, the answer primed, each name's probability read. `stop` (the member who
        spoke) is an answer too, and means nobody else. Falls back to turn order when the model cannot
        be asked."""
        spoke_last = last_speaker(history)
        fallback = next_in_order(cast, spoke_last)
        if fallback not in candidates:
            fallback = candidates[0]
        if self.config.cast.next_speaker == "order":
            return fallback if stop is None else None
        names = [p.name for p in candidates] + ([stop] if stop and stop not in {p.name for p in cast} else [])
        if len(names) == 1:
            return candidates[0]
        viewer = next((p for p in cast if p.slug == spoke_last), cast[0])
        try:
            built = await asyncio.to_thread(self._build, channel_id, viewer, history, user)
            prompt = await asyncio.to_thread(self.llm.render, [*built.messages, speaker_question(names)])
            options = speaker_options(names)
            scores = await self.llm.classify(
                prompt + SPEAKER_PRIME, list(options), session=(channel_id, viewer.slug)
            )
        except BotError as exc:
            _log.info("could not ask the model who speaks next (%s); taking turns", exc)
            return fallback if stop is None else None
        totals: dict[str, float] = {}
        for spelling, p in scores.items():
            totals[options[spelling]] = totals.get(options[spelling], 0.0) + p
        best = max(names, key=lambda n: totals.get(n, 0.0))
        return next((p for p in candidates if p.name == best), None)

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
        addressed: str | None = None,
        on_start: SpeakerCallback | None = None,
    ) -> TurnResult:
        """Run one turn: the member's message, then the cast's replies to it (one persona's reply when the
        channel has one; `followed_by` holds the rest). The message is committed before any model work;
        each reply once `deliver` (the front-end's send, returning the sent message's id) has succeeded.
        `addressed` is the persona the message answers (a reply to its message); otherwise one the text
        names speaks, or the model (or turn order) chooses. `on_start` hears who speaks, before each reply."""
        async with self.channel_lock(channel_id):
            started = time.perf_counter()
            cast = await self.cast(channel_id)
            lead = cast[0]
            # A message that can never be a turn is refused before anything is stored.
            await asyncio.to_thread(self.prompts.check_message, lead, text)
            user_row = await self.store.add_message(
                channel_id,
                role="user",
                author_name=author_name,
                content=text,
                persona=lead.slug,
                author_id=author_id,
                discord_id=discord_id,
            )
            history = await self._history(channel_id, cast)
            speaker: Persona | None = (
                next((p for p in cast if p.slug == addressed), None)
                or named_in(text, cast)
                or await self._choose(channel_id, cast, history, author_name, cast, None)
                or lead
            )
            results: list[TurnResult] = []
            while speaker is not None:
                if on_start is not None:
                    await maybe_await(on_start(speaker))
                result = await self._compose(channel_id, speaker, cast, history, author_name, on_text)
                result.user_message_id = user_row
                await self._deliver_and_save(channel_id, result, deliver)
                results.append(result)
                if len(results) >= self.config.cast.max_turns or len(cast) == 1:
                    break
                history = await self._history(channel_id, cast)
                others = [p for p in cast if p.slug != speaker.slug]
                speaker = named_in(result.text, others) or await self._choose(
                    channel_id, cast, history, author_name, others, author_name
                )
            first = results[0]
            first.followed_by = results[1:]
            first.timings["total"] = time.perf_counter() - started
            return first

    async def _compose(
        self,
        channel_id: int,
        persona: Persona,
        cast: list[Persona],
        history: list[StoredMessage],
        user: str,
        on_text: TextCallback | None,
    ) -> TurnResult:
        """One persona's reply to the history, with its emotion and face; nothing stored."""
        built = await asyncio.to_thread(self._build, channel_id, persona, history, user)
        names = [m.author_name for m in history if m.role == "user"][-MAX_STOP_NAMES:]
        others = [p.name for p in cast if p.slug != persona.slug]
        # The model must not speak for a member or for another persona of the cast.
        stops = sorted({f"\n{n}:" for n in [*names, *others]} | {"\nUser:", f"\n{persona.name}:"})
        session = (channel_id, persona.slug)  # each persona's conversation keeps its own evaluated prefix
        generation = self.llm.generate(built.text, stop=stops, session=session)
        speakers = [persona.name, *others, *names, "User"]
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

        emotion_started = time.perf_counter()
        # The judge reads the reply exactly as generated: those tokens are already evaluated.
        emotion = await self.judge.judge(
            name=persona.name,
            labels=persona.labels,
            reply=raw_reply,
            messages=built.messages,
            previous=await self._previous_emotion(channel_id, persona),
            speakers=names,
            session=session,
        )
        emotion_seconds = time.perf_counter() - emotion_started
        return TurnResult(
            text=clean_reply(raw_reply, speakers),
            emotion=emotion,
            image=await self.expressions.image_for(persona, emotion.label),
            persona=persona,
            user_message_id=0,
            reply_message_id=None,
            stats=generation.stats,
            emotion_seconds=emotion_seconds,
            reply_seconds=reply_seconds,
            cast_size=len(cast),
        )

    async def _deliver_and_save(self, channel_id: int, result: TurnResult, deliver: Deliver | None) -> None:
        # The reply enters the history only once it was delivered (a failed send stores nothing).
        done = self._delivering[channel_id] = asyncio.Event()
        try:
            delivered_id = await deliver(result) if deliver is not None else None
            saving = asyncio.ensure_future(self._save_reply(channel_id, result, delivered_id))
            try:
                result.reply_message_id = await asyncio.shield(saving)
            except asyncio.CancelledError:
                await saving  # the reply was sent: record it before giving in to the cancellation
                raise
        finally:
            done.set()
            if self._delivering.get(channel_id) is done:
                del self._delivering[channel_id]

    async def _save_reply(self, channel_id: int, result: TurnResult, discord_id: int | None) -> int:
        row = await self.store.add_message(
            channel_id,
            role="assistant",
            author_name=result.persona.name,
            content=result.text,
            persona=result.persona.slug,
            emotion=result.emotion.label,
            discord_id=discord_id,
            prompt_id=result.user_message_id or None,
        )
        await self._remember_emotion(channel_id, result.persona, result.emotion.label)
        return row

    # -- a reply's controls: regenerate, browse its versions, pick its face ---------------------------

    async def reply_state(self, discord_id: int, channel_id: int | None = None) -> ReplyState | None:
        """What the controls of a sent reply need: its persona, who prompted it, its versions, whether
        it is the channel's latest message. None for a message that is not a stored reply. With
        `channel_id`, a reply that channel is delivering right now is waited for: a button can be pressed
        the moment the message appears, before the reply is stored."""
        stored = await self.store.message_by_discord_id(discord_id)
        delivering = self._delivering.get(channel_id) if channel_id is not None else None
        if stored is None and delivering is not None:
            await delivering.wait()
            stored = await self.store.message_by_discord_id(discord_id)
        if stored is None or stored.role != "assistant":
            return None
        return await self._state_of(stored)

    async def _state_of(self, stored: StoredMessage) -> ReplyState:
        prompt = await self.store.message(stored.prompt_id) if stored.prompt_id else None
        versions = await self.store.versions(stored.id)
        try:
            persona: Persona | None = self.personas.load(stored.persona)
        except BotError:
            persona = None
        cast = await self.cast(stored.channel_id)
        slugs = {p.slug for p in cast} | {stored.persona}
        latest = await self.store.history(stored.channel_id, sorted(slugs), 1)
        return ReplyState(
            row_id=stored.id,
            channel_id=stored.channel_id,
            persona=persona,
            text=stored.content,
            emotion=stored.emotion,
            prompted_by=prompt.author_id if prompt else None,
            version=stored.version,
            versions=max(len(versions), 1),
            latest=bool(latest) and latest[-1].id == stored.id,
            cast_size=len(cast),
        )

    async def _stored_reply(self, discord_id: int) -> StoredMessage:
        stored = await self.store.message_by_discord_id(discord_id)
        if stored is None or stored.role != "assistant":
            raise InputError("that message is not a reply I remember")
        return stored

    async def _latest_reply(self, discord_id: int) -> tuple[StoredMessage, ReplyState, Persona]:
        stored = await self._stored_reply(discord_id)
        state = await self._state_of(stored)
        if state.persona is None:
            raise InputError(f"persona '{stored.persona}' no longer exists")
        if not state.latest:
            raise InputError("only the latest reply of the conversation can be changed")
        return stored, state, state.persona

    async def regenerate(
        self, discord_id: int, *, on_text: TextCallback | None = None, deliver: Deliver | None = None
    ) -> TurnResult:
        """Write the latest reply again. The new version replaces it in the history once `deliver` (the
        front-end's edit) succeeded; the earlier versions are kept for browsing, never sent to the model."""
        channel_id = (await self._latest_reply(discord_id))[0].channel_id
        async with self.channel_lock(channel_id):
            stored, state, persona = await self._latest_reply(discord_id)  # again: a turn may have ended
            cast = await self.cast(channel_id)
            if persona.slug not in {p.slug for p in cast}:
                cast = [*cast, persona]
            history = [m for m in await self._history(channel_id, cast) if m.id < stored.id]
            prompt = await self.store.message(stored.prompt_id) if stored.prompt_id else None
            user = (
                prompt.author_name
                if prompt
                else next((m.author_name for m in reversed(history) if m.role == "user"), "User")
            )
            result = await self._compose(channel_id, persona, cast, history, user, on_text)
            result.user_message_id = stored.prompt_id or 0
            result.version, result.versions = state.versions, state.versions + 1
            if deliver is not None:
                await deliver(result)
            result.version = await self.store.add_version(stored.id, result.text, result.emotion.label)
            result.reply_message_id = stored.id
            await self._remember_emotion(channel_id, persona, result.emotion.label)
            return result

    async def browse(self, discord_id: int, step: int) -> ReplyState:
        """Show the previous (-1) or next (+1) version of the latest reply: it becomes the history's."""
        stored, state, persona = await self._latest_reply(discord_id)
        async with self.channel_lock(stored.channel_id):
            target = min(max(state.version + step, 0), state.versions - 1)
            shown = await self.store.show_version(stored.id, target)
            if shown is not None and shown.emotion:
                await self._remember_emotion(stored.channel_id, persona, shown.emotion)
            again = await self.store.message(stored.id)
            assert again is not None
            return await self._state_of(again)

    async def choose_face(self, discord_id: int, label: str) -> ReplyState:
        """A face picked by hand for a reply; on the latest reply it is also the persona's face now."""
        stored = await self._stored_reply(discord_id)
        state = await self._state_of(stored)
        if state.persona is None or label not in state.persona.labels:
            raise InputError(f"'{label}' is not one of this persona's emotions")
        await self.store.set_emotion(stored.id, label)
        if state.latest:
            await self._remember_emotion(stored.channel_id, state.persona, label)
        again = await self.store.message(stored.id)
        assert again is not None
        return await self._state_of(again)

    def _build(self, channel_id: int, persona: Persona, history: list[StoredMessage], user: str):  # noqa: ANN202
        turns = turns_for(persona, history)
        key = (channel_id, persona.slug)
        first_id = self._window_ids.get(key, 0)
        start = next((i for i, m in enumerate(history) if m.id >= first_id), 0)
        built = self.prompts.build(
            persona, turns, audience(history, user, self.config.prompt.audience_name), start
        )
        if history:
            self._window_ids[key] = history[built.window_start].id
        return built
