"""The settings of how the bot takes part in chat: Discord's channels and direct messages, casts, and a
persona speaking up on its own. Part of config.toml (bot/config.py reads and validates the whole file)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Personas in one cast, and replies after one message: Discord allows 15 webhooks per channel, and a
# select menu lists at most 25 options; 10 keeps every list of the cast readable.
MAX_CAST = 10
MAX_UNPROMPTED_PER_HOUR = 60  # beyond one a minute a persona that "speaks up" is spam
DAY = 86_400.0


@dataclass(frozen=True)
class DiscordConfig:
    default_mode: Literal["all", "mention"] = "mention"
    enable_new_channels: bool = False
    cooldown_seconds: float = 3.0
    max_pending_per_channel: int = 2
    max_attachment_bytes: int = 8_000_000
    stream_edits: bool = False
    set_nickname: bool = True
    sync_commands: bool = True  # register slash commands when they changed since the last sync
    command_guild: int = 0  # sync to this server only (instant); 0: globally (can take up to an hour)
    api_base: str = ""  # empty: discord.com
    gateway_url: str = ""
    # Private roleplay in direct messages: off unless the owner turns it on; then a member of a server
    # whose admins did not turn it off there (/manage dms) may DM the bot.
    direct_messages: bool = False
    dm_persona: str = ""  # the persona of direct messages; empty: [persona] default


@dataclass(frozen=True)
class CastConfig:
    max_members: int = 4  # personas in one channel's cast
    # Who answers a message that names no cast member: "choice" asks the model (the emotion judge's
    # constrained choice, over the cast's names), "order" takes the member after the last one who spoke.
    next_speaker: Literal["choice", "order"] = "choice"
    # Persona replies after one member's message at most, so two characters never talk forever.
    max_turns: int = 2


@dataclass(frozen=True)
class AutonomyConfig:
    """The defaults of a channel whose admins let the persona speak up (/channel autonomy); off in every
    channel until they do."""

    max_per_hour: int = 3  # unprompted lines and reactions in one channel, at most, in any hour
    quiet_seconds: float = 900.0  # after this long with nothing said, the persona may add a line
    # ... but only while a member spoke within this long: an empty channel stays silent.
    member_seconds: float = 2700.0
    chance: float = 0.1  # of speaking up when members talk among themselves (not to the bot)
    react_share: float = 0.5  # of those times, a reaction (an emoji of the persona's emotion) not a line
    cast_turns: int = 2  # unprompted lines in a row, a cast's personas answering each other


def chat_rules(
    discord: DiscordConfig, cast: CastConfig, autonomy: AutonomyConfig
) -> list[tuple[bool, str, str]]:
    """(holds, dotted key, why not) for config.py's validation."""
    return [
        (1 <= cast.max_members <= MAX_CAST, "cast.max_members", f"must be between 1 and {MAX_CAST}"),
        (1 <= cast.max_turns <= MAX_CAST, "cast.max_turns", f"must be between 1 and {MAX_CAST}"),
        (discord.max_pending_per_channel >= 1, "discord.max_pending_per_channel", "must be at least 1"),
        (
            0 <= autonomy.max_per_hour <= MAX_UNPROMPTED_PER_HOUR,
            "autonomy.max_per_hour",
            f"must be between 0 and {MAX_UNPROMPTED_PER_HOUR}",
        ),
        (0 < autonomy.quiet_seconds <= DAY, "autonomy.quiet_seconds", "must be positive and at most a day"),
        (
            autonomy.quiet_seconds < autonomy.member_seconds <= 7 * DAY,
            "autonomy.member_seconds",
            "must be longer than autonomy.quiet_seconds and at most a week",
        ),
        (0 <= autonomy.chance <= 1, "autonomy.chance", "must be between 0 and 1"),
        (0 <= autonomy.react_share <= 1, "autonomy.react_share", "must be between 0 and 1"),
        (1 <= autonomy.cast_turns <= MAX_CAST, "autonomy.cast_turns", f"must be between 1 and {MAX_CAST}"),
    ]
