"""A persona that speaks up on its own, in channels whose admins turned it on (/channel autonomy): a line
after a quiet spell, now and then a line or a fitting reaction when members talk among themselves, and in
a cast its personas answering each other a few lines. bot/core/autonomy.py decides when; the engine writes
the line; this cog watches the channels and posts.

Members always go first: a member's message in the channel cancels a line being written, and a line
anywhere gives way the moment a reply needs the model (the engine's GaveWay)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.core import Autonomy, AutonomySettings, Overheard, TurnResult
from bot.discord.posting import Poster
from bot.discord.replies import Outgoing, controls
from bot.errors import BotError, GaveWay
from bot.workers import BackgroundTasks

if TYPE_CHECKING:
    from bot.discord.client import RoleplayBot

_log = logging.getLogger(__name__)

MAX_TICK = 5.0  # seconds between looks at the watched channels
IDLE_PATIENCE = 60.0  # seconds a line waits for the model to be free before it is let go
REACTIONS = {
    "joy": "😄",
    "amusement": "😂",
    "love": "❤️",
    "sadness": "😢",
    "anger": "😠",
    "fear": "😨",
    "surprise": "😮",
    "embarrassment": "😳",
    "confusion": "🤔",
}
NOTICING = "👀"  # neutral, and labels of a persona's own with no emoji above


class Presence(commands.Cog):
    def __init__(self, bot: RoleplayBot) -> None:
        self.bot = bot
        self.engine = bot.engine
        self.autonomy = Autonomy()
        self.tick = min(MAX_TICK, bot.config.autonomy.quiet_seconds / 4)
        self._speaking: dict[int, asyncio.Task[None]] = {}  # channel -> its unprompted line being written
        self._background = BackgroundTasks()
        self._watcher: asyncio.Task[None] | None = None
        # Looks at channels and rolls for chatter, counted so that tests can wait for them.
        self.looked = 0
        self.gave_way = 0
        self.changed = asyncio.Condition()

    async def cog_load(self) -> None:
        self._watcher = asyncio.create_task(self._watch())

    async def cog_unload(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for task in list(self._speaking.values()):
            task.cancel()
        await asyncio.gather(*self._speaking.values(), return_exceptions=True)
        await self._background.cancel_all()

    async def _looked(self) -> None:
        async with self.changed:
            self.looked += 1
            self.changed.notify_all()

    # -- what happens in channels -----------------------------------------------------------------------

    def heard(self, message: discord.Message, addressed: bool) -> None:
        """A member's message in a channel the bot answers in (told by the chat cog)."""
        channel_id = message.channel.id
        self.autonomy.member_spoke(channel_id)
        speaking = self._speaking.pop(channel_id, None)
        if speaking is not None:
            speaking.cancel()  # the member goes first: the line being written is dropped, nothing posted
        if not addressed:
            self._background.spawn(self._chatter(message))

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        # The bot's own posts (replies, its cast's webhooks) end a quiet spell; no other bot's post does.
        chat = self.bot.get_cog("Chat")
        own_hook = chat is not None and chat.webhooks.is_own(message.webhook_id)  # type: ignore[attr-defined]
        if own_hook or (self.bot.user is not None and message.author.id == self.bot.user.id):
            self.autonomy.persona_spoke(message.channel.id)

    async def _chatter(self, message: discord.Message) -> None:
        """Members talk among themselves: now and then a line, or a reaction that fits."""
        channel_id = message.channel.id
        try:
            settings = await self.engine.admin.autonomy(channel_id)
            act = self.autonomy.chime_in(channel_id, settings)
            if act == "react" and self._may_act(message.channel):
                persona = await self.engine.admin.persona_for(channel_id)
                label = await self.engine.admin.emotion_of(persona, message.content)
                self.autonomy.acted(channel_id)
                with contextlib.suppress(discord.HTTPException):
                    await message.add_reaction(REACTIONS.get(label, NOTICING))
            elif act == "line":
                chat = self.bot.get_cog("Chat")
                text = chat._text_of(message) if chat is not None else message.content  # type: ignore[attr-defined]
                author = message.author
                heard = Overheard(author.display_name, text, author.id, message.id)
                await self._start(channel_id, settings, quiet=False, overheard=heard)
        except BotError as exc:
            _log.warning("could not chime in, channel %s: %s", channel_id, exc)
        finally:
            await self._looked()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                # Only channels with autonomy on: members talk in many more, and each look reads settings.
                turned_on = set(await self.engine.admin.autonomous_channels())
                for channel_id in [c for c in self.autonomy.watched() if c in turned_on]:
                    settings = await self.engine.admin.autonomy(channel_id)
                    if self.autonomy.quiet_due(channel_id, settings):
                        await self._start(channel_id, settings, quiet=True)
            except BotError as exc:
                _log.info("could not look for quiet spells: %s", exc)
            await self._looked()

    # -- speaking up ------------------------------------------------------------------------------------

    def _may_act(self, channel: object) -> bool:
        """A server text channel or thread the bot may post in."""
        if not isinstance(channel, (discord.TextChannel, discord.Thread)):
            return False
        return channel.permissions_for(channel.guild.me).send_messages

    async def _start(
        self, channel_id: int, settings: AutonomySettings, quiet: bool, overheard: Overheard | None = None
    ) -> None:
        channel = self.bot.get_channel(channel_id)
        if channel_id in self._speaking or not self._may_act(channel):
            return
        if not (await self.engine.admin.channel_settings(channel_id)).enabled:
            return
        assert isinstance(channel, (discord.TextChannel, discord.Thread))
        task = asyncio.create_task(self._speak(channel, settings, quiet, overheard))
        self._speaking[channel_id] = task
        task.add_done_callback(lambda done: self._forget(channel_id, done))

    def _forget(self, channel_id: int, task: asyncio.Task[None]) -> None:
        if self._speaking.get(channel_id) is task:  # not a newer line started after this one was cancelled
            del self._speaking[channel_id]

    async def _idle(self, channel_id: int) -> bool:
        """Wait (a while at most) until no reply is pending here and the model has nothing to do."""
        chat = self.bot.get_cog("Chat")
        deadline = time.monotonic() + IDLE_PATIENCE
        while chat is None or chat.busy(channel_id) or not self.engine.admin.model_idle():  # type: ignore[attr-defined]
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(self.tick)
        return True

    async def _speak(
        self,
        channel: discord.TextChannel | discord.Thread,
        settings: AutonomySettings,
        quiet: bool,
        overheard: Overheard | None,
    ) -> None:
        async def deliver(result: TurnResult) -> int:
            self.autonomy.acted(channel.id, quiet_spell=quiet)
            return await self._post(channel, result)

        # Never while a reply is pending, and only on a model with nothing else to do.
        lines = min(settings.cast_turns, self.autonomy.room(channel.id, settings))
        if lines <= 0 or not await self._idle(channel.id):
            return
        try:
            async with channel.typing():
                await self.engine.speak_up(channel.id, deliver, lines=lines, overheard=overheard, quiet=quiet)
        except GaveWay:
            self.gave_way += 1
        except (BotError, discord.HTTPException) as exc:
            _log.warning("could not speak up in channel %s: %s", channel.id, exc)

    async def _post(self, channel: discord.TextChannel | discord.Thread, result: TurnResult) -> int:
        """An unprompted line, posted as replies are (the chat cog's poster), but answering no message."""
        poster: Poster = self.bot.get_cog("Chat").poster  # type: ignore[union-attr]
        view = controls(result.persona.labels, 0, 1, result.emotion.label)

        async def post(out: Outgoing, view: discord.ui.View) -> discord.Message:
            return await channel.send(out.content, files=out.files(), view=view)

        try:
            sent = await poster.line(channel, result, view, post)
        finally:
            view.stop()
        poster.face_follows(result, sent)
        return sent.id


async def setup(bot: RoleplayBot) -> None:
    await bot.add_cog(Presence(bot))
