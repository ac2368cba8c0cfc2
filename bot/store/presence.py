"""The store's side of a persona present in Discord (schema version 7): members' direct-message channels,
each server's choice on direct messages, and channels where the persona may speak up on its own. A mixin
of Store (same connection, same transactions)."""

from __future__ import annotations

from dataclasses import dataclass

from bot.store.memory import StoreBase


@dataclass(frozen=True)
class AutonomyRow:
    """A channel's own autonomy settings; None fields take the config's defaults."""

    enabled: bool = False
    max_per_hour: int | None = None
    quiet_seconds: float | None = None
    chance: float | None = None


class PresenceQueries(StoreBase):
    async def note_direct(self, channel_id: int, member_id: int) -> None:
        await self._write(
            "INSERT INTO direct_channels (channel_id, member_id) VALUES (?, ?)"
            " ON CONFLICT (channel_id) DO UPDATE SET member_id = excluded.member_id",
            (channel_id, member_id),
        )

    async def direct_channels(self, member_id: int) -> list[int]:
        """The direct-message channels this member talked to the bot in."""
        rows = await self._rows(
            "SELECT channel_id FROM direct_channels WHERE member_id = ? ORDER BY channel_id", (member_id,)
        )
        return [int(r[0]) for r in rows]

    async def is_direct(self, channel_id: int) -> bool:
        return (
            await self._row("SELECT 1 FROM direct_channels WHERE channel_id = ?", (channel_id,)) is not None
        )

    async def direct_messages_allowed(self, server_id: int) -> bool | None:
        """The server's admins' choice; None where they made none (the config's holds)."""
        row = await self._row("SELECT allowed FROM server_direct_messages WHERE server_id = ?", (server_id,))
        return bool(row[0]) if row else None

    async def allow_direct_messages(self, server_id: int, allowed: bool) -> None:
        await self._write(
            "INSERT INTO server_direct_messages (server_id, allowed) VALUES (?, ?)"
            " ON CONFLICT (server_id) DO UPDATE SET allowed = excluded.allowed",
            (server_id, int(allowed)),
        )

    async def autonomy(self, channel_id: int) -> AutonomyRow:
        row = await self._row(
            "SELECT enabled, max_per_hour, quiet_seconds, chance FROM channel_autonomy WHERE channel_id = ?",
            (channel_id,),
        )
        if row is None:
            return AutonomyRow()
        return AutonomyRow(bool(row[0]), row[1], row[2], row[3])

    async def autonomous_channels(self) -> list[int]:
        rows = await self._rows("SELECT channel_id FROM channel_autonomy WHERE enabled = 1", ())
        return [int(r[0]) for r in rows]

    async def set_autonomy(self, channel_id: int, row: AutonomyRow) -> None:
        await self._write(
            "INSERT INTO channel_autonomy (channel_id, enabled, max_per_hour, quiet_seconds, chance)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (channel_id) DO UPDATE SET enabled = excluded.enabled,"
            " max_per_hour = excluded.max_per_hour, quiet_seconds = excluded.quiet_seconds,"
            " chance = excluded.chance",
            (channel_id, int(row.enabled), row.max_per_hour, row.quiet_seconds, row.chance),
        )
