"""/cast add|remove|list: several personas in one channel. Discord hides the group from members without
Manage Server (its default permission); changes are checked again here, because a server admin can open
the command to everyone, and then members may list the cast but not change it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.cogs.admin import ADMIN_ONLY, manager_only
from bot.discord.webhooks import CastWebhooks
from bot.errors import BotError
from bot.personas import Persona

if TYPE_CHECKING:
    from bot.discord.client import RoleplayBot

_log = logging.getLogger(__name__)

CastChange = Callable[[int, str], Awaitable[list[Persona]]]  # (channel id, persona name) -> the new cast

NO_WEBHOOKS = (
    "I can't manage webhooks in this channel, so the cast posts as me with each name in bold. Give me the"
    " **Manage Webhooks** permission here to post as each character, with its own name and face."
)


class Cast(commands.Cog):
    cast = app_commands.Group(
        name="cast",
        description="Several personas in this channel (Manage Server)",
        default_permissions=ADMIN_ONLY,
        guild_only=True,
    )

    def __init__(self, bot: RoleplayBot) -> None:
        self.bot = bot
        self.engine = bot.engine

    async def cog_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        admin = self.bot.get_cog("Admin")
        if admin is not None:  # one place words the errors of every command
            await admin.cog_app_command_error(interaction, error)

    def _listing(self, names: list[str]) -> str:
        lead, *others = names
        return f"**{lead}** (lead)" + "".join(f", **{n}**" for n in others)

    async def _change(
        self, interaction: discord.Interaction, change: CastChange, name: str, *, adding: bool
    ) -> None:
        """Run a change to the channel's cast and answer with the cast it leaves (and, on an addition,
        whether the bot can post as the characters there)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        cast = await change(interaction.channel_id or 0, name)
        text = f"The cast here: {self._listing([p.name for p in cast])}."
        if adding and interaction.channel is not None and not CastWebhooks.can_post(interaction.channel):
            text += f"\n⚠️ {NO_WEBHOOKS}"
        await interaction.followup.send(text, ephemeral=True)

    @cast.command(name="add", description="Add a persona to this channel's cast")
    @app_commands.describe(name="persona id, see /persona list")
    @manager_only
    async def add(self, interaction: discord.Interaction, name: str) -> None:
        await self._change(interaction, self.engine.admin.cast_add, name, adding=True)

    @cast.command(name="remove", description="Take a persona out of this channel's cast")
    @app_commands.describe(name="persona id or name, see /cast list")
    @manager_only
    async def remove(self, interaction: discord.Interaction, name: str) -> None:
        await self._change(interaction, self.engine.admin.cast_remove, name, adding=False)

    @cast.command(name="list", description="Who plays in this channel")
    async def list(self, interaction: discord.Interaction) -> None:
        try:
            cast = await self.engine.admin.cast(interaction.channel_id or 0)
        except BotError as exc:
            await interaction.response.send_message(f"⚠️ {exc}", ephemeral=True)
            return
        settings = self.bot.config.cast
        how = "the model picks who answers" if settings.next_speaker == "choice" else "they take turns"
        await interaction.response.send_message(
            f"The cast here: {self._listing([p.name for p in cast])}. A persona named in a message, or"
            f" replied to, answers; otherwise {how}; at most {settings.max_turns} replies per message.",
            ephemeral=True,
        )


async def setup(bot: RoleplayBot) -> None:
    await bot.add_cog(Cast(bot))
