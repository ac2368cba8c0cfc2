"""Posting as a character: one webhook per channel, created by the bot and reused for every persona of
the cast (the persona's name as the webhook message's username, its face in an embed).

Found again after a restart by asking the channel for its webhooks (the bot keeps no webhook tokens on
disk), recreated when an admin deleted it, and given up, for a plain post by the bot itself, where the
bot lacks the Manage Webhooks permission.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import discord

from bot.bounded import KeyedLocks, LRUDict

if TYPE_CHECKING:
    from bot.discord.client import RoleplayBot

_log = logging.getLogger(__name__)

WEBHOOK_NAME = "Roleplay cast"
MAX_WEBHOOK_CHANNELS = 10_000  # channels whose webhook is remembered (a forgotten one is fetched again)
USERNAME_LIMIT = 80  # Discord's limit on a webhook message's username
# Discord refuses webhook usernames containing these words (400); the reply then goes out as the bot.
FORBIDDEN_IN_USERNAMES = ("discord", "clyde")

WebhookChannel = discord.TextChannel | discord.Thread


def webhook_username(name: str) -> str | None:
    """The persona's name as a webhook username, or None where Discord would refuse it."""
    username = name.strip()[:USERNAME_LIMIT]
    if not username or any(word in username.lower() for word in FORBIDDEN_IN_USERNAMES):
        return None
    return username


class CastWebhooks:
    def __init__(self, bot: RoleplayBot) -> None:
        self.bot = bot
        self._hooks: LRUDict[int, discord.Webhook] = LRUDict(MAX_WEBHOOK_CHANNELS)
        self._own: LRUDict[int, int] = LRUDict(MAX_WEBHOOK_CHANNELS)  # webhook id -> channel id
        self._locks: KeyedLocks[int] = KeyedLocks()
        self._warned: LRUDict[int, bool] = LRUDict(MAX_WEBHOOK_CHANNELS)

    def is_own(self, webhook_id: int | None) -> bool:
        return webhook_id is not None and webhook_id in self._own

    @staticmethod
    def can_post(channel: object) -> bool:
        """Whether the bot may manage webhooks where `channel` is (a thread: its parent)."""
        if not isinstance(channel, WebhookChannel) or channel.guild is None:
            return False
        home = channel.parent if isinstance(channel, discord.Thread) else channel
        # A forum's threads would need their webhook on the forum: not supported, the bot posts itself.
        if not isinstance(home, discord.TextChannel):
            return False
        return home.permissions_for(channel.guild.me).manage_webhooks

    async def _webhook(self, channel: WebhookChannel, fresh: bool = False) -> discord.Webhook:
        home = channel.parent if isinstance(channel, discord.Thread) else channel
        assert isinstance(home, discord.TextChannel)
        async with self._locks.hold(home.id):  # two replies at once must not create two webhooks
            cached = self._hooks.get(home.id)
            if cached is not None and not fresh:
                return cached
            me = self.bot.user.id if self.bot.user else None
            found = [h for h in await home.webhooks() if h.user is not None and h.user.id == me and h.token]
            hook = found[0] if found else await home.create_webhook(name=WEBHOOK_NAME, reason="roleplay cast")
            self._hooks[home.id] = hook
            self._own[hook.id] = home.id
            return hook

    async def send(
        self,
        channel: discord.abc.Messageable,
        username: str,
        content: str,
        *,
        files: Callable[[], list[discord.File]] = list,
        embeds: list[discord.Embed] | None = None,
        view: discord.ui.View | None = None,
        avatar_url: str | None = None,
    ) -> discord.WebhookMessage | None:
        """Post as `username`; None when the bot cannot (no permission, a name Discord refuses), so
        the caller posts as the bot instead. `files` makes fresh files for a second try."""
        if not self.can_post(channel):
            self._warn_once(channel)
            return None
        name = webhook_username(username)
        if name is None:
            return None
        assert isinstance(channel, WebhookChannel)
        thread = channel if isinstance(channel, discord.Thread) else discord.utils.MISSING
        for attempt in range(2):
            try:
                hook = await self._webhook(channel, fresh=attempt > 0)
                return await hook.send(
                    content,
                    username=name,
                    avatar_url=avatar_url or discord.utils.MISSING,
                    files=files(),
                    embeds=embeds or [],
                    thread=thread,
                    wait=True,
                    allowed_mentions=discord.AllowedMentions.none(),
                    view=view if view is not None else discord.utils.MISSING,
                )
            except discord.NotFound:
                # Deleted by an admin since it was made: make another, once.
                _log.info("the cast webhook of channel %s is gone; creating a new one", channel.id)
            except discord.Forbidden as exc:
                _log.warning("cannot use webhooks in channel %s (%s); posting as the bot", channel.id, exc)
                return None
        return None

    def _warn_once(self, channel: discord.abc.Messageable) -> None:
        channel_id = getattr(channel, "id", 0)
        if channel_id not in self._warned:
            self._warned[channel_id] = True
            _log.warning(
                "no Manage Webhooks permission in channel %s: the cast posts as the bot, names in the text",
                channel_id,
            )
