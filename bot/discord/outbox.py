"""After a crash, the history made whole again: a reply the bot posted and never filed (it died between
the post and the save) is looked for in its channel at the next start and filed with the posted
message's id; one that was never posted is dropped. Nothing a member saw vanishes from the story."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord

from bot.store import UnsentReply

if TYPE_CHECKING:
    from bot.discord.client import RoleplayBot

_log = logging.getLogger(__name__)

LOOK_AHEAD = 50  # messages after the member's that are searched for the reply
COMPARED = 200  # characters of the reply's start that must match the posted text


def _words(text: str) -> str:
    return " ".join(text.split())


def posted_as(message: discord.Message, reply: UnsentReply, bot_id: int) -> bool:
    """Whether `message` is the (first part of the) reply: posted by the bot itself, or through a webhook
    under the persona's name, and its text the reply's start (a split reply's first part, or the reply
    posted as the bot naming the character)."""
    if message.webhook_id is not None:
        if message.author.name != reply.author_name[:80]:
            return False
    elif message.author.id != bot_id:
        return False
    shown = _words(message.content.removeprefix(f"**{reply.author_name}:** "))
    return bool(shown) and _words(reply.content).startswith(shown[:COMPARED])


async def file_unsent_replies(bot: RoleplayBot) -> None:
    """Find each reply left in the outbox in its channel; file it, or drop it if it was never posted."""
    outbox = bot.engine.replies
    replies = await outbox.unsent()
    if not replies or bot.user is None:
        return
    taken: set[int] = set()  # a message is one reply's, in a cast's two replies to one message
    for reply in replies:
        if reply.answers is None:
            await outbox.was_not_posted(reply)  # not a Discord reply: nothing to look for
            continue
        channel = bot.get_partial_messageable(reply.channel_id)
        try:
            found = None
            async for message in channel.history(
                after=discord.Object(reply.answers), limit=LOOK_AHEAD, oldest_first=True
            ):
                if message.id not in taken and posted_as(message, reply, bot.user.id):
                    found = message
                    break
        except (discord.Forbidden, discord.NotFound):
            found = None  # the channel is gone, or closed to the bot: nobody can see the reply there
        except discord.HTTPException as exc:
            _log.warning(
                "could not look for an unsaved reply in channel %s (%s); next start", reply.channel_id, exc
            )
            continue
        if found is None:
            await outbox.was_not_posted(reply)
            continue
        taken.add(found.id)
        await outbox.was_posted(reply, found.id)
        _log.info(
            "filed %s's reply in channel %s, posted before the bot stopped",
            reply.author_name,
            reply.channel_id,
        )
