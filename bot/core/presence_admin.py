"""`engine.admin`'s presence part: direct messages (which persona, who may, which channels are a member's)
and each channel's autonomy (whether its persona may speak up on its own)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from bot.config_chat import DAY, MAX_UNPROMPTED_PER_HOUR
from bot.core.autonomy import AutonomySettings, settings_of
from bot.errors import InputError
from bot.store import AutonomyRow

if TYPE_CHECKING:
    from bot.core.models import Models
    from bot.core.scene import Scene
    from bot.personas import Persona


class PresenceAdmin:
    scene: Scene
    models: Models

    if TYPE_CHECKING:

        async def reset(self, channel_id: int) -> int: ...

    # -- direct messages ----------------------------------------------------------------------------------

    def direct_messages_on(self) -> bool:
        return self.scene.config.discord.direct_messages

    async def direct_messages_allowed(self, server_ids: list[int]) -> bool:
        """Whether a member of these servers may DM the bot: the owner's config allows it, and at least one
        of their servers' admins did not turn it off."""
        if not self.direct_messages_on():
            return False
        for server_id in server_ids:
            if await self.scene.store.direct_messages_allowed(server_id) is not False:
                return True
        return False

    async def allow_direct_messages(self, server_id: int, allowed: bool) -> None:
        await self.scene.store.allow_direct_messages(server_id, allowed)

    async def open_direct(self, channel_id: int, member_id: int) -> Persona:
        """A member's direct-message channel, noted as theirs (for /forget-me) and given the DM persona the
        first time. Its history, summaries and recall are its own; it is in no server, so no server's
        notes on members reach it."""
        store = self.scene.store
        if not await store.is_direct(channel_id):
            await store.note_direct(channel_id, member_id)
        state = await store.channel(channel_id)
        if state.persona is None:
            wanted = self.scene.config.discord.dm_persona or self.scene.config.persona.default
            persona = self.scene.personas.load(wanted)
            await store.update_channel(channel_id, persona=persona.slug, enabled=True, mode="all")
        return await self.scene.lead(channel_id)

    async def direct_channels(self, member_id: int) -> list[int]:
        return await self.scene.store.direct_channels(member_id)

    async def is_direct(self, channel_id: int) -> bool:
        return await self.scene.store.is_direct(channel_id)

    async def forget_direct(self, member_id: int) -> int:
        """Erase a member's direct-message conversations whole (the persona's side too: it was said to
        them alone); returns how many messages went."""
        removed = sum([await self.reset(channel) for channel in await self.direct_channels(member_id)])
        await self.models.llm.forget_contexts()  # nor may it linger in the model's kept contexts
        return removed

    # -- autonomy -----------------------------------------------------------------------------------------

    async def autonomy(self, channel_id: int) -> AutonomySettings:
        return settings_of(await self.scene.store.autonomy(channel_id), self.scene.config.autonomy)

    async def autonomous_channels(self) -> list[int]:
        """The channels whose admins let the persona speak up."""
        return await self.scene.store.autonomous_channels()

    async def configure_autonomy(
        self,
        channel_id: int,
        enabled: bool,
        *,
        max_per_hour: int | None = None,
        quiet_minutes: float | None = None,
        chance: float | None = None,
    ) -> AutonomySettings:
        """Turn a channel's autonomy on or off; the limits given replace the channel's own (the others
        keep theirs, or the config's)."""
        if await self.is_direct(channel_id):
            raise InputError("a persona does not speak up on its own in direct messages")
        if max_per_hour is not None and not 0 <= max_per_hour <= MAX_UNPROMPTED_PER_HOUR:
            raise InputError(f"per_hour must be between 0 and {MAX_UNPROMPTED_PER_HOUR}")
        if quiet_minutes is not None and not 1 <= quiet_minutes <= DAY / 60:
            raise InputError(f"quiet_minutes must be between 1 and {DAY / 60:g} (a day)")
        if chance is not None and not 0 <= chance <= 1:
            raise InputError("chance must be between 0 and 1")
        row = await self.scene.store.autonomy(channel_id)
        new = AutonomyRow(
            enabled,
            max_per_hour if max_per_hour is not None else row.max_per_hour,
            quiet_minutes * 60 if quiet_minutes is not None else row.quiet_seconds,
            chance if chance is not None else row.chance,
        )
        await self.scene.store.set_autonomy(channel_id, new)
        return await self.autonomy(channel_id)

    def model_idle(self) -> bool:
        """Whether the model has nothing to do: the only time unprompted work may start."""
        return self.models.llm.pending == 0

    async def emotion_of(self, persona: Persona, text: str) -> str:
        """The emotion a member's message stirs, as the text judge reads it (for a fitting reaction)."""
        scores = await asyncio.to_thread(self.models.judge.classify_text, text, persona.labels)
        return max(scores, key=lambda label: scores[label]) if scores else "neutral"
