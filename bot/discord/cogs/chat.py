"""Channel roleplay: answer messages in enabled channels, keep history in step with edits and deletions."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.bounded import LRUDict
from bot.core import TurnResult
from bot.discord.direct import DirectAccess
from bot.discord.posting import Poster
from bot.discord.replies import Outgoing, compose, controls, style_of
from bot.discord.webhooks import CastWebhooks
from bot.errors import BotError, BusyError, GenerationTimeout, InputError, StoreError
from bot.personas import Persona

if TYPE_CHECKING:
    from bot.discord.client import RoleplayBot

_log = logging.getLogger(__name__)

BUSY_NOTICE_EVERY = 10.0  # seconds between "busy" notices in one channel, so the notices are not spam
STREAM_EDIT_EVERY = 1.0  # Discord rate-limits edits; once a second reads as live typing
COOLDOWN_REACTION = "⏳"
BUSY_NOTICE = "I'm still answering earlier messages here; give me a moment."
SHUTDOWN_GRACE = 10.0  # seconds answers in progress get to finish when the bot stops
MAX_TRACKED_USERS = 10_000  # users whose last answered message time is kept (for the cooldown)
MAX_TRACKED_CHANNELS = 10_000  # channels whose last "busy" notice time is kept

PostPreview = Callable[[str], Awaitable[discord.Message]]


def _as_name(name: str, _: re.Match[str]) -> str:
    # A function, not a replacement string: a display name like \1 is text, not a group.
    return f"@{name}"


def story_text(content: str, bot_id: int | None, mentions: list[tuple[int, str]]) -> str:
    """A message as the story sees it: the bot's own mention removed, other mentions as @names. The
    same for new and edited messages."""
    text = content
    if bot_id is not None:
        text = re.sub(rf"<@!?{bot_id}>", "", text)
    for user_id, name in mentions:
        if user_id != bot_id:
            text = re.sub(rf"<@!?{user_id}>", functools.partial(_as_name, name), text)
    return text.strip()


class Chat(commands.Cog):
    def __init__(self, bot: RoleplayBot) -> None:
        self.bot = bot
        self.engine = bot.engine
        self.settings = bot.config.discord
        self._pending: dict[int, int] = {}  # only channels with answers in progress
        # Older entries than these limits are past their cooldown or notice interval anyway.
        self._last_reply_at: LRUDict[int, float] = LRUDict(MAX_TRACKED_USERS)
        self._busy_noticed: LRUDict[int, float] = LRUDict(MAX_TRACKED_CHANNELS)
        self._answering: dict[int, asyncio.Task[object]] = {}  # Discord message id -> its answer
        self._closing = False
        self.shutdown_grace = SHUTDOWN_GRACE
        self.webhooks = CastWebhooks(bot)
        self.poster = Poster(self.webhooks)  # also posts the persona's unprompted lines (cogs/presence.py)
        self.direct = DirectAccess(bot)

    # -- deciding whether to answer ---------------------------------------------------------------------

    def _from_a_member(self, message: discord.Message) -> bool:
        """A server member's message: never a bot's, and never the cast's own webhook posts (that would be
        a loop)."""
        if self.webhooks.is_own(message.webhook_id):
            return False
        place = message.guild is not None or isinstance(message.channel, discord.DMChannel)
        return not message.author.bot and place and self.bot.user is not None

    async def _addressed(self, message: discord.Message, mode: str, text: str, replied: str | None) -> bool:
        """Whether the bot answers, by the channel's mode: everything, or mentions and replies to it."""
        if mode == "all" or self.bot.user in message.mentions or replied is not None:
            return True
        # In a cast, naming a character speaks to it, as a mention of the bot would.
        return await self.engine.admin.named_member(message.channel.id, text) is not None

    async def _replied_persona(self, message: discord.Message) -> str | None:
        """The persona whose reply this message answers (a Discord reply to it), if any."""
        ref = message.reference
        if ref is None or ref.message_id is None:
            return None
        state = await self.engine.replies.state(ref.message_id, message.channel.id)
        if state is not None and state.persona is not None:
            return state.persona.slug
        resolved = ref.resolved
        if isinstance(resolved, discord.Message) and self.bot.user and resolved.author.id == self.bot.user.id:
            return (await self.engine.admin.persona_for(message.channel.id)).slug
        return None

    def _text_of(self, message: discord.Message) -> str:
        return story_text(
            message.content,
            self.bot.user.id if self.bot.user else None,
            [(user.id, user.display_name) for user in message.mentions],
        )

    # -- events -----------------------------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        task = asyncio.current_task()
        if self._closing or task is None:
            return
        # Registered before the first await, so shutdown and deletions can always reach this answer.
        self._answering[message.id] = task
        try:
            await self._handle(message)
        finally:
            self._answering.pop(message.id, None)

    async def _handle(self, message: discord.Message) -> None:
        if not self._from_a_member(message):
            return
        if message.guild is None and (refused := await self.direct.admit(message)) is not None:
            await self._rate_limited_notice(message, refused)
            return
        settings = await self.engine.admin.channel_settings(message.channel.id)
        if not settings.enabled:
            return
        text = self._text_of(message)
        replied = await self._replied_persona(message)
        addressed = bool(text) and await self._addressed(message, settings.mode, text, replied)
        presence = self.bot.get_cog("Presence")
        if presence is not None and message.guild is not None:
            presence.heard(message, addressed)  # type: ignore[attr-defined]
        if not addressed:
            return
        channel_id = message.channel.id
        now = time.monotonic()
        last = self._last_reply_at.get(message.author.id)
        if last is not None and now - last < self.settings.cooldown_seconds:
            await self._react(message, COOLDOWN_REACTION)
            return
        if self._pending.get(channel_id, 0) >= self.settings.max_pending_per_channel:
            await self._rate_limited_notice(message, BUSY_NOTICE)
            return
        self._last_reply_at[message.author.id] = now
        self._pending[channel_id] = self._pending.get(channel_id, 0) + 1
        try:
            await self._answer(message, text, replied)
        finally:
            self._pending[channel_id] -= 1
            if not self._pending[channel_id]:
                del self._pending[channel_id]

    def busy(self, channel_id: int) -> bool:
        """Whether a member's message waits for an answer here."""
        return channel_id in self._pending

    async def _answer(self, message: discord.Message, text: str, replied: str | None) -> None:
        channel = message.channel
        streams: list[StreamedReply] = []  # with stream_edits, one per reply of this turn, latest last
        delivered: set[StreamedReply] = set()
        cast_size = len(await self.engine.admin.cast(channel.id)) if self.settings.stream_edits else 1

        def start(persona: Persona) -> None:
            if self.settings.stream_edits:
                streams.append(StreamedReply(message, self._previewer(message, persona, cast_size)))

        def add(chunk: str) -> None:
            if streams:
                streams[-1].add(chunk)

        async def deliver(result: TurnResult) -> int:
            stream = streams[-1] if streams else None
            sent = await self._deliver(message, result, stream)
            if stream is not None:
                delivered.add(stream)
            return sent

        try:
            async with channel.typing():
                await self.engine.turn(
                    channel.id,
                    message.author.display_name,
                    text,
                    author_id=message.author.id,
                    discord_id=message.id,
                    server_id=message.guild.id if message.guild is not None else None,
                    on_text=add if self.settings.stream_edits else None,
                    deliver=deliver,
                    addressed=replied,
                    on_start=start,
                )
        except (InputError, BusyError, GenerationTimeout) as exc:
            await self._reply_notice(
                message,
                str(exc)
                if not isinstance(exc, BusyError)
                else "I'm still answering others; try again in a moment.",
            )
            return
        except StoreError as exc:
            # The database failed (disk full, locked, gone): the same for every message until fixed, so
            # the channel hears it at most once per notice interval, like "busy".
            _log.warning("turn failed in channel %s: %s", channel.id, exc)
            await self._rate_limited_notice(message, f"I could not save this conversation: {exc}")
        except BotError as exc:
            _log.warning("turn failed in channel %s: %s", channel.id, exc)
            await self._reply_notice(message, f"Something went wrong: {exc}")
        except discord.HTTPException as exc:
            # Discord refused the reply: the engine stored nothing for it, so history stays true.
            _log.warning("could not send the reply in channel %s: %s", channel.id, exc)
        finally:
            for stream in streams:
                if stream in delivered:
                    await stream.stop()
                else:
                    # Shielded: a deletion that cancels this answer must not also cancel the clean-up.
                    await asyncio.shield(stream.discard())

    def _previewer(self, message: discord.Message, persona: Persona, cast_size: int) -> PostPreview:
        """Where a reply's preview goes while it is written: under the persona's name in a cast."""

        async def post(text: str) -> discord.Message:
            if cast_size > 1:
                sent = await self.webhooks.send(
                    message.channel, persona.name, text, avatar_url=persona.avatar_url()
                )
                if sent is not None:
                    return sent
                text = f"**{persona.name}:** {text}"
            return await message.reply(text, mention_author=False)

        return post

    async def _deliver(
        self, message: discord.Message, result: TurnResult, streamed: StreamedReply | None
    ) -> int:
        """Post the reply (the engine stores it only after this returns), then follow up the face."""
        if streamed is not None:
            await streamed.stop()  # no preview edit may land after the final text
        sent = await self._post(message, result, streamed)
        self.poster.face_follows(result, sent)
        return sent.id

    async def _post(
        self, message: discord.Message, result: TurnResult, streamed: StreamedReply | None
    ) -> discord.Message:
        """Send the reply (split under Discord's limit), the face and the controls on its first part: as
        the persona through the channel's webhook when the channel has a cast, else as the bot. A
        streamed preview becomes the reply."""
        view = controls(result.persona.labels, 0, 1, result.emotion.label)
        try:
            preview = streamed.message if streamed is not None else None
            if preview is None:

                async def reply(out: Outgoing, view: discord.ui.View) -> discord.Message:
                    return await message.reply(
                        out.content, files=out.files(), view=view, mention_author=False
                    )

                return await self.poster.line(message.channel, result, view, reply)
            style = style_of(preview, result.cast_size)
            out = compose(result.persona.name, result.text, result.image.path, style)
            first = await preview.edit(
                content=out.content, attachments=out.files(), embeds=out.embeds, view=view
            )
            await self.poster.rest(message.channel, result.persona, out.rest, as_character=style == "webhook")
            return first
        finally:
            view.stop()  # the registered controls answer every press; no view is kept per message

    async def _react(self, message: discord.Message, emoji: str) -> None:
        # Without permission to react, staying quiet is the right fallback.
        with contextlib.suppress(discord.HTTPException):
            await message.add_reaction(emoji)

    async def _rate_limited_notice(self, message: discord.Message, text: str) -> None:
        """A notice at most once per BUSY_NOTICE_EVERY in a channel; a reaction in between."""
        now = time.monotonic()
        if now - self._busy_noticed.get(message.channel.id, -BUSY_NOTICE_EVERY) < BUSY_NOTICE_EVERY:
            await self._react(message, COOLDOWN_REACTION)
            return
        self._busy_noticed[message.channel.id] = now
        await self._reply_notice(message, text)

    async def _reply_notice(self, message: discord.Message, text: str) -> None:
        try:
            await message.reply(f"-# {text}", mention_author=False, delete_after=30)
        except discord.HTTPException as exc:
            _log.info("could not send a notice in %s: %s", message.channel.id, exc)

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        content = payload.data.get("content")
        author = payload.data.get("author") or {}
        if content is None or author.get("bot"):
            return
        mentioned = [
            (int(user["id"]), user.get("global_name") or user.get("username") or "someone")
            for user in payload.data.get("mentions", [])
            if isinstance(user, dict) and "id" in user
        ]
        text = story_text(content, self.bot.user.id if self.bot.user else None, mentioned)
        try:
            if await self.engine.admin.message_edited(payload.message_id, text):
                _log.debug("applied edit of message %s", payload.message_id)
        except BotError as exc:
            _log.warning("could not apply the edit of message %s: %s", payload.message_id, exc)

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        answering = self._answering.get(payload.message_id)
        if answering is not None and answering is not asyncio.current_task():
            # Deleted while the bot was still on it: stop, so neither it nor a reply to it stays.
            answering.cancel()
            await asyncio.gather(answering, return_exceptions=True)
        try:
            if await self.engine.admin.message_deleted(payload.message_id):
                _log.debug("forgot deleted message %s", payload.message_id)
        except BotError as exc:
            _log.warning("could not forget deleted message %s: %s", payload.message_id, exc)

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        """A moderator's purge: every one of those messages leaves the history (and answers stop)."""
        for message_id in payload.message_ids:
            answering = self._answering.get(message_id)
            if answering is not None and answering is not asyncio.current_task():
                answering.cancel()
                await asyncio.gather(answering, return_exceptions=True)
        try:
            removed = await self.engine.admin.messages_deleted(payload.message_ids)
        except BotError as exc:
            _log.warning("could not forget %d purged messages: %s", len(payload.message_ids), exc)
            return
        _log.debug("forgot %d of %d purged messages", removed, len(payload.message_ids))

    async def shutdown(self) -> None:
        """Stop taking messages, let answers in progress finish for a grace period, then cancel the
        rest. Users' messages are already stored; an unsent reply is dropped whole, never half-saved."""
        self._closing = True
        answering = [task for task in self._answering.values() if task is not asyncio.current_task()]
        if answering:
            _, late = await asyncio.wait(answering, timeout=self.shutdown_grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.poster.background.cancel_all()

    async def cog_unload(self) -> None:
        await self.shutdown()


class StreamedReply:
    """Shows the reply while it is written: one message (posted by `post`, a reply to the member's
    message unless given), edited at most once a second."""

    def __init__(self, message: discord.Message, post: PostPreview | None = None) -> None:
        self.source = message
        self._post = post
        self.message: discord.Message | None = None
        self._text = ""
        self._shown = ""
        self._task = asyncio.create_task(self._loop())

    def add(self, chunk: str) -> None:
        self._text += chunk

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(STREAM_EDIT_EVERY)
            preview = self._text.strip()[:1990]
            if not preview or preview == self._shown:
                continue
            if self.message is None:
                if self._post is not None:
                    self.message = await self._post(preview + " …")
                else:
                    self.message = await self.source.reply(preview + " …", mention_author=False)
            else:
                await self.message.edit(content=preview + " …")
            self._shown = preview

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, discord.HTTPException):
            await self._task

    async def discard(self) -> None:
        """The reply will not be delivered (cancelled, failed): take the half-written preview down."""
        await self.stop()
        if self.message is not None:
            with contextlib.suppress(discord.HTTPException):
                await self.message.delete()
            self.message = None


async def setup(bot: RoleplayBot) -> None:
    await bot.add_cog(Chat(bot))
