"""One persona's reply to a history, with its emotion and face, nothing stored; and who speaks next in a
cast. Both read the channel's prompt, so both live beside the prompt window they keep stable."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from bot.core.cast import (
    SPEAKER_PRIME,
    last_speaker,
    next_in_order,
    speaker_options,
    speaker_question,
    turns_for,
)
from bot.core.copying import CopyGuard
from bot.core.models import Models
from bot.core.prompt import BuiltPrompt
from bot.core.scene import Scene, Window
from bot.core.speakers import LabelGate, strip_speaker_labels
from bot.emotion import EmotionResult
from bot.errors import BotError, GaveWay
from bot.expressions.service import ExpressionImage
from bot.llm import GenerationStats
from bot.memory import PromptMemory
from bot.personas import Persona
from bot.store import StoredMessage
from bot.workers import maybe_await

_log = logging.getLogger(__name__)

COPY_LOOKBACK = 40  # lines of the history a reply may not copy another persona's words from
MAX_STOP_NAMES = 8  # recent members whose "Name:" ends a reply (the model must not speak for them)
EMPTY_REPLY = "…"
# A sentence's or an action's end: . ! ? … then any closing quotes, brackets or the asterisk of *an action*.
SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]*]*(?=\s|$)|(?<=\w)\*(?=\s|$)")

TextCallback = Callable[[str], Awaitable[None] | None]


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
    answers: int | None = None  # the front-end's id of the member's message (Discord's), if any
    cast_size: int = 1  # personas in the channel: with several, each posts under its own name
    followed_by: list[TurnResult] = field(default_factory=list)  # the cast's further replies
    version: int = 0  # a regenerated reply: its version number, and how many there are
    versions: int = 1


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


def whole_sentences(text: str) -> str:
    """A reply the token limit cut, ended where its last sentence (or action) ends; unchanged with none."""
    ends = list(SENTENCE_END.finditer(text))
    return text[: ends[-1].end()] if ends else text


class SentenceGate:
    """Streams a reply up to its last sentence end and holds the rest until the next one, so that a reply
    the token limit cuts shows exactly what is stored (`whole_sentences`): nothing a person saw is lost."""

    def __init__(self) -> None:
        self._held = ""
        self._ended = False  # a sentence end was streamed: a cut reply ends there

    def feed(self, text: str) -> str:
        self._held += text
        ends = list(SENTENCE_END.finditer(self._held))
        if not ends:
            return ""
        self._ended = True
        shown, self._held = self._held[: ends[-1].end()], self._held[ends[-1].end() :]
        return shown

    def finish(self, cut: bool) -> str:
        """What is left to show: nothing after the last sentence end when the reply was cut."""
        rest, self._held = self._held, ""
        return "" if cut and self._ended else rest


def recent_speakers(history: list[StoredMessage]) -> list[str]:
    """The members who spoke lately, the latest first: at most MAX_STOP_NAMES different names, however
    many lines the latest of them wrote."""
    latest_first = (m.author_name for m in reversed(history) if m.role == "user")
    return list(dict.fromkeys(latest_first))[:MAX_STOP_NAMES]


def stop_strings(persona: Persona, others: list[str]) -> list[str]:
    """Where the model must stop: before it speaks as any of `others` (the members who spoke lately, the
    cast's other personas), or as itself again."""
    return sorted({f"\n{n}:" for n in others} | {"\nUser:", f"\n{persona.name}:"})


class Composer:
    """Writes replies and picks speakers for every channel, over the shared scene and models."""

    def __init__(self, scene: Scene, models: Models) -> None:
        self.scene = scene
        self.models = models

    def build(
        self,
        channel_id: int,
        persona: Persona,
        history: list[StoredMessage],
        user: str,
        memory: PromptMemory | None = None,
        stored_summary: str | None = None,
    ) -> BuiltPrompt:
        """The persona's prompt over this history. Its window starts where the last one did while that
        still fits (so the evaluated prefix is reused), and the new start is remembered. The window keeps
        the summary it was placed with; one that moves takes the stored summary (`stored_summary`)."""
        config = self.scene.config
        key = (channel_id, persona.slug)
        window = self.scene.windows.get(key)
        memory = memory or PromptMemory()
        current = window is not None and window.erasures == self.scene.erasures
        shown = window.summary if current and window is not None else (stored_summary or "")
        first_id = window.first_id if window is not None else 0
        start = next((i for i, m in enumerate(history) if m.id >= first_id), 0)
        turns = turns_for(persona, history)
        who = audience(history, user, config.prompt.audience_name)
        ids = [m.id for m in history]
        built = self.models.prompts.build(persona, turns, who, start, replace(memory, summary=shown), ids)
        moved = window is None or not history or history[built.window_start].id != window.first_id
        if moved and stored_summary is not None and shown != stored_summary:
            # The move re-reads the prompt anyway: show the newest summary with it, and place the window
            # again for that summary's size (placed for the old one, it would fill the budget more or
            # less than a move does, and the next move would come sooner).
            shown = stored_summary
            memory = replace(memory, summary=shown)
            built = self.models.prompts.build(persona, turns, who, start, memory, ids, refit=True)
        if history:
            self.scene.windows[key] = Window(history[built.window_start].id, shown, self.scene.erasures)
        return built

    async def prompt(
        self, channel_id: int, persona: Persona, cast: list[Persona], history: list[StoredMessage], user: str
    ) -> BuiltPrompt:
        """`build` with the channel's memory: pinned facts, the summary, the earlier lines that match the
        latest message. A window that moved asks for what left it to be summarised."""
        memory = self.models.memory
        slugs = [p.slug for p in cast]
        window = await self.scene.window(channel_id, persona.slug)
        # Lines older than the window; before the window is placed, any but the newest (the builder
        # leaves out those that land inside it).
        before = window.first_id if window is not None else (history[-1].id if history else 0)
        recalled, summary = await memory.for_prompt(channel_id, persona.slug, slugs, history, before)
        stored = summary.text if summary is not None else ""
        built = await asyncio.to_thread(self.build, channel_id, persona, history, user, recalled, stored)
        memory.recalled(channel_id, built.recalled)
        placed = self.scene.windows.get((channel_id, persona.slug))
        if history and placed is not None and (window is None or placed.first_id != window.first_id):
            memory.window_moved(channel_id, persona.slug, persona.name, slugs, placed.first_id)
            await self.scene.placed(channel_id, persona.slug, placed.first_id)
        return built

    async def compose(
        self,
        channel_id: int,
        persona: Persona,
        cast: list[Persona],
        history: list[StoredMessage],
        user: str,
        on_text: TextCallback | None,
        give_way: bool = False,
        cue: str = "",
    ) -> TurnResult:
        """One persona's reply to the history, with its emotion and face; nothing stored. `give_way`:
        unprompted, so it stops (GaveWay) the moment another request waits for the model. `cue`: a note
        after the history for this reply only (a quiet spell's), outside the kept window."""
        llm = self.models.llm
        if give_way and llm.pending > 0:
            raise GaveWay("the model is busy")
        built = await self.prompt(channel_id, persona, cast, history, user)
        if cue:
            messages = [*built.messages, {"role": "user", "content": cue}]
            built = replace(built, text=await asyncio.to_thread(llm.render, messages), messages=messages)
        names = recent_speakers(history)
        others = [p.name for p in cast if p.slug != persona.slug]
        session = (channel_id, persona.slug)  # each persona's conversation keeps its own evaluated prefix
        stops = stop_strings(persona, [*names, *others])
        shift = self.scene.reading(channel_id, persona.slug)
        generation = llm.generate(built.text, stop=stops, session=session, shift=shift, give_way=give_way)
        speakers = [persona.name, *others, *names, "User"]
        gate = LabelGate(speakers)
        # In a cast, a persona never reproduces another's recent lines: the reply stops where a copy starts.
        guard = CopyGuard(
            m.content for m in history[-COPY_LOOKBACK:] if m.role == "assistant" and m.persona != persona.slug
        )
        sentences = SentenceGate()
        parts: list[str] = []
        reply_started = time.perf_counter()
        chunks = generation.chunks()
        copied: int | None = None
        async for chunk in chunks:
            if give_way and llm.pending > 1:  # a reply waits behind this line: it goes first
                await chunks.aclose()  # type: ignore[attr-defined]
                raise GaveWay("a reply to a member needs the model")
            parts.append(chunk)
            if (copied := guard.check("".join(parts))) is not None:
                parts = ["".join(parts)[:copied]]
                _log.info("%s began to copy another persona's line; the reply stops there", persona.name)
                await chunks.aclose()  # type: ignore[attr-defined]  # the model stops writing
                break
            if on_text is not None and (visible := sentences.feed(gate.feed(chunk))):
                await maybe_await(on_text(visible))
        # Cut by the token limit (or by the copy guard): no half sentence is posted, or shown.
        cut = copied is not None or generation.stats.finish_reason == "length"
        if on_text is not None and copied is None:
            visible = sentences.feed(gate.flush()) + sentences.finish(cut)
            if visible:
                await maybe_await(on_text(visible))
        reply_seconds = time.perf_counter() - reply_started
        raw_reply = "".join(parts)
        if cut:
            raw_reply = whole_sentences(raw_reply)

        emotion_started = time.perf_counter()
        # The judge reads the reply exactly as generated: those tokens are already evaluated.
        emotion = await self.models.judge.judge(
            name=persona.name,
            labels=persona.labels,
            reply=raw_reply,
            messages=built.messages,
            previous=await self.scene.previous_emotion(channel_id, persona),
            speakers=names,
            session=session,
        )
        emotion_seconds = time.perf_counter() - emotion_started
        return TurnResult(
            text=clean_reply(raw_reply, speakers),
            emotion=emotion,
            image=await self.models.expressions.image_for(persona, emotion.label),
            persona=persona,
            user_message_id=0,
            reply_message_id=None,
            stats=generation.stats,
            emotion_seconds=emotion_seconds,
            reply_seconds=reply_seconds,
            cast_size=len(cast),
        )

    async def choose_speaker(
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
        if self.scene.config.cast.next_speaker == "order":
            return fallback if stop is None else None
        names = [p.name for p in candidates] + ([stop] if stop and stop not in {p.name for p in cast} else [])
        if len(names) == 1:
            return candidates[0]
        viewer = next((p for p in cast if p.slug == spoke_last), cast[0])
        try:
            built = await self.prompt(channel_id, viewer, cast, history, user)
            prompt = await asyncio.to_thread(
                self.models.llm.render, [*built.messages, speaker_question(names)]
            )
            options = speaker_options(names)
            scores = await self.models.llm.classify(
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
