"""Everything the front-ends ask besides turns and reply controls: a channel's settings, persona and cast,
the history's edits and erasures, memory, the persona folder and its cards, faces, and status. The front-ends
never reach into the store, the personas or the models themselves; they ask here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bot.bounded import KeyedLocks
from bot.core.cast import named_in
from bot.core.memory_admin import MemoryAdmin
from bot.core.models import Models
from bot.core.presence_admin import PresenceAdmin
from bot.core.scene import Scene
from bot.errors import BotError, ExpressionError, InputError, PersonaError
from bot.expressions.detect import FaceReport, locate_face, needs_looking_for
from bot.expressions.packs import open_pack_bytes, write_pack
from bot.expressions.recipe import check_labels
from bot.expressions.service import ExpressionImage, ExpressionService
from bot.expressions.sheet import contact_sheet
from bot.expressions.sprites import MAX_PACK_BYTES, SpriteImport
from bot.files import png_bytes
from bot.images import decode_image
from bot.personas import Persona
from bot.store import ChannelState, StoredMessage

Progress = Callable[[int, int, str], Awaitable[None] | None] | None  # done, total, current label
Steps = Callable[[int, int], None] | None  # denoising steps done and in all, heard on the render thread
MAX_LISTED_CHANNELS = 500  # channels an overview shows, the most recently active first

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChannelSettings:
    enabled: bool
    mode: str  # "all" or "mention"
    last_emotion: str | None


@dataclass(frozen=True)
class EngineStatus:
    model: str
    context: int
    pending_replies: int
    pending_renders: int
    persona: Persona
    judge: str
    cached_faces: int
    messages: int
    cast: list[str]  # the names of the channel's personas, its lead first


@dataclass(frozen=True)
class ChannelOverview:
    channel_id: int
    settings: ChannelSettings
    cast: list[str]  # display names, the lead first (a missing persona file shows its id)
    messages: int
    summary: str  # the lead's summary of what left its window, if any


@dataclass(frozen=True)
class Face:
    label: str
    path: Path | None
    kind: str  # "sprite", "render", "drawn", "portrait" or "none"


class Admin(MemoryAdmin, PresenceAdmin):
    """`engine.admin`: the front-ends' questions and changes besides turns and reply controls."""

    def __init__(self, scene: Scene, models: Models) -> None:
        self.scene = scene
        self.config = scene.config
        self.store = scene.store
        self.personas = scene.personas
        self.models = models
        # One change of a persona's file at a time (the studio's page may send two at once): each reads
        # the file as the one before left it, so no edit silently undoes another.
        self._file_locks: KeyedLocks[str] = KeyedLocks()

    # -- a channel: whether and how it answers, its persona, its history ------------------------------

    async def channel_settings(self, channel_id: int) -> ChannelSettings:
        """Whether the bot answers in a channel and how, with the config's defaults filled in."""
        return self._settings(await self.store.channel(channel_id))

    def _settings(self, state: ChannelState) -> ChannelSettings:
        defaults = self.config.discord
        return ChannelSettings(
            enabled=state.enabled if state.enabled is not None else defaults.enable_new_channels,
            mode=state.mode or defaults.default_mode,
            last_emotion=state.last_emotion,
        )

    async def configure_channel(
        self, channel_id: int, *, enabled: bool | None = None, mode: str | None = None
    ) -> ChannelSettings:
        changes = {k: v for k, v in (("enabled", enabled), ("mode", mode)) if v is not None}
        if changes:
            await self.store.update_channel(channel_id, **changes)
        return await self.channel_settings(channel_id)

    async def persona_for(self, channel_id: int) -> Persona:
        return await self.scene.lead(channel_id)

    async def set_persona(self, channel_id: int, name: str) -> Persona:
        """Switch a channel's persona (validated first); its next reply uses the new one. A cast gives way
        to the one persona: a new scene."""
        persona = self.personas.load(name)
        await self.store.update_channel(channel_id, persona=persona.slug, last_emotion=None)
        await self.store.clear_cast(channel_id)
        return persona

    async def current_face(self, channel_id: int) -> ExpressionImage:
        """The face the channel's persona shows now (its last emotion, or neutral)."""
        persona = await self.scene.lead(channel_id)
        state = await self.store.channel(channel_id)
        label = state.last_emotion if state.last_emotion in persona.labels else "neutral"
        return await self.models.expressions.image_for(persona, label)

    async def reset(self, channel_id: int) -> int:
        """Forget a channel's whole history; returns how many messages went."""
        async with self.scene.lock(channel_id):
            removed = await self.store.clear_channel(channel_id)
            await self.store.clear_memory(channel_id)
            await self.store.update_channel(channel_id, last_emotion=None)
            await self.scene.forget_windows(channel_id)
            self.scene.erased()
            return removed

    async def channels(self) -> list[ChannelOverview]:
        """Every channel with settings or history: its persona and cast, mode, size and summary."""
        overview = []
        for state, count in await self.store.channels(MAX_LISTED_CHANNELS):
            lead = state.persona or self.config.persona.default
            try:
                names = [p.name for p in await self.scene.cast(state.channel_id)]
            except BotError as exc:  # a persona file gone or broken: the channel is still listed
                names = [f"{lead} (unusable: {exc})"]
            summary = (await self.store.summaries_of(state.channel_id)).get(lead)
            overview.append(
                ChannelOverview(
                    state.channel_id,
                    self._settings(state),
                    names,
                    count,
                    summary.text if summary is not None else "",
                )
            )
        return overview

    async def message_count(self, channel_id: int) -> int:
        return await self.store.count_messages(channel_id)

    async def recent_messages(self, channel_id: int, limit: int) -> list[StoredMessage]:
        """The last messages of the channel's conversation (its persona's, or its cast's), oldest first."""
        cast = await self.scene.cast(channel_id)
        return await self.store.history(channel_id, [p.slug for p in cast], limit=limit)

    # What a member edits or erases changes memory with the history: the store's triggers update the
    # full-text index and drop the summaries that read it; the scene stops showing them at once.

    async def message_edited(self, discord_id: int, text: str) -> bool:
        """Apply an edit made on Discord to the stored message; False if it is not stored."""
        changed = await self.store.edit_message(discord_id, text)
        self.scene.erased()
        return changed

    async def message_deleted(self, discord_id: int) -> bool:
        deleted = await self.store.delete_message(discord_id)
        self.scene.erased()
        return deleted

    async def messages_deleted(self, discord_ids: set[int] | frozenset[int]) -> int:
        deleted = await self.store.delete_messages(discord_ids)
        self.scene.erased()
        return deleted

    async def stored_by(self, author_id: int, channel_ids: list[int]) -> int:
        """How many stored messages a member wrote in these channels."""
        return await self.store.count_by_author(author_id, channel_ids)

    async def forget_member(self, author_id: int, channel_ids: list[int]) -> int:
        """Erase a member's messages in these channels: gone from the store, the indexes, every summary
        that read them, their notes in these channels' servers, and every future prompt."""
        try:
            return await self.store.forget_author(author_id, channel_ids)
        finally:
            await self.models.memory.forget_member(author_id, channel_ids)
            self.scene.erased()  # even a partial erase: what went must not be shown
            await self.models.llm.forget_contexts()  # nor linger in the model's kept contexts

    # -- the cast: several personas in one channel ----------------------------------------------------

    async def cast(self, channel_id: int) -> list[Persona]:
        """The personas of a channel, its lead (the channel's persona) first."""
        return await self.scene.cast(channel_id)

    async def cast_add(self, channel_id: int, name: str) -> list[Persona]:
        """Add a persona to the channel's cast (validated first); returns the cast."""
        persona = self.personas.load(name)
        await asyncio.to_thread(self.models.prompts.check_persona, persona)
        async with self.scene.lock(channel_id):
            cast = await self.scene.cast(channel_id)
            if persona.slug in {p.slug for p in cast}:
                raise InputError(f"{persona.name} is already in this channel's cast")
            limit = self.config.cast.max_members
            if len(cast) >= limit:
                raise InputError(f"the cast is full: {limit} personas (raise [cast] max_members)")
            await self.store.add_cast_member(channel_id, persona.slug)
            return await self.scene.cast(channel_id)

    async def cast_remove(self, channel_id: int, name: str) -> list[Persona]:
        """Take a persona out of the cast; its lines leave the others' prompts. The lead's place goes to
        the next member, with the conversation. Returns the cast."""
        async with self.scene.lock(channel_id):
            cast = await self.scene.cast(channel_id)
            wanted = name.strip().lower()
            target = next((p for p in cast if wanted in (p.slug, p.name.lower())), None)
            if target is None:
                members = ", ".join(p.name for p in cast)
                raise InputError(f"'{name}' is not in this channel's cast (it has: {members})")
            if len(cast) == 1:
                raise InputError("a channel keeps one persona at least: switch it with /manage persona")
            if target.slug == cast[0].slug:
                await self.store.hand_lead(channel_id, target.slug, cast[1].slug)
            else:
                await self.store.remove_cast_member(channel_id, target.slug)
            await self.scene.forget_windows(channel_id, target.slug)
            return await self.scene.cast(channel_id)

    async def named_member(self, channel_id: int, text: str) -> Persona | None:
        """The member of the channel's cast (of two or more) that a message names, if any."""
        cast = await self.scene.cast(channel_id)
        return named_in(text, cast) if len(cast) > 1 else None

    # -- the persona folder and its cards -------------------------------------------------------------

    def persona_names(self) -> list[str]:
        return self.personas.names()

    def persona_overview(self) -> list[tuple[str, str, str]]:
        """(id, display name, where its faces come from) of every persona; a broken file shows why
        instead of its name."""
        rows = []
        for slug in self.personas.names():
            try:
                persona = self.personas.load(slug)
            except BotError as exc:
                rows.append((slug, f"(unusable: {exc})", ""))
                continue
            rows.append((slug, persona.name, self.models.expressions.kind_of_faces(persona)))
        return rows

    def persona(self, name: str) -> Persona:
        """The persona called `name` (validated), from its file."""
        return self.personas.load(name)

    async def persona_named(self, channel_id: int, name: str | None = None) -> Persona:
        """The persona called `name`, or the channel's own when no name is given."""
        return self.personas.load(name) if name else await self.scene.lead(channel_id)

    def portrait_of(self, persona: Persona) -> Path | None:
        """The persona's portrait file, if it exists."""
        return self.personas.existing_portrait(persona)

    async def import_card(
        self, raw: bytes, filename: str, *, slug: str | None = None, replace: bool = False
    ) -> Persona:
        """A card as a persona. One already imported (same name, or the same character) raises
        AlreadyImported unless `replace` (it is replaced) or `slug` (kept beside it under that id)."""
        persona = await asyncio.to_thread(
            self.personas.import_card, raw, filename, slug=slug or None, force=replace
        )
        _log.info("imported card %s as persona %s", filename, persona.slug)
        return persona

    def draws_faces(self) -> bool:
        """Whether a render draws faces over the portrait (no inpainting model or image server is set)."""
        return not self.config.expressions.renders

    async def set_portrait(self, persona: Persona, raw: bytes, filename: str) -> FaceReport:
        """A new portrait for a persona (bounded as a card's picture is); its face is looked for at once
        (kept when the match is strong). The report says what was found."""
        limit = self.config.persona.max_portrait_pixels
        what = f"{filename}: the portrait"
        picture = await asyncio.to_thread(decode_image, raw, what, max_pixels=limit, error=PersonaError)
        async with self._file_locks.hold(persona.slug):
            current = await asyncio.to_thread(self.personas.load, persona.slug)
            updated = await asyncio.to_thread(self.personas.set_portrait, current, picture)
        return await self.face_region(updated, detect=True)

    async def edit_persona(self, persona: Persona, changes: Mapping[str, Any]) -> Persona:
        """Change a persona's name, description, greeting, labels or prompt words (validated; all or
        nothing). Channels show the change from their next turn."""
        async with self._file_locks.hold(persona.slug):
            # The file as the last change left it: this edit's fields on top of every earlier one's.
            current = await asyncio.to_thread(self.personas.load, persona.slug)
            return await asyncio.to_thread(self.personas.update, current, changes)

    def face_unknown(self, persona: Persona) -> bool:
        """Whether a just-imported persona's face should be looked for (see `needs_looking_for`)."""
        return needs_looking_for(self.personas, persona)

    async def face_region(
        self,
        persona: Persona,
        box: tuple[int, int, int, int] | None = None,
        detect: bool = False,
        save: bool = True,
    ) -> FaceReport:
        """Set a persona's face box (by hand, or by detection when the match is strong) and preview it;
        with `save=False`, preview a box being tried, or propose the detected one, writing nothing."""

        def locate(current: Persona) -> FaceReport:
            return locate_face(
                self.personas,
                current,
                self.config.expressions,
                self.config.persona.max_portrait_pixels,
                box=box,
                detect=detect,
                save=save,
            )

        if not save:
            return await asyncio.to_thread(locate, persona)
        async with self._file_locks.hold(persona.slug):
            if self.personas.path_of(persona.slug).is_file():
                persona = await asyncio.to_thread(self.personas.load, persona.slug)
            return await asyncio.to_thread(locate, persona)

    def upload_limits(self) -> tuple[int, int]:
        """The most bytes a card file and a sprite pack may have (the command line's limits)."""
        return self.config.persona.max_card_bytes, MAX_PACK_BYTES

    async def export_card(self, persona: Persona, spec: Literal["v2", "v3"]) -> bytes:
        return await asyncio.to_thread(self.personas.export_card, persona, spec)

    async def check_default_persona(self) -> None:
        """Raise BotError if the default persona cannot be used (start-up check)."""
        persona = self.personas.load(self.config.persona.default)
        await asyncio.to_thread(self.models.prompts.check_persona, persona)

    # -- faces and status -----------------------------------------------------------------------------

    async def face(self, persona: Persona, label: str) -> ExpressionImage:
        return await self.models.expressions.image_for(persona, label)

    async def faces(self, persona: Persona, labels: Sequence[str] | None = None) -> list[Face]:
        """Each label's face (all of the persona's by default) as it would show now, and where it comes
        from; starts no render."""
        labels = persona.labels if labels is None else labels
        service = self._service()
        if service is None:
            portrait = self.personas.existing_portrait(persona)
            kind = "portrait" if portrait is not None else "none"
            return [Face(label, portrait, kind) for label in labels]
        return [Face(label, *await service.face_source(persona, label)) for label in labels]

    async def import_sprites(self, persona: Persona, raw: bytes, filename: str) -> SpriteImport:
        """Store an uploaded sprite pack (a zip of label.png pictures) for a persona."""
        service = self._needs_service()
        with open_pack_bytes(raw, filename) as files:
            return await asyncio.to_thread(service.import_sprites, persona, files)

    async def sprite_pack(self, persona: Persona) -> bytes:
        """A zip of the persona's faces under SillyTavern's names (renders, overridden by sprites)."""
        files = await self._needs_service().pack_files(persona)
        if not files:
            raise ExpressionError(f"{persona.slug} has no rendered or imported faces yet")
        return await asyncio.to_thread(write_pack, files)

    async def contact_sheet(self, persona: Persona) -> bytes:
        """A PNG grid of the faces each label shows now (no render is started)."""
        faces = [(f"{f.label} ({f.kind})", f.path) for f in await self.faces(persona) if f.path is not None]
        if not faces:
            raise ExpressionError(f"{persona.slug} has no portrait or faces to show")
        return await asyncio.to_thread(lambda: png_bytes(contact_sheet(faces)))

    def _service(self) -> ExpressionService | None:
        expressions = self.models.expressions
        return expressions if isinstance(expressions, ExpressionService) else None

    def _needs_service(self) -> ExpressionService:
        service = self._service()
        if service is None:
            raise BotError("faces are switched off here: set [expressions] enabled = true in config.toml")
        return service

    async def render_faces(
        self,
        persona: Persona,
        variants: int = 1,
        labels: list[str] | None = None,
        on_progress: Progress = None,
        on_step: Steps = None,
        force: bool = False,
    ) -> list[tuple[str, Path]]:
        """Every face of a persona (sprites where present, then renders, then drawn faces), for a contact
        sheet; `force` renders again what is cached."""
        check_labels(persona, labels or [])
        return await self._needs_service().render_all(
            persona, labels or list(persona.labels), variants, on_progress, on_step, force
        )

    async def status(self, channel_id: int) -> EngineStatus:
        persona = await self.scene.lead(channel_id)
        llm = self.models.llm
        return EngineStatus(
            model=llm.name,
            context=llm.n_ctx,
            pending_replies=llm.pending,
            pending_renders=getattr(self.models.expressions, "pending", 0),
            persona=persona,
            judge=self.models.judge.describe(),
            cached_faces=await self.store.count_renders(),
            messages=await self.store.count_messages(channel_id),
            cast=[p.name for p in await self.scene.cast(channel_id)],
        )
