"""A yes/no question under an ephemeral answer (/reset, /forget-me) that only the member who ran the
command may answer; anyone else pressing it is told so."""

from __future__ import annotations

import discord


class Confirm(discord.ui.View):
    """A yes/no question that only the member who ran the command may answer."""

    def __init__(self, owner: int, command: str, who: str, yes: str, no: str) -> None:
        super().__init__(timeout=60)
        self.owner = owner
        self.refusal = f"Only the {who} who ran /{command} can answer this."
        self.confirmed: bool | None = None
        self.yes.label, self.no.label = yes, no

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id == self.owner:
            return True
        await interaction.response.send_message(self.refusal, ephemeral=True)
        return False

    @discord.ui.button(style=discord.ButtonStyle.danger)
    async def yes(self, interaction: discord.Interaction, _: discord.ui.Button[Confirm]) -> None:
        self.confirmed = True
        await interaction.response.defer()
        self.stop()

    @discord.ui.button(style=discord.ButtonStyle.secondary)
    async def no(self, interaction: discord.Interaction, _: discord.ui.Button[Confirm]) -> None:
        self.confirmed = False
        await interaction.response.defer()
        self.stop()
