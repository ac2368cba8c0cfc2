"""A sent reply's controls: regenerate it, browse its versions, pick its face by hand; and the replies a
crash left posted but unfiled.

As in SillyTavern, only the conversation's latest reply can be regenerated or browsed; every version is
kept for browsing, and only the one shown is ever in a prompt.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.core.compose import Composer, TextCallback, TurnResult
from bot.core.scene import Scene
from bot.errors import BotError, InputError
from bot.personas import Persona
from bot.store import StoredMessage, UnsentReply

Deliver = Callable[[TurnResult], Awaitable[int | None]]


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


class ReplyVersions:
    """`engine.replies`: what a sent reply's buttons and menu do."""

    def __init__(self, scene: Scene, composer: Composer) -> None:
        self.scene = scene
        self.store = scene.store
        self.composer = composer

    # -- replies a crash left unfiled (the outbox; see Engine._deliver_and_save) ------------------------

    async def unsent(self) -> list[UnsentReply]:
        """Replies about to be posted when the bot last stopped, never filed in the history."""
        return await self.store.unsent_replies()

    async def was_posted(self, reply: UnsentReply, discord_id: int) -> None:
        """A reply from before a crash was found in its channel: it joins the history with that id."""
        if await self.store.file_reply(reply.id, discord_id) is None or not reply.emotion:
            return
        try:
            persona = self.scene.personas.load(reply.persona)
        except BotError:
            return  # its file is gone: the line is filed, the face it showed is not remembered
        await self.scene.remember_emotion(reply.channel_id, persona, reply.emotion)

    async def was_not_posted(self, reply: UnsentReply) -> None:
        await self.store.drop_unsent(reply.id)

    # -- a sent reply's controls --------------------------------------------------------------------------

    async def state(self, discord_id: int, channel_id: int | None = None) -> ReplyState | None:
        """What the controls of a sent reply need: its persona, who prompted it, its versions, whether
        it is the channel's latest message. None for a message that is not a stored reply. With
        `channel_id`, a reply that channel is delivering right now is waited for: a button can be pressed
        the moment the message appears, before the reply is stored."""
        stored = await self.store.message_by_discord_id(discord_id)
        if stored is None and channel_id is not None and await self.scene.delivered(channel_id):
            stored = await self.store.message_by_discord_id(discord_id)
        if stored is None or stored.role != "assistant":
            return None
        return await self._state_of(stored)

    async def regenerate(
        self, discord_id: int, *, on_text: TextCallback | None = None, deliver: Deliver | None = None
    ) -> TurnResult:
        """Write the latest reply again. The new version replaces it in the history once `deliver` (the
        front-end's edit) succeeded; the earlier versions are kept for browsing, never sent to the model."""
        channel_id = (await self._latest_reply(discord_id))[0].channel_id
        async with self.scene.lock(channel_id):
            stored, state, persona = await self._latest_reply(discord_id)  # again: a turn may have ended
            cast = await self.scene.cast(channel_id)
            if persona.slug not in {p.slug for p in cast}:
                cast = [*cast, persona]
            # The reply being replaced is never part of its own prompt.
            history = [m for m in await self.scene.history(channel_id, cast) if m.id < stored.id]
            prompt = await self.store.message(stored.prompt_id) if stored.prompt_id else None
            user = (
                prompt.author_name
                if prompt
                else next((m.author_name for m in reversed(history) if m.role == "user"), "User")
            )
            result = await self.composer.compose(channel_id, persona, cast, history, user, on_text)
            result.user_message_id = stored.prompt_id or 0
            result.version, result.versions = state.versions, state.versions + 1
            if deliver is not None:
                await deliver(result)
            result.version = await self.store.add_version(stored.id, result.text, result.emotion.label)
            result.reply_message_id = stored.id
            await self.scene.remember_emotion(channel_id, persona, result.emotion.label)
            return result

    async def browse(self, discord_id: int, step: int) -> ReplyState:
        """Show the previous (-1) or next (+1) version of the latest reply: it becomes the history's."""
        stored, state, persona = await self._latest_reply(discord_id)
        async with self.scene.lock(stored.channel_id):
            target = min(max(state.version + step, 0), state.versions - 1)
            shown = await self.store.show_version(stored.id, target)
            if shown is not None and shown.emotion:
                await self.scene.remember_emotion(stored.channel_id, persona, shown.emotion)
            return await self._state_of(await self._reread(stored))

    async def choose_face(self, discord_id: int, label: str) -> ReplyState:
        """A face picked by hand for a reply; on the latest reply it is also the persona's face now."""
        stored = await self._stored_reply(discord_id)
        state = await self._state_of(stored)
        if state.persona is None or label not in state.persona.labels:
            raise InputError(f"'{label}' is not one of this persona's emotions")
        await self.store.set_emotion(stored.id, label)
        if state.latest:
            await self.scene.remember_emotion(stored.channel_id, state.persona, label)
        return await self._state_of(await self._reread(stored))

    async def _reread(self, stored: StoredMessage) -> StoredMessage:
        again = await self.store.message(stored.id)
        if again is None:
            raise InputError("that reply was deleted meanwhile")
        return again

    async def _state_of(self, stored: StoredMessage) -> ReplyState:
        prompt = await self.store.message(stored.prompt_id) if stored.prompt_id else None
        versions = await self.store.versions(stored.id)
        try:
            persona: Persona | None = self.scene.personas.load(stored.persona)
        except BotError:
            persona = None
        cast = await self.scene.cast(stored.channel_id)
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
