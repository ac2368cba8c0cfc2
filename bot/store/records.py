"""What the store hands out: plain frozen rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["user", "assistant"]

MESSAGE_COLUMNS = (
    "id, channel_id, discord_id, author_id, author_name, role, content, emotion, persona, created_at,"
    " edited_at, prompt_id, version"
)


@dataclass(frozen=True)
class StoredMessage:
    id: int
    channel_id: int
    discord_id: int | None
    author_id: int | None
    author_name: str
    role: Role
    content: str
    emotion: str | None
    persona: str
    created_at: float
    edited_at: float | None
    prompt_id: int | None = None  # a reply: the row id of the message it answers
    version: int = 0  # a reply: which of its versions is the one in the history


@dataclass(frozen=True)
class CastMember:
    persona: str
    last_emotion: str | None


@dataclass(frozen=True)
class ReplyVersion:
    version: int
    content: str
    emotion: str | None


@dataclass(frozen=True)
class ChannelState:
    channel_id: int
    persona: str | None = None
    enabled: bool | None = None  # None: the config's default
    mode: str | None = None
    last_emotion: str | None = None


@dataclass(frozen=True)
class RenderRecord:
    key: str
    persona: str
    label: str
    variant: int
    path: str
    source_hash: str


@dataclass(frozen=True)
class Summary:
    """A (channel, persona)'s summary of what left its prompt window: the lines up to `through_id`."""

    text: str
    through_id: int
    edited: bool  # written by an admin: kept, never replaced by the model's


@dataclass(frozen=True)
class Pin:
    id: int
    text: str


@dataclass(frozen=True)
class UnsentReply:
    """A reply written to the outbox before it was posted, and not yet filed in the history: after a
    crash, it may or may not be in the channel."""

    id: int
    channel_id: int
    persona: str
    author_name: str
    content: str
    emotion: str | None
    prompt_id: int | None
    answers: int | None  # the Discord id of the member's message it answers: it was posted after that
    created_at: float


@dataclass(frozen=True)
class MemberNotes:
    """What a persona learned about one member in one server: from their lines up to `through_id`."""

    text: str
    through_id: int
    edited: bool  # written by the member (a correction): kept, never replaced by the model's
