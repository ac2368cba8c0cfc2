"""Erasing: /reset (a server channel's history, for admins; a direct-message conversation, for its member)
and /forget-me (everything a member wrote in this server and in their direct messages with the bot)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.cogs.admin import require_manager_in_servers
from bot.discord.confirm import Confirm

if TYPE_CHECKING:
    from bot.discord.client import RoleplayBot


class Privacy(commands.Cog):
    def __init__(self, bot: RoleplayBot) -> None:
        self.bot = bot
        self.engine = bot.engine

    @app_commands.command(name="reset", description="Erase this conversation's chat history (asks first)")
    @app_commands.default_permissions(manage_guild=True)  # in servers; Discord applies none in DMs
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    @app_commands.check(require_manager_in_servers)
    async def reset(self, interaction: discord.Interaction) -> None:
        channel_id = interaction.channel_id or 0
        # A direct message: only its own member's (the bot's DMs are one member each).
        if interaction.guild is None and channel_id not in await self.engine.admin.direct_channels(
            interaction.user.id
        ):
            await interaction.response.send_message(
                "Nothing is stored for this conversation.", ephemeral=True
            )
            return
        count = await self.engine.admin.message_count(channel_id)
        who = "admin" if interaction.guild is not None else "member"
        view = Confirm(interaction.user.id, "reset", who, "Erase history", "Keep it")
        place = "this channel" if interaction.guild is not None else "our direct messages"
        await interaction.response.send_message(
            f"Erase all {count} stored messages of {place}? The persona forgets this conversation.",
            view=view,
            ephemeral=True,
        )
        await view.wait()
        if view.confirmed:
            removed = await self.engine.admin.reset(channel_id)
            await interaction.edit_original_response(content=f"Erased {removed} messages.", view=None)
        else:
            await interaction.edit_original_response(content="History kept.", view=None)

    @app_commands.command(
        name="forget-me",
        description="Erase everything you wrote that the bot stored here and in your DMs with it",
    )
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    async def forget_me(self, interaction: discord.Interaction) -> None:
        admin, member = self.engine.admin, interaction.user.id
        guild = interaction.guild
        channels: list[int] = []
        if guild is not None:
            channels = sorted(
                {c.id for c in guild.channels} | {t.id for t in guild.threads} | {interaction.channel_id or 0}
            )
        direct = await admin.direct_channels(member)
        count = await admin.stored_by(member, channels) if channels else 0
        in_direct = sum([await admin.message_count(channel) for channel in direct])
        where = (
            "in this server or in your direct messages" if guild is not None else "in your direct messages"
        )
        if count + in_direct == 0:
            await interaction.response.send_message(f"The bot has nothing you wrote {where}.", ephemeral=True)
            return
        view = Confirm(member, "forget-me", "member", "Erase my messages", "Keep them")
        parts = [f"the {count} messages of yours the bot stored in this server"] if count else []
        parts += [f"our direct messages ({in_direct} messages, the persona's too)"] if in_direct else []
        await interaction.response.send_message(
            f"Erase {' and '.join(parts)}? Its characters will not remember them.", view=view, ephemeral=True
        )
        await view.wait()
        if view.confirmed:
            removed = await admin.forget_member(member, channels) if channels else 0
            done = f"Erased {removed} of your messages" if channels else "Erased"
            if in_direct:
                done += (
                    f"{' and' if channels else ''} our direct messages ({await admin.forget_direct(member)})"
                )
            await interaction.edit_original_response(content=f"{done}.", view=None)
        else:
            await interaction.edit_original_response(content="Nothing erased.", view=None)


async def setup(bot: RoleplayBot) -> None:
    await bot.add_cog(Privacy(bot))
