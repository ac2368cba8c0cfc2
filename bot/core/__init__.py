"""The core: one turn's pipeline (engine), its parts (scene, compose, prompt, cast, speakers), a sent
reply's controls (replies), the channel and persona administration (admin), and the assembly of it all
from a config (app). Front-ends import what they use from here."""

from __future__ import annotations

from bot.core.admin import ChannelSettings, EngineStatus
from bot.core.autonomy import Autonomy, AutonomySettings, spell
from bot.core.compose import TurnResult
from bot.core.engine import Engine, Overheard
from bot.core.replies import ReplyState

__all__ = [
    "Autonomy",
    "AutonomySettings",
    "ChannelSettings",
    "Engine",
    "EngineStatus",
    "Overheard",
    "ReplyState",
    "TurnResult",
    "spell",
]
