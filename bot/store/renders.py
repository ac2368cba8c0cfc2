"""The store's render index: which rendered face files exist for which persona, label and portrait. A
mixin of Store (same connection, same transactions)."""

from __future__ import annotations

import time

from bot.store.memory import StoreBase
from bot.store.records import RenderRecord


class RenderQueries(StoreBase):
    async def render(self, key: str) -> RenderRecord | None:
        row = await self._row(
            "SELECT key, persona, label, variant, path, source_hash FROM renders WHERE key = ?", (key,)
        )
        return RenderRecord(**dict(row)) if row else None

    async def renders_for(self, persona: str) -> list[RenderRecord]:
        rows = await self._rows(
            "SELECT key, persona, label, variant, path, source_hash FROM renders WHERE persona = ?"
            " ORDER BY label, variant",
            (persona,),
        )
        return [RenderRecord(**dict(row)) for row in rows]

    async def put_render(self, record: RenderRecord) -> None:
        await self._write(
            "INSERT OR REPLACE INTO renders (key, persona, label, variant, path, source_hash, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                *(getattr(record, f) for f in ("key", "persona", "label", "variant", "path", "source_hash")),
                time.time(),
            ),
        )

    async def drop_stale_renders(self, persona: str, source_hash: str) -> list[RenderRecord]:
        """Forget renders of a persona made from another portrait or prompt set; returns them."""
        stale = [r for r in await self.renders_for(persona) if r.source_hash != source_hash]
        if stale:
            async with self._transaction() as db:
                await db.executemany("DELETE FROM renders WHERE key = ?", [(r.key,) for r in stale])
        return stale

    async def count_renders(self) -> int:
        row = await self._row("SELECT COUNT(*) FROM renders")
        return int(row[0]) if row else 0
