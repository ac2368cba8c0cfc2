"""What writes, judges and draws for the core: the language model, the prompt builder over its tokenizer,
the emotion judge, the face provider and the memory keeper
(whose summaries the model writes). One Models object is shared by every part of the engine, so a
model swapped in (tests script replies, benchmarks compare judges) reaches all of them at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bot.core.prompt import PromptBuilder
from bot.emotion import EmotionJudge
from bot.expressions.service import ExpressionImage
from bot.llm import LLMBackend
from bot.memory import Memory
from bot.personas import Persona, PersonaLibrary


class ExpressionProvider(Protocol):
    async def image_for(self, persona: Persona, label: str) -> ExpressionImage: ...

    def kind_of_faces(self, persona: Persona) -> str: ...


class PortraitOnly:
    """Expressions switched off: every emotion shows the plain portrait."""

    def __init__(self, personas: PersonaLibrary) -> None:
        self.personas = personas

    async def image_for(self, persona: Persona, label: str) -> ExpressionImage:
        return ExpressionImage(self.personas.existing_portrait(persona), label, box=persona.face_box)

    def kind_of_faces(self, persona: Persona) -> str:
        return "portrait only" if self.personas.existing_portrait(persona) else "no portrait"


@dataclass
class Models:
    llm: LLMBackend
    prompts: PromptBuilder
    judge: EmotionJudge
    expressions: ExpressionProvider
    memory: Memory
