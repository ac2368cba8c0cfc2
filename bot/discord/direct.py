"""Who may roleplay with the bot in direct messages: the owner turned them on ([discord] direct_messages),
and the member shares a server with the bot whose admins did not turn them off (/manage dms)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import discord

from bot.bounded import LRUDict
from bot.errors import BotError

if TYPE_CHECKING:
    from bot.discord.client import RoleplayBot

SERVERS_KEPT_FOR = 300.0  # seconds a member's shared servers are trusted before asking Discord again
MAX_MEMBERS = 10_000
REFUSED = "Direct messages with me are turned off in the servers we share; let's talk in a server channel."
STRANGER = "I roleplay in direct messages only with members of a server I am in."


class DirectAccess:
    def __init__(self, bot: RoleplayBot) -> None:
        self.bot = bot
        self._servers: LRUDict[int, tuple[float, list[int]]] = LRUDict(MAX_MEMBERS)

    async def servers_of(self, user_id: int) -> list[int]:
        """The servers the bot is in that this user is a member of (the members intent is not asked for,
        so Discord is asked, and the answer kept a while)."""
        kept = self._servers.get(user_id)
        if kept is not None and time.monotonic() - kept[0] < SERVERS_KEPT_FOR:
            return kept[1]
        shared = []
        for guild in self.bot.guilds:
            if guild.get_member(user_id) is None:
                try:
                    await guild.fetch_member(user_id)
                except discord.HTTPException:  # not a member there (404), or Discord would not say
                    continue
            shared.append(guild.id)
        self._servers[user_id] = (time.monotonic(), shared)
        return shared

    async def admit(self, message: discord.Message) -> str | None:
        """Open a member's DM for roleplay: None when they may, else what to tell them."""
        admin = self.bot.engine.admin
        servers = await self.servers_of(message.author.id)
        if not servers:
            return STRANGER
        if not await admin.direct_messages_allowed(servers):
            return REFUSED
        try:
            await admin.open_direct(message.channel.id, message.author.id)
        except BotError as exc:  # the DM persona's file is missing or broken: the owner must fix it
            return f"I cannot play my direct-message persona: {exc}"
        return None
