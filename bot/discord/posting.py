"""Posting a persona's line in a channel, for replies (cogs/chat.py) and unprompted lines
(cogs/presence.py) alike: as the character through the cast's webhook, else as the bot; the parts of a
long line after its first posted the same way; the fresh render of its face swapped in when it lands."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import discord

from bot.core import TurnResult
from bot.discord.replies import Outgoing, Style, compose, swap_in_render
from bot.discord.webhooks import CastWebhooks
from bot.personas import Persona
from bot.workers import BackgroundTasks

FirstPost = Callable[[Outgoing, discord.ui.View], Awaitable[discord.Message]]


class Poster:
    def __init__(self, webhooks: CastWebhooks) -> None:
        self.webhooks = webhooks
        self.background = BackgroundTasks()  # faces still rendering for sent lines

    async def as_character(
        self, channel: discord.abc.Messageable, result: TurnResult, view: discord.ui.View
    ) -> discord.Message | None:
        """The line under the persona's name and face; None when the webhook cannot post it."""
        out = compose(result.persona.name, result.text, result.image.path, "webhook")
        sent = await self.webhooks.send(
            channel,
            result.persona.name,
            out.content,
            files=out.files,
            embeds=out.embeds,
            view=view,
            avatar_url=result.persona.avatar_url(),
        )
        if sent is None:
            return None
        await self.rest(channel, result.persona, out.rest, as_character=True)
        return sent

    async def rest(
        self, channel: discord.abc.Messageable, persona: Persona, chunks: list[str], as_character: bool
    ) -> None:
        """The parts of a long line after its first message, posted the same way as the first."""
        for chunk in chunks:
            sent = None
            if as_character:
                sent = await self.webhooks.send(channel, persona.name, chunk, avatar_url=persona.avatar_url())
            if sent is None:
                await channel.send(chunk)

    async def line(
        self, channel: discord.abc.Messageable, result: TurnResult, view: discord.ui.View, first: FirstPost
    ) -> discord.Message:
        """A line with its face and controls: in a cast as the character, else (or when the webhook
        cannot) by `first` as the bot, named in a cast; then the rest of a long line."""
        if result.cast_size > 1:
            sent = await self.as_character(channel, result, view)
            if sent is not None:
                return sent
        style: Style = "named" if result.cast_size > 1 else "plain"
        out = compose(result.persona.name, result.text, result.image.path, style)
        posted = await first(out, view)
        await self.rest(channel, result.persona, out.rest, as_character=False)
        return posted

    def face_follows(self, result: TurnResult, sent: discord.Message) -> None:
        """When the line's face is still rendering, show it in the sent message once it lands."""
        if result.image.fresh is None:
            return

        async def show_face(out: Outgoing) -> None:
            await sent.edit(attachments=out.files(), embeds=out.embeds)

        self.background.spawn(swap_in_render(result, sent, show_face))
