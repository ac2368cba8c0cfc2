"""One turn end to end. This is the only module that knows the order of the steps:

save the user's message -> choose who speaks (the channel's persona, or one of its cast) -> build that
persona's prompt -> stream the reply -> judge its emotion -> pick the face to show -> deliver -> save the
reply; then, in a cast, perhaps another persona's reply, up to [cast] max_turns.

The Discord front-end and the terminal chat drive one Engine: `engine.turn(...)` for a message,
`engine.replies` for a sent reply's controls (regenerate, versions, face; core/replies.py) and
`engine.admin` for channel and persona settings and status (core/admin.py). They share the channel's
Scene (core/scene.py) and the Composer that writes one reply (core/compose.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.config import Config
from bot.core.admin import Admin
from bot.core.autonomy import QUIET_CUE
from bot.core.cast import named_in
from bot.core.compose import Composer, TextCallback, TurnResult
from bot.core.models import ExpressionProvider, Models, PortraitOnly
from bot.core.prompt import PromptBuilder
from bot.core.replies import Deliver, ReplyVersions
from bot.core.scene import Scene
from bot.emotion import EmotionJudge
from bot.llm import LLMBackend
from bot.memory import Memory
from bot.personas import Persona, PersonaLibrary
from bot.store import Store
from bot.workers import maybe_await

_log = logging.getLogger(__name__)

SpeakerCallback = Callable[[Persona], Awaitable[None] | None]


@dataclass(frozen=True)
class Overheard:
    """A member's message the persona was not asked to answer (members talking among themselves)."""

    author_name: str
    text: str
    author_id: int | None = None
    discord_id: int | None = None


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
        self.personas = personas
        self.prompts = PromptBuilder(llm, config.model.max_reply_tokens, config.prompt, config.memory)
        self.models = Models(
            llm,
            self.prompts,
            judge or EmotionJudge(config.emotion, llm),
            expressions or PortraitOnly(personas),
            Memory(store, lambda: self.models.llm, config.memory, self.prompts.count),
        )
        self.scene = Scene(config, store, personas)
        self.composer = Composer(self.scene, self.models)
        self.replies = ReplyVersions(self.scene, self.composer)
        self.admin = Admin(self.scene, self.models)

    # Shorthands for the shared models; a model or judge set here is the one every part uses.
    @property
    def llm(self) -> LLMBackend:
        return self.models.llm

    @llm.setter
    def llm(self, backend: LLMBackend) -> None:
        self.models.llm = backend

    @property
    def judge(self) -> EmotionJudge:
        return self.models.judge

    @judge.setter
    def judge(self, judge: EmotionJudge) -> None:
        self.models.judge = judge

    @property
    def expressions(self) -> ExpressionProvider:
        return self.models.expressions

    async def close(self) -> None:
        """Stop the background work (summaries); the store and models are closed by their owner."""
        await self.models.memory.close()

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
        store_first: bool = False,
        server_id: int | None = None,
    ) -> TurnResult:
        """Run one turn: the member's message, then the cast's replies to it (one persona's reply when the
        channel has one; `followed_by` holds the rest). The message is committed before any model work;
        each reply once `deliver` (the front-end's send, returning the sent message's id) has succeeded.
        `addressed` is the persona the message answers (a reply to its message); otherwise one the text
        names speaks, or the model (or turn order) chooses. `on_start` hears who speaks, before each reply.
        `store_first`: each reply is stored before `deliver` shows it, for a front-end whose showing cannot
        fail (the terminal): what a person saw is then in the history whatever happens next.
        `server_id`: the server the channel is in (members' notes are kept per server)."""
        scene, composer = self.scene, self.composer
        async with scene.lock(channel_id):
            started = time.perf_counter()
            cast = await scene.cast(channel_id)
            lead = cast[0]
            # A message that can never be a turn is refused before anything is stored.
            await asyncio.to_thread(self.prompts.check_message, lead, text)
            if server_id is not None:
                await self.models.memory.note_server(channel_id, server_id)
            user_row = await self.store.add_message(
                channel_id,
                role="user",
                author_name=author_name,
                content=text,
                persona=lead.slug,
                author_id=author_id,
                discord_id=discord_id,
            )
            history = await scene.history(channel_id, cast)
            speaker: Persona | None = (
                next((p for p in cast if p.slug == addressed), None)
                or named_in(text, cast)
                or await composer.choose_speaker(channel_id, cast, history, author_name, cast, None)
                or lead
            )
            results: list[TurnResult] = []
            while speaker is not None:
                if on_start is not None:
                    await maybe_await(on_start(speaker))
                result = await composer.compose(channel_id, speaker, cast, history, author_name, on_text)
                result.user_message_id, result.answers = user_row, discord_id
                await self._hand_over(channel_id, result, deliver, store_first)
                results.append(result)
                if len(results) >= self.config.cast.max_turns or len(cast) == 1:
                    break
                history = await scene.history(channel_id, cast)
                others = [p for p in cast if p.slug != speaker.slug]
                speaker = named_in(result.text, others) or await composer.choose_speaker(
                    channel_id, cast, history, author_name, others, author_name
                )
            first = results[0]
            first.followed_by = results[1:]
            first.timings["total"] = time.perf_counter() - started
        # After the replies, never before them: the member's notes are brought up to date in the background.
        if author_id is not None:
            await self.models.memory.heard(channel_id, author_id, author_name)
        return first

    async def speak_up(
        self,
        channel_id: int,
        deliver: Deliver,
        *,
        lines: int = 1,
        overheard: Overheard | None = None,
        on_start: SpeakerCallback | None = None,
        store_first: bool = False,
        quiet: bool = False,
    ) -> list[TurnResult]:
        """The channel's persona (or, in a cast, the one the model picks) adds a line on its own, and in a
        cast others may answer it, `lines` in all. `overheard`: a member's message not addressed to the
        persona, which it chimes in on (stored first, as the history's newest line). Each line is
        delivered and stored like a reply, answers no message, and gives way (GaveWay, nothing posted) to
        any member's reply that needs the model. `store_first` as in `turn`; `quiet`: after a quiet
        spell, which the first line's prompt says."""
        scene, composer = self.scene, self.composer
        async with scene.lock(channel_id):
            cast = await scene.cast(channel_id)
            if overheard is not None:
                await asyncio.to_thread(self.prompts.check_message, cast[0], overheard.text)
                await self.store.add_message(
                    channel_id,
                    role="user",
                    author_name=overheard.author_name,
                    content=overheard.text,
                    persona=cast[0].slug,
                    author_id=overheard.author_id,
                    discord_id=overheard.discord_id,
                )
            history = await scene.history(channel_id, cast)
            members = [m.author_name for m in history if m.role == "user"]
            if not members:
                return []  # nobody to speak to: no line out of nowhere
            member = members[-1]
            speaker: Persona | None = cast[0]
            if len(cast) > 1:
                speaker = await composer.choose_speaker(channel_id, cast, history, member, cast, None)
            results: list[TurnResult] = []
            while speaker is not None and len(results) < lines:
                if on_start is not None:
                    await maybe_await(on_start(speaker))
                cue = QUIET_CUE.format(name=speaker.name) if quiet and not results else ""
                result = await composer.compose(
                    channel_id, speaker, cast, history, member, None, give_way=True, cue=cue
                )
                await self._hand_over(channel_id, result, deliver, store_first)
                results.append(result)
                if len(cast) == 1:
                    break
                history = await scene.history(channel_id, cast)
                others = [p for p in cast if p.slug != speaker.slug]
                # Another persona answers (none may hand the word back to the member: they did not speak).
                speaker = named_in(result.text, others) or await composer.choose_speaker(
                    channel_id, cast, history, member, others, None
                )
            return results

    async def _hand_over(
        self, channel_id: int, result: TurnResult, deliver: Deliver | None, store_first: bool
    ) -> None:
        if store_first:
            await self._save_and_deliver(channel_id, result, deliver)
        else:
            await self._deliver_and_save(channel_id, result, deliver)

    async def _deliver_and_save(self, channel_id: int, result: TurnResult, deliver: Deliver | None) -> None:
        # The reply enters the history only once it was delivered (a failed send stores nothing). Until
        # then it waits in the outbox: a crash between the post and the save leaves it there, and the
        # front-end files it at its next start if the post went out (see Admin.unsent_replies).
        async with self.scene.delivering(channel_id):
            outbox = None
            if deliver is not None:
                outbox = await self.store.expect_reply(
                    channel_id,
                    persona=result.persona.slug,
                    author_name=result.persona.name,
                    content=result.text,
                    emotion=result.emotion.label,
                    prompt_id=result.user_message_id or None,
                    answers=result.answers,
                )
                try:
                    delivered_id = await deliver(result)
                except BaseException:
                    await asyncio.shield(self.store.drop_unsent(outbox))  # not posted: nothing to find
                    raise
            else:
                delivered_id = None
            saving = asyncio.ensure_future(self._save_reply(channel_id, result, delivered_id, outbox))
            try:
                result.reply_message_id = await asyncio.shield(saving)
            except asyncio.CancelledError:
                await saving  # the reply was sent: record it before giving in to the cancellation
                raise

    async def _save_and_deliver(self, channel_id: int, result: TurnResult, deliver: Deliver | None) -> None:
        async with self.scene.delivering(channel_id):
            saving = asyncio.ensure_future(self._save_reply(channel_id, result, None))
            try:
                result.reply_message_id = await asyncio.shield(saving)
            except asyncio.CancelledError:
                await saving  # its text was already streamed to the screen: keep it whole
                raise
            if deliver is not None:
                await deliver(result)

    async def _save_reply(
        self, channel_id: int, result: TurnResult, discord_id: int | None, outbox: int | None = None
    ) -> int:
        row = await self.store.file_reply(outbox, discord_id) if outbox is not None else None
        if row is None:  # no outbox row (the terminal), or a /reset took it meanwhile
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
        await self.scene.remember_emotion(channel_id, result.persona, result.emotion.label)
        return row
