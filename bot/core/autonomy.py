"""When a persona may speak up on its own, as pure decisions over a clock: the front-end tells it what
happens in a channel (members talking, replies) and asks whether to act; the engine writes the line.

The bounds hold whatever the model or other bots do: only members' messages wake a channel (a bot's,
the cast's own webhooks' and the persona's own lines never do), a quiet spell brings one line at most per
member message, nothing happens once members have been silent for `member_seconds`, and every channel
gets at most `max_per_hour` unprompted lines and reactions in any hour.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from bot.bounded import LRUDict
from bot.config_chat import AutonomyConfig
from bot.store import AutonomyRow

HOUR = 3600.0
MAX_CHANNELS = 10_000  # channels whose recent activity is kept; older ones are long past any quiet spell

Act = Literal["line", "react"]
# After a quiet spell the model is told so, for that line only: without it a model simply goes on with
# its last message, as if no time had passed.
QUIET_CUE = "(OOC: A while passes in silence. {name} speaks up on their own: a new line in character.)"


@dataclass(frozen=True)
class AutonomySettings:
    """A channel's autonomy: its admins' choices over the config's defaults."""

    enabled: bool
    max_per_hour: int
    quiet_seconds: float
    member_seconds: float
    chance: float
    react_share: float
    cast_turns: int


def settings_of(row: AutonomyRow, defaults: AutonomyConfig) -> AutonomySettings:
    quiet = row.quiet_seconds if row.quiet_seconds is not None else defaults.quiet_seconds
    return AutonomySettings(
        enabled=row.enabled,
        max_per_hour=row.max_per_hour if row.max_per_hour is not None else defaults.max_per_hour,
        quiet_seconds=quiet,
        # A longer quiet spell than the members' window would never come: the window grows with it.
        member_seconds=max(defaults.member_seconds, quiet * 2),
        chance=row.chance if row.chance is not None else defaults.chance,
        react_share=defaults.react_share,
        cast_turns=defaults.cast_turns,
    )


def spell(seconds: float) -> str:
    """A quiet spell's length in words: "15 minutes", "2 seconds"."""
    return f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} seconds"


@dataclass
class Pulse:
    """What happened lately in one channel (monotonic seconds)."""

    member_at: float | None = None  # a member's latest message
    said_at: float | None = None  # anything said: members, replies, unprompted lines
    nudged: bool = False  # a quiet-spell line came since the member's latest message
    acts: deque[float] = field(default_factory=deque)  # unprompted lines and reactions, the last hour


class Autonomy:
    def __init__(self, clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self._clock = clock
        self._rng = rng or random.Random()
        self._pulses: LRUDict[int, Pulse] = LRUDict(MAX_CHANNELS)

    def _pulse(self, channel_id: int) -> Pulse:
        pulse = self._pulses.get(channel_id)
        if pulse is None:
            pulse = self._pulses[channel_id] = Pulse()
        return pulse

    # -- what happened --------------------------------------------------------------------------------

    def member_spoke(self, channel_id: int) -> None:
        pulse = self._pulse(channel_id)
        pulse.member_at = pulse.said_at = self._clock()
        pulse.nudged = False

    def persona_spoke(self, channel_id: int) -> None:
        """A reply to a member: the channel is not quiet."""
        if channel_id in self._pulses:
            self._pulses[channel_id].said_at = self._clock()

    def acted(self, channel_id: int, quiet_spell: bool = False) -> None:
        pulse = self._pulse(channel_id)
        pulse.acts.append(self._clock())
        pulse.said_at = self._clock()
        pulse.nudged = pulse.nudged or quiet_spell

    # -- what may happen ------------------------------------------------------------------------------

    def acts_this_hour(self, channel_id: int) -> int:
        pulse = self._pulses.get(channel_id)
        if pulse is None:
            return 0
        while pulse.acts and self._clock() - pulse.acts[0] >= HOUR:
            pulse.acts.popleft()
        return len(pulse.acts)

    def room(self, channel_id: int, settings: AutonomySettings) -> int:
        """How many unprompted acts the channel may have now: 0 when off, over its cap, or without members
        lately."""
        pulse = self._pulses.get(channel_id)
        if not settings.enabled or pulse is None or pulse.member_at is None:
            return 0
        if self._clock() - pulse.member_at > settings.member_seconds:
            return 0
        return max(0, settings.max_per_hour - self.acts_this_hour(channel_id))

    def quiet_due(self, channel_id: int, settings: AutonomySettings) -> bool:
        """A quiet spell has come in a channel members spoke in lately, and brought no line yet."""
        pulse = self._pulses.get(channel_id)
        if pulse is None or pulse.nudged or pulse.said_at is None or not self.room(channel_id, settings):
            return False
        return self._clock() - pulse.said_at >= settings.quiet_seconds

    def chime_in(self, channel_id: int, settings: AutonomySettings) -> Act | None:
        """Rolled when members talk among themselves: a line, a reaction, or (mostly) nothing."""
        if not self.room(channel_id, settings) or self._rng.random() >= settings.chance:
            return None
        return "react" if self._rng.random() < settings.react_share else "line"

    def watched(self) -> list[int]:
        """Channels where members spoke lately enough for a quiet spell to matter."""
        return [channel for channel, pulse in self._pulses.items() if pulse.member_at is not None]
