"""`engine.admin`'s memory part: a channel's summaries, pinned facts and recalled lines for admins; a
member's notes for that member; whether a server keeps notes on members."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.memory import MemoryView
from bot.store import MemberNotes, Pin

if TYPE_CHECKING:
    from bot.core.models import Models
    from bot.core.scene import Scene
    from bot.personas import Persona


class MemoryAdmin:
    scene: Scene
    models: Models

    if TYPE_CHECKING:

        async def persona_named(self, channel_id: int, name: str | None = None) -> Persona: ...

    # -- a channel's memory: summaries, pinned facts, recalled lines ----------------------------------------

    async def memory(self, channel_id: int) -> MemoryView:
        """The channel's summaries (per persona), pinned facts and the lines its last prompt recalled."""
        return await self.models.memory.view(channel_id)

    async def edit_summary(self, channel_id: int, text: str, name: str | None = None) -> Persona:
        """Replace a persona's summary of this channel (the lead's by default) with an admin's text, kept
        as written; empty text lets the model summarise again. Returns whose summary it is."""
        persona = await self.persona_named(channel_id, name)
        window = self.scene.windows.get((channel_id, persona.slug))
        await self.models.memory.edit_summary(
            channel_id, persona.slug, text, window.first_id - 1 if window is not None else 0
        )
        self.scene.erased()  # shown from the next turn on, not at the window's next move
        return persona

    async def pin(self, channel_id: int, text: str) -> list[Pin]:
        """A fact always in the channel's prompt (within memory.pinned_tokens); returns every pin."""
        return await self.models.memory.pin(channel_id, text)

    async def unpin(self, channel_id: int, number: int) -> list[Pin]:
        return await self.models.memory.unpin(channel_id, number)

    # -- members' notes ---------------------------------------------------------------------------------

    async def member_notes(self, server_id: int, member_id: int) -> tuple[MemberNotes | None, bool]:
        """What the personas noted about a member in a server, and whether the server keeps notes."""
        memory = self.models.memory
        return await memory.member_view(server_id, member_id), await memory.members_on(server_id)

    async def correct_member_notes(self, server_id: int, member_id: int, text: str) -> None:
        """The member's own notes, kept as written; empty text erases them."""
        await self.models.memory.correct_member(server_id, member_id, text)

    async def keep_member_notes(self, server_id: int, keep: bool) -> None:
        """A server's admins' choice: notes on members kept and used, or not."""
        await self.models.memory.set_members(server_id, keep)
