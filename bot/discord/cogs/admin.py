"""Admin slash commands. Changing anything needs Manage Server: declared as the commands' default
permission for Discord's UI, and checked again here, because server admins can override the default."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.core import spell
from bot.discord.cogs.memory import describe_pins
from bot.errors import AlreadyImported, BotError
from bot.expressions.detect import FaceReport
from bot.personas import Persona, shorter_name

if TYPE_CHECKING:
    from bot.discord.client import RoleplayBot

_log = logging.getLogger(__name__)

CARD_TYPES = (".png", ".json")
PROGRESS_EDIT_EVERY = 2.0
# Discord's interaction tokens live 15 minutes; a slower job ends with a channel message instead.
INTERACTION_TOKEN_LIFE = 14 * 60.0
ADMIN_ONLY = discord.Permissions(manage_guild=True)


def require_manager(interaction: discord.Interaction) -> bool:
    """In-code permission check; raises a friendly error for everyone without Manage Server."""
    if interaction.guild is None:
        raise app_commands.NoPrivateMessage("These commands work in a server channel.")
    if not interaction.permissions.manage_guild:
        raise app_commands.MissingPermissions(["manage_guild"])
    return True


manager_only = app_commands.check(require_manager)


def require_manager_in_servers(interaction: discord.Interaction) -> bool:
    """Manage Server in a server; in a direct message the command itself checks the DM is the member's."""
    return interaction.guild is None or require_manager(interaction)


SET_BY_HAND = (
    "drag the box over it in the studio (`./run studio` on the bot's machine), or use `/manage face`"
    " with x, y, width and height ({box})"
)


def _face_answer(report: FaceReport, before: str) -> tuple[str, list[discord.File]]:
    """What a face command says, and the preview to attach."""
    persona = report.persona
    kept = "the face region stays as it was" if report.preview is not None else "faces show as a badge"
    lines = [before] if before else []
    if report.finding is not None:
        lines.append(report.finding.describe(SET_BY_HAND, kept))
    if report.saved is not None:
        lines.append(f"Saved {persona.name}'s face box: `{list(persona.face_box or ())}`.")
    elif report.preview is None and report.finding is None:
        lines.append(
            f"{persona.name} has no face region: faces show as a badge. `/manage face detect:True` looks"
            f" for it; or {SET_BY_HAND.format(box='in portrait pixels')}."
        )
    elif report.preview is not None and report.finding is None:
        lines.append(f"{persona.name}'s face box: `{list(persona.face_box or ())}` (dimmed outside it).")
    files = [discord.File(io.BytesIO(report.preview), filename="face.png")] if report.preview else []
    return "\n".join(lines)[:2000], files


class Admin(commands.Cog):
    persona = app_commands.Group(name="persona", description="The character the bot plays in this channel")
    channel = app_commands.Group(
        name="channel",
        description="Where and when the bot answers",
        default_permissions=ADMIN_ONLY,
        guild_only=True,
    )
    expression = app_commands.Group(name="expression", description="The persona's faces")
    # Everything that changes what the bot plays or renders: Discord hides the whole group from members
    # without Manage Server (a subcommand's own default permission is ignored by Discord).
    manage = app_commands.Group(
        name="manage",
        description="Change the persona, import cards, render faces (Manage Server)",
        default_permissions=ADMIN_ONLY,
        guild_only=True,
    )

    manage_memory = app_commands.Group(
        name="memory", description="Correct what the bot remembers here (Manage Server)", parent=manage
    )

    def __init__(self, bot: RoleplayBot) -> None:
        self.bot = bot
        self.engine = bot.engine
        self.config = bot.config
        self.token_life = INTERACTION_TOKEN_LIFE

    async def cog_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        if isinstance(error, app_commands.MissingPermissions):
            text = "You need the **Manage Server** permission for this command."
        elif isinstance(error, app_commands.CheckFailure):
            text = str(error) or "You cannot use this command here."
        elif isinstance(error, app_commands.CommandInvokeError) and isinstance(error.original, BotError):
            text = str(error.original)
        else:
            _log.exception("slash command failed", exc_info=error)
            text = "That failed unexpectedly; the bot's log has the details."
        await self._tell(interaction, f"⚠️ {text}")

    async def _tell(self, interaction: discord.Interaction, text: str) -> None:
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException as exc:  # an expired interaction: nothing left to answer
            _log.warning("could not tell %s why /%s failed: %s", interaction.user, interaction.command, exc)

    # -- /persona ---------------------------------------------------------------------------------------

    @manage.command(name="persona", description="Play another persona in this channel")
    @app_commands.describe(name="persona id, see /persona list")
    @manager_only
    async def persona_set(self, interaction: discord.Interaction, name: str) -> None:
        before = await self.engine.admin.cast(interaction.channel_id or 0)
        persona = await self.engine.admin.set_persona(interaction.channel_id or 0, name)
        ended = ""
        if len(before) > 1:
            ended = f" The cast of {len(before)} ended (`/cast add` brings others back)."
        await interaction.response.send_message(
            f"Now playing **{persona.name}** in this channel.{ended}", ephemeral=True
        )
        if self.config.discord.set_nickname and interaction.guild is not None:
            try:
                await interaction.guild.me.edit(nick=persona.name[:32])
            except discord.HTTPException as exc:
                _log.info("could not change nickname: %s", exc)
        if persona.greeting and isinstance(interaction.channel, discord.abc.Messageable):
            user = interaction.user.display_name
            face = self.engine.admin.portrait_of(persona)
            files = [discord.File(face, filename="expression.png")] if face else []
            await interaction.channel.send(persona.fill(persona.greeting, user)[:2000], files=files)

    @persona_set.autocomplete("name")
    async def _persona_names(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=n, value=n)
            for n in self.engine.admin.persona_names()
            if current.lower() in n
        ][:25]

    @persona.command(name="list", description="Personas this bot can play")
    async def persona_list(self, interaction: discord.Interaction) -> None:
        lines = [
            f"`{slug}`: {name}" + (f" ({faces})" if faces else "")
            for slug, name, faces in self.engine.admin.persona_overview()
        ]
        await interaction.response.send_message("\n".join(lines)[:2000] or "No personas yet.", ephemeral=True)

    @persona.command(name="show", description="Who the bot is playing here")
    async def persona_show(self, interaction: discord.Interaction, name: str | None = None) -> None:
        persona = await self.engine.admin.persona_named(interaction.channel_id or 0, name)
        embed = discord.Embed(title=persona.name, description=persona.fill(persona.description)[:4000])
        if persona.scenario:
            embed.add_field(name="Scenario", value=persona.fill(persona.scenario)[:1024], inline=False)
        embed.set_footer(text=f"id: {persona.slug} · emotions: {', '.join(persona.labels)}")
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @manage.command(name="import", description="Import a character card (PNG or JSON, V1/V2/V3)")
    @app_commands.describe(
        card="the card file",
        replace="a card already imported: replace that persona with it",
        name="a card already imported: keep both, this one under this id",
    )
    @manager_only
    async def persona_import(
        self,
        interaction: discord.Interaction,
        card: discord.Attachment,
        replace: bool = False,
        name: str | None = None,
    ) -> None:
        limit = self.config.discord.max_attachment_bytes
        if card.size > limit:  # refused before anything is downloaded
            raise BotError(
                f"`{card.filename}` is {card.size:,} bytes; cards up to {limit:,} bytes are accepted."
            )
        if Path(card.filename).suffix.lower() not in CARD_TYPES:
            raise BotError(f"`{card.filename}` is not a card: upload a .png or .json character card.")
        await interaction.response.defer(ephemeral=True, thinking=True)
        raw = await card.read()
        try:
            persona = await self.engine.admin.import_card(
                raw[: limit + 1], card.filename, slug=name, replace=replace
            )
        except AlreadyImported as exc:
            raise BotError(
                f"`{card.filename}` is already imported as `{exc.slug}`: `replace:True` replaces it,"
                " `name:` another id keeps both."
            ) from None
        said = f"Imported **{persona.name}** as `{persona.slug}`."
        said += f" Use `/manage persona {persona.slug}` to play it."
        if (short := shorter_name(persona.name)) is not None:
            said += f" Its name reads like a title (it becomes my nickname): a shorter one, like **{short}**?"
        files: list[discord.File] = []
        if self.engine.admin.face_unknown(persona):
            try:
                report = await self.engine.admin.face_region(persona, detect=True)
            except BotError as exc:  # the card is imported; only its face could not be looked for
                said += f" Its face could not be looked for: {exc}"
            else:
                said, files = _face_answer(report, said)
        await interaction.followup.send(said, ephemeral=True, files=files)

    @manage.command(name="face", description="Show where the persona's face is; find it, or set it by hand")
    @app_commands.describe(
        detect="look for the face and keep it when the match is strong",
        x="left edge of the face box, in portrait pixels",
        y="top edge of the face box",
        width="width of the face box",
        height="height of the face box",
        name="persona id (default: the one playing here)",
    )
    @manager_only
    async def face(
        self,
        interaction: discord.Interaction,
        detect: bool = False,
        x: app_commands.Range[int, 0, 100_000] | None = None,
        y: app_commands.Range[int, 0, 100_000] | None = None,
        width: app_commands.Range[int, 1, 100_000] | None = None,
        height: app_commands.Range[int, 1, 100_000] | None = None,
        name: str | None = None,
    ) -> None:
        given = [v for v in (x, y, width, height) if v is not None]
        if given and len(given) < 4:
            raise BotError("Give all of `x`, `y`, `width` and `height` to set the face box, or none of them.")
        if given and detect:
            raise BotError("Either set the box by hand or `detect` it, not both.")
        await interaction.response.defer(ephemeral=True, thinking=True)  # detection takes a moment
        persona = await self.engine.admin.persona_named(interaction.channel_id or 0, name)
        box = (given[0], given[1], given[2], given[3]) if given else None
        report = await self.engine.admin.face_region(persona, box=box, detect=detect)
        said, files = _face_answer(report, "")
        await interaction.followup.send(said, ephemeral=True, files=files)

    @persona.command(name="export", description="Download a persona as a SillyTavern card PNG")
    async def persona_export(
        self, interaction: discord.Interaction, name: str | None = None, spec: Literal["v2", "v3"] = "v3"
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # within Discord's 3 s
        persona = await self.engine.admin.persona_named(interaction.channel_id or 0, name)
        data = await self.engine.admin.export_card(persona, spec)
        await interaction.followup.send(
            f"**{persona.name}** as a {spec.upper()} card:",
            ephemeral=True,
            file=discord.File(io.BytesIO(data), filename=f"{persona.slug}.png"),
        )

    # -- /channel, /manage dms -------------------------------------------------------------------------

    @channel.command(name="enable", description="Answer in this channel")
    @manager_only
    async def channel_enable(self, interaction: discord.Interaction) -> None:
        settings = await self.engine.admin.configure_channel(interaction.channel_id or 0, enabled=True)
        how = "every message" if settings.mode == "all" else "mentions and replies"
        await interaction.response.send_message(f"Enabled here; answering {how}.", ephemeral=True)

    @channel.command(name="disable", description="Stop answering in this channel")
    @manager_only
    async def channel_disable(self, interaction: discord.Interaction) -> None:
        await self.engine.admin.configure_channel(interaction.channel_id or 0, enabled=False)
        await interaction.response.send_message("Disabled here.", ephemeral=True)

    @channel.command(name="mode", description="Answer every message, or only mentions and replies")
    @manager_only
    async def channel_mode(self, interaction: discord.Interaction, mode: Literal["all", "mention"]) -> None:
        await self.engine.admin.configure_channel(interaction.channel_id or 0, mode=mode)
        await interaction.response.send_message(f"Mode set to **{mode}**.", ephemeral=True)

    @channel.command(name="autonomy", description="Let the persona speak up on its own here, within limits")
    @app_commands.describe(
        on="speak up after quiet spells and now and then when members talk among themselves",
        per_hour="unprompted lines and reactions in any hour, at most (default from config)",
        quiet_minutes="minutes of silence before the persona may add a line",
        chance="chance (0-1) of chiming in when members talk among themselves",
    )
    @manager_only
    async def channel_autonomy(
        self,
        interaction: discord.Interaction,
        on: bool,
        per_hour: app_commands.Range[int, 0, 60] | None = None,
        quiet_minutes: app_commands.Range[float, 1, 1440] | None = None,
        chance: app_commands.Range[float, 0, 1] | None = None,
    ) -> None:
        settings = await self.engine.admin.configure_autonomy(
            interaction.channel_id or 0, on, max_per_hour=per_hour, quiet_minutes=quiet_minutes, chance=chance
        )
        if not settings.enabled:
            await interaction.response.send_message(
                "The persona speaks here only when spoken to.", ephemeral=True
            )
            return
        await interaction.response.send_message(
            f"The persona may speak up here on its own: after {spell(settings.quiet_seconds)} of quiet,"
            f" or by a {settings.chance:.0%} chance when members talk among themselves; at most"
            f" {settings.max_per_hour} times an hour, and never once members have been silent for"
            f" {spell(settings.member_seconds)}.",
            ephemeral=True,
        )

    @manage.command(name="dms", description="Whether this server's members may roleplay with the bot in DMs")
    @manager_only
    async def manage_dms(self, interaction: discord.Interaction, allow: bool) -> None:
        await self.engine.admin.allow_direct_messages(interaction.guild_id or 0, allow)
        if not self.engine.admin.direct_messages_on():
            done = "Noted; but the bot's owner has direct messages off ([discord] direct_messages)."
        elif allow:
            done = "Members of this server may now roleplay with the bot in direct messages."
        else:
            done = "Members of this server may no longer roleplay with the bot in direct messages."
        await interaction.response.send_message(done, ephemeral=True)

    # -- /expression, /status ---------------------------------------------------------------------------

    @expression.command(name="show", description="Show the persona's face for an emotion")
    async def expression_show(self, interaction: discord.Interaction, label: str | None = None) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # a face may be read from disk
        channel_id = interaction.channel_id or 0
        persona = await self.engine.admin.persona_for(channel_id)
        settings = await self.engine.admin.channel_settings(channel_id)
        label = label or settings.last_emotion or "neutral"
        if label not in persona.labels:
            raise BotError(f"`{label}` is not one of {persona.name}'s emotions: {', '.join(persona.labels)}")
        image = await self.engine.admin.face(persona, label)
        if image.path is None:
            raise BotError(f"{persona.name} has no portrait.")
        await interaction.followup.send(
            f"{persona.name}: *{label}*",
            file=discord.File(image.path, filename="expression.png"),
            ephemeral=True,
        )

    @manage.command(name="render", description="Pre-render every emotion of this channel's persona")
    @manager_only
    async def expression_render(self, interaction: discord.Interaction) -> None:
        from bot.expressions import contact_sheet

        persona: Persona = await self.engine.admin.persona_for(interaction.channel_id or 0)
        await interaction.response.defer(ephemeral=True, thinking=True)
        started = last_edit = time.monotonic()

        def token_alive() -> bool:
            return time.monotonic() - started < self.token_life

        async def progress(done: int, total: int, label: str) -> None:
            nonlocal last_edit
            if done < total and token_alive() and time.monotonic() - last_edit > PROGRESS_EDIT_EVERY:
                await interaction.edit_original_response(content=f"Rendering {label}… ({done}/{total})")
                last_edit = time.monotonic()

        faces = await self.engine.admin.render_faces(persona, on_progress=progress)
        sheet = await asyncio.to_thread(contact_sheet, faces)
        buffer = io.BytesIO()
        await asyncio.to_thread(sheet.save, buffer, "PNG")
        buffer.seek(0)
        done = f"Rendered {len(faces)} faces of {persona.name}."
        sheet_file = discord.File(buffer, filename="contact-sheet.png")
        if token_alive():
            await interaction.edit_original_response(content=done, attachments=[sheet_file])
        elif isinstance(interaction.channel, discord.abc.Messageable):
            # Past the interaction token's life the answer can no longer be edited: post it instead.
            await interaction.channel.send(f"{interaction.user.mention}: {done}", file=sheet_file)

    # -- /manage memory: correct the summary, pin facts --------------------------------------------------

    @manage_memory.command(name="edit", description="Replace the summary (kept as written; empty: redone)")
    @app_commands.describe(text="the new summary", persona="whose summary in a cast (default: the lead)")
    @manager_only
    async def memory_edit(
        self, interaction: discord.Interaction, text: str, persona: str | None = None
    ) -> None:
        whose = await self.engine.admin.edit_summary(interaction.channel_id or 0, text, persona)
        done = "kept as you wrote it" if text.strip() else "cleared; the bot will summarise again"
        await interaction.response.send_message(f"{whose.name}'s summary here is {done}.", ephemeral=True)

    @manage_memory.command(name="pin", description="A fact always in the prompt of this channel")
    @app_commands.describe(text="the fact, e.g. 'Sam is the captain of the Aurora'")
    @manager_only
    async def memory_pin(self, interaction: discord.Interaction, text: str) -> None:
        pins = await self.engine.admin.pin(interaction.channel_id or 0, text)
        await interaction.response.send_message(describe_pins(pins)[:2000], ephemeral=True)

    @manage_memory.command(name="unpin", description="Remove a pinned fact (its number in /memory show)")
    @manager_only
    async def memory_unpin(
        self, interaction: discord.Interaction, number: app_commands.Range[int, 1, 200]
    ) -> None:
        pins = await self.engine.admin.unpin(interaction.channel_id or 0, number)
        await interaction.response.send_message(describe_pins(pins)[:2000], ephemeral=True)

    @manage_memory.command(name="members", description="Whether the bot keeps notes on members here")
    @manager_only
    async def memory_members(self, interaction: discord.Interaction, keep: bool) -> None:
        server = interaction.guild_id or 0
        await self.engine.admin.keep_member_notes(server, keep)
        done = "keeps notes on what members tell about themselves" if keep else "keeps no notes on members"
        await interaction.response.send_message(f"In this server the bot now {done}.", ephemeral=True)

    @app_commands.command(name="status", description="Model, queues and cache")
    async def status(self, interaction: discord.Interaction) -> None:
        status = await self.engine.admin.status(interaction.channel_id or 0)
        lines = [
            f"**Model**: `{status.model}` (context {status.context} tokens)",
            f"**Queue**: {status.pending_replies} replies, {status.pending_renders} renders",
            f"**Persona here**: {status.persona.name} (`{status.persona.slug}`)"
            + (f"; cast: {', '.join(status.cast[1:])}" if len(status.cast) > 1 else ""),
            f"**Emotion judge**: {status.judge}",
            f"**Expression cache**: {status.cached_faces} faces",
            f"**Messages stored here**: {status.messages}",
        ]
        await interaction.response.send_message("\n".join(lines), ephemeral=True)


async def setup(bot: RoleplayBot) -> None:
    await bot.add_cog(Admin(bot))
