"""/memory show: what the bot remembers in this channel beyond its prompt window (each persona's summary,
the pinned facts, the lines the last reply recalled). The changes are admin commands under /manage memory
(admin.py, where the /manage group lives), worded here."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.memory import MemoryView
from bot.store import Pin

if TYPE_CHECKING:
    from bot.discord.client import RoleplayBot

DISCORD_LIMIT = 2000
SHOWN_LINE = 180  # characters of each recalled line shown


def describe_memory(view: MemoryView, names: dict[str, str]) -> str:
    """The channel's memory as one Discord message (cut to Discord's limit)."""
    parts = []
    for slug, summary in view.summaries.items():
        how = " (corrected by an admin)" if summary.edited else ""
        parts.append(f"**{names.get(slug, slug)}'s summary{how}:**\n{summary.text}")
    if not view.summaries:
        parts.append("**Summary:** none yet (one is written once older lines leave the prompt).")
    parts.append(describe_pins(view.pins))
    if view.recalled:
        lines = "\n".join(f"> {m.author_name}: {m.content[:SHOWN_LINE]}" for m in view.recalled)
        parts.append(f"**Recalled for the last reply:**\n{lines}")
    else:
        parts.append("**Recalled for the last reply:** nothing.")
    text = "\n\n".join(parts)
    return text if len(text) <= DISCORD_LIMIT else text[: DISCORD_LIMIT - 1] + "…"


def describe_pins(pins: list[Pin]) -> str:
    if not pins:
        return "**Pinned facts:** none (`/manage memory pin` adds one)."
    return "**Pinned facts:**\n" + "\n".join(f"{n}. {pin.text}" for n, pin in enumerate(pins, 1))


class Memory(commands.Cog):
    memory = app_commands.Group(name="memory", description="What the bot remembers in this channel")

    def __init__(self, bot: RoleplayBot) -> None:
        self.bot = bot
        self.engine = bot.engine

    @memory.command(name="show", description="The summary, pinned facts and recalled lines of this channel")
    async def show(self, interaction: discord.Interaction) -> None:
        channel_id = interaction.channel_id or 0
        view = await self.engine.admin.memory(channel_id)
        names = {p.slug: p.name for p in await self.engine.admin.cast(channel_id)}
        await interaction.response.send_message(describe_memory(view, names)[:DISCORD_LIMIT], ephemeral=True)

    @memory.command(name="me", description="What the bot noted about you in this server; correct or erase it")
    @app_commands.describe(
        correct="your notes as you want them kept, one fact per line or separated by ';'",
        forget="erase the notes",
    )
    @app_commands.guild_only()
    async def me(
        self, interaction: discord.Interaction, correct: str | None = None, forget: bool = False
    ) -> None:
        admin, server, member = self.engine.admin, interaction.guild_id or 0, interaction.user.id
        if forget or correct is not None:
            text = "" if forget else "\n".join(correct.split(";")) if correct else ""
            await admin.correct_member_notes(server, member, text)
        notes, kept = await admin.member_notes(server, member)
        if not kept:
            shown = "The bot keeps no notes on members in this server."
        elif notes is None or not notes.text:
            shown = "No notes on you here yet: they are written from what you tell about yourself."
        else:
            how = " (as you wrote them)" if notes.edited else ""
            shown = (
                f"**What the bot noted about you here{how}:**\n{notes.text}\n\n"
                "`/memory me correct:` rewrites them, `/memory me forget:True` erases them."
            )
        await interaction.response.send_message(shown[:DISCORD_LIMIT], ephemeral=True)


async def setup(bot: RoleplayBot) -> None:
    await bot.add_cog(Memory(bot))
