"""Language model backends behind one protocol: `llamacpp` (a GGUF in this process, one worker thread)
and `openai` (any OpenAI-compatible server: llama-server, Ollama, KoboldCpp, LM Studio, TabbyAPI, vLLM).
`load_backend` picks one from `[model] backend`."""

from __future__ import annotations

from pathlib import Path

from bot.config import ModelConfig
from bot.llm.base import Generation, GenerationStats, LLMBackend
from bot.llm.llamacpp import (
    CONTENT_CLOSE,
    CONTENT_OPEN,
    TURN_MARKER,
    LlamaBackend,
    answer_end_tokens,
    bundled_model_path,
    mark_content,
    sampling,
    unmarked,
)

__all__ = [
    "CONTENT_CLOSE",
    "CONTENT_OPEN",
    "TURN_MARKER",
    "Generation",
    "GenerationStats",
    "LLMBackend",
    "LlamaBackend",
    "answer_end_tokens",
    "bundled_model_path",
    "load_backend",
    "mark_content",
    "sampling",
    "unmarked",
]


async def load_backend(config: ModelConfig, root: Path = Path(".")) -> LLMBackend:
    """The configured backend, loaded (the embedded model) or connected and probed (a server)."""
    if config.backend == "openai":
        from bot.llm.openai import OpenAIBackend

        return await OpenAIBackend.connect(config)
    return await LlamaBackend.load(config, root)
