"""What a reply looks like on Discord, and the controls under it: 🔄 regenerate, ◀ ▶ its versions, and a
menu to pick its face. Only the member whose message it answers, or a manager, may use them.

The controls are one persistent view with fixed custom ids: the engine finds the reply by the message
the button sits on, so buttons keep working after a restart and no per-message view is kept in memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord.ext import commands

from bot.config import DEFAULT_LABELS
from bot.core import ReplyState, TurnResult
from bot.discord.splitting import DISCORD_LIMIT, split_message
from bot.errors import BotError, BusyError
from bot.workers import BackgroundTasks

if TYPE_CHECKING:
    from bot.discord.client import RoleplayBot

_log = logging.getLogger(__name__)

REGENERATE_ID = "reply:regenerate"
PREVIOUS_ID = "reply:previous"
NEXT_ID = "reply:next"
FACE_ID = "reply:face"
MAX_OPTIONS = 25  # Discord's limit on a select menu's options
IMAGE_NAME = "expression.png"
NOT_YOURS = "Only the member this reply answers, or someone with Manage Server, can change it."

Style = Literal["plain", "named", "webhook"]  # as the bot, as the bot with the name, as the character


def expression_file(path: Path | None) -> discord.File | None:
    return (
        discord.File(path, filename=f"expression{path.suffix or '.png'}") if path and path.is_file() else None
    )


@dataclass
class Outgoing:
    """A reply's first message (text, face, embed) and the text that did not fit in it."""

    content: str
    image: Path | None
    embeds: list[discord.Embed]
    rest: list[str] = field(default_factory=list)

    def files(self) -> list[discord.File]:
        """The face as a fresh attachment (a discord.File is read once, so one per request)."""
        file = expression_file(self.image)
        return [file] if file else []


def compose(name: str, text: str, image: Path | None, style: Style) -> Outgoing:
    """The reply as Discord messages: as a character (the face in an embed under its name), as the bot
    naming the character (no webhook), or as the bot playing its one persona."""
    prefix = f"**{name}:** " if style == "named" else ""
    chunks = split_message(text, DISCORD_LIMIT - len(prefix)) or ["…"]
    image = image if image is not None and image.is_file() else None
    embeds = []
    if style == "webhook" and image is not None:
        embeds = [discord.Embed().set_image(url=f"attachment://expression{image.suffix or '.png'}")]
    return Outgoing(prefix + chunks[0], image, embeds, chunks[1:])


def style_of(message: discord.Message, cast_size: int) -> Style:
    if message.webhook_id is not None:
        return "webhook"
    return "named" if cast_size > 1 else "plain"


async def swap_in_render(
    result: TurnResult,
    message: discord.Message,
    edit: Callable[[Outgoing], Awaitable[object]],
    still_shown: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    """When a sent reply's face finishes rendering, show it (`edit` the message's face), unless
    `still_shown` says the reply moved on meanwhile."""
    assert result.image.fresh is not None
    try:
        path = await result.image.fresh
        if path is None or path == result.image.path or (still_shown is not None and not await still_shown()):
            return
        out = compose(result.persona.name, "…", path, style_of(message, result.cast_size))
        if out.image is not None:
            await edit(out)
    except (discord.HTTPException, asyncio.CancelledError) as exc:
        _log.info("could not update reply %s with the new face: %s", message.id, exc)


class ReplyControls(discord.ui.View):
    """The buttons and menu under a reply. One instance, registered at start-up, answers every press;
    the copies sent with replies only carry each reply's labels and which buttons are usable."""

    def __init__(
        self,
        owner: Replies | None = None,
        labels: Sequence[str] = DEFAULT_LABELS,
        version: int = 0,
        versions: int = 1,
        emotion: str | None = None,
    ) -> None:
        super().__init__(timeout=None)
        self.owner = owner
        counter = f"{version + 1}/{versions}" if versions > 1 else None
        buttons = [
            (PREVIOUS_ID, "◀", None, version <= 0, -1),
            (REGENERATE_ID, "🔄", counter, False, 0),
            (NEXT_ID, "▶", None, version >= versions - 1, +1),
        ]
        for custom_id, emoji, label, disabled, step in buttons:
            button: discord.ui.Button[ReplyControls] = discord.ui.Button(
                custom_id=custom_id, emoji=emoji, label=label, disabled=disabled and owner is None
            )
            button.callback = self._pressed(step)  # type: ignore[method-assign,assignment]
            self.add_item(button)
        menu: discord.ui.Select[ReplyControls] = discord.ui.Select(
            custom_id=FACE_ID,
            placeholder=f"Face: {emotion}" if emotion else "Face",
            options=[discord.SelectOption(label=label) for label in list(labels)[:MAX_OPTIONS]],
        )
        menu.callback = self._face_chosen  # type: ignore[method-assign]
        self.add_item(menu)
        self.menu = menu

    def _pressed(self, step: int) -> Callable[[discord.Interaction], Coroutine[Any, Any, None]]:
        async def callback(interaction: discord.Interaction) -> None:
            if self.owner is not None:
                await self.owner.pressed(interaction, step)

        return callback

    async def _face_chosen(self, interaction: discord.Interaction) -> None:
        if self.owner is not None and self.menu.values:
            await self.owner.face_chosen(interaction, self.menu.values[0])


def controls(labels: Sequence[str], version: int, versions: int, emotion: str | None) -> ReplyControls:
    return ReplyControls(None, labels, version, versions, emotion)


class Replies(commands.Cog):
    def __init__(self, bot: RoleplayBot) -> None:
        self.bot = bot
        self.engine = bot.engine
        self._background = BackgroundTasks()  # faces still rendering for regenerated replies

    async def cog_load(self) -> None:
        self.bot.add_view(ReplyControls(self))

    async def cog_unload(self) -> None:
        await self._background.cancel_all()

    async def _allowed(self, interaction: discord.Interaction) -> ReplyState | None:
        """The reply's state if this member may change it; otherwise they are told why, once."""
        message = interaction.message
        if message is None:
            return None
        state = await self.engine.replies.state(message.id)
        if state is None:
            # Pressed the moment it appeared: it may be on its way into the history. Acknowledge first
            # (Discord waits 3 s at most), then wait for it.
            await interaction.response.defer()
            state = await self.engine.replies.state(message.id, interaction.channel_id)
        if state is None:
            await self._say(interaction, "I no longer remember this reply.")
        elif interaction.user.id != state.prompted_by and not interaction.permissions.manage_guild:
            await self._say(interaction, NOT_YOURS)
            state = None
        return state

    @staticmethod
    async def _say(interaction: discord.Interaction, text: str) -> None:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)

    @staticmethod
    async def _acknowledge(interaction: discord.Interaction) -> None:
        if not interaction.response.is_done():
            await interaction.response.defer()  # within Discord's 3 s; the edit follows

    async def pressed(self, interaction: discord.Interaction, step: int) -> None:
        state = await self._allowed(interaction)
        if state is None or interaction.message is None:
            return
        await self._acknowledge(interaction)
        message = interaction.message
        try:
            if step == 0:

                async def edit(result: TurnResult) -> None:
                    await self._show(
                        interaction,
                        result.persona.name,
                        result.text,
                        result.image.path,
                        style_of(message, result.cast_size),
                        result.persona.labels,
                        result.versions - 1,
                        result.versions,
                        result.emotion.label,
                    )

                async with message.channel.typing():
                    result = await self.engine.replies.regenerate(message.id, deliver=edit)
                if result.image.fresh is not None:

                    async def still_shown() -> bool:
                        now = await self.engine.replies.state(message.id)
                        return now is not None and (now.version, now.emotion) == (
                            result.version,
                            result.emotion.label,
                        )

                    async def show_face(out: Outgoing) -> None:
                        await interaction.edit_original_response(attachments=out.files(), embeds=out.embeds)

                    self._background.spawn(swap_in_render(result, message, show_face, still_shown))
            else:
                state = await self.engine.replies.browse(message.id, step)
                await self._show_state(interaction, state, message)
        except BusyError:
            await interaction.followup.send("I'm busy writing other replies; try again soon.", ephemeral=True)
        except BotError as exc:
            await interaction.followup.send(f"⚠️ {exc}", ephemeral=True)
        except discord.HTTPException as exc:
            _log.warning("could not change reply %s: %s", message.id, exc)

    async def face_chosen(self, interaction: discord.Interaction, label: str) -> None:
        state = await self._allowed(interaction)
        if state is None or interaction.message is None:
            return
        await self._acknowledge(interaction)
        try:
            state = await self.engine.replies.choose_face(interaction.message.id, label)
            await self._show_state(interaction, state, interaction.message)
        except BotError as exc:
            await interaction.followup.send(f"⚠️ {exc}", ephemeral=True)

    async def _show_state(
        self, interaction: discord.Interaction, state: ReplyState, message: discord.Message
    ) -> None:
        if state.persona is None:
            return
        image = await self.engine.admin.face(state.persona, state.emotion or "neutral")
        await self._show(
            interaction,
            state.persona.name,
            state.text,
            image.path,
            style_of(message, state.cast_size),
            state.persona.labels,
            state.version,
            state.versions,
            state.emotion,
        )

    async def _show(
        self,
        interaction: discord.Interaction,
        name: str,
        text: str,
        image: Path | None,
        style: Style,
        labels: Sequence[str],
        version: int,
        versions: int,
        emotion: str | None,
    ) -> None:
        """Edit the reply in place: its text (cut to one message), face and controls."""
        out = compose(name, text, image, style)
        if out.rest:
            out.content = out.content[: DISCORD_LIMIT - 1] + "…"
        view = controls(labels, version, versions, emotion)
        await interaction.edit_original_response(
            content=out.content, attachments=out.files(), embeds=out.embeds, view=view
        )
        view.stop()


async def setup(bot: RoleplayBot) -> None:
    await bot.add_cog(Replies(bot))
