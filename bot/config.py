"""config.toml -> typed, validated settings.

Every problem is reported as one line naming the file and the dotted key, so a server admin can fix it
without reading code. The Discord token never lives in the file: it comes from DISCORD_TOKEN.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bot.config_chat import AutonomyConfig, CastConfig, DiscordConfig, chat_rules
from bot.errors import ConfigError

DEFAULT_LABELS = (
    "neutral",
    "joy",
    "amusement",
    "sadness",
    "anger",
    "fear",
    "surprise",
    "love",
    "embarrassment",
    "confusion",
)


MAX_PARALLEL = 16  # reply slots of the embedded model
MAX_CONTEXT = 1 << 20  # tokens; every model's own limit is checked against its file at load
CPUS = os.cpu_count() or 1
MAX_IMAGE_REQUESTS = 16  # renders at once on an image server: more only queue on its GPU
MAX_TIMEOUT = 86_400.0  # seconds: a day; past that a "limit" is no limit, and timers overflow
# Where each image server listens when started with its defaults.
DEFAULT_IMAGE_SERVERS = {"comfyui": "http://127.0.0.1:8188", "a1111": "http://127.0.0.1:7860"}


def decode_threads(config: ModelConfig) -> int:
    """Threads generating tokens. One less than the CPU count by default: llama.cpp's decode threads wait
    for each other at every layer, so when anything else takes one core (a browser, a game, a render),
    all-core decoding can stall (measured: 0.27x of its quiet speed beside a one-core busy loop), while
    one core fewer held its speed (0.9-1.0x) in every run and decoded at least as fast when quiet."""
    return config.n_threads or max(1, CPUS - 1)


def prompt_threads(config: ModelConfig) -> int:
    """Threads reading the prompt: all CPUs by default (prompt reading is one large batch per turn)."""
    return config.n_threads_batch or CPUS


@dataclass(frozen=True)
class ModelConfig:
    backend: Literal["llamacpp", "openai"] = "llamacpp"  # a GGUF in this process, or a model server
    path: str = ""  # llamacpp: the GGUF; empty: the bundled SmolLM2-135M-Instruct
    base_url: str = ""  # openai: the server's API root, e.g. http://127.0.0.1:8080/v1
    model: str = ""  # openai: the model name the server knows; empty: the first it lists
    api_key_env: str = "OPENAI_API_KEY"  # openai: the environment variable holding the key, if any
    max_concurrent: int = 1  # openai: requests at once (match the server's parallel slots)
    n_ctx: int = 4096
    # llamacpp: replies written at once, each channel's in its own slot of n_ctx tokens of cache (decoded
    # together: several busy channels share the cores instead of queueing). Memory grows with it.
    parallel: int = 4
    n_gpu_layers: int = 0
    n_threads: int = 0  # decode threads; 0: one less than the CPU count (at least 1)
    n_threads_batch: int = 0  # prompt-reading threads; 0: all CPUs
    n_batch: int = 512
    max_reply_tokens: int = 200
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    # Anti-repetition as roleplay users run it. DRY ("don't repeat yourself") penalises a token that would
    # continue a sequence already in the conversation (the prompt's last `dry_range` tokens and the reply
    # so far) past `dry_allowed_length` tokens, growing by `dry_base` per token; 0 turns it off. XTC
    # ("exclude top choices") sometimes drops the likeliest tokens for variety; 0 turns it off. In this
    # process both are the bot's own; llama.cpp's server is sent them (others set them themselves).
    dry_multiplier: float = 0.8
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_range: int = 2048
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    seed: int = -1
    timeout_seconds: float = 120.0
    queue_size: int = 8
    state_cache_mb: int = 512
    # Thinking models (Qwen3, DeepSeek-R1 distills, QwQ, GLM): let them think before roleplay replies.
    # Off asks the template not to (`enable_thinking`); either way the thinking is never shown or kept.
    thinking: bool = False


@dataclass(frozen=True)
class EmotionConfig:
    judge: Literal["auto", "classifier", "llm", "both"] = "auto"
    # The text judge reads meaning with the shipped sentence encoder where it is installed and loads
    # (bot/emotion/encoder_judge.py); off, or until it has loaded, the TF-IDF classifier reads keywords.
    encoder: bool = True
    min_lift: float = 2.0  # multiples of chance (1 / number of labels)
    switch_lift: float = 0.5


@dataclass(frozen=True)
class PromptConfig:
    lorebook_token_budget: int = 512
    lorebook_scan_depth: int = 4
    window_slack: float = 0.25
    # {{user}} in the persona's permanent text once several people talk in a channel; with one person it
    # is their name. Stable whoever spoke last, so every warm turn reuses the evaluated prompt.
    audience_name: str = "everyone"


@dataclass(frozen=True)
class MemoryConfig:
    enabled: bool = True
    # What left the prompt window is summarised by the model in the background, per channel and persona.
    summaries: bool = True
    summary_tokens: int = 256  # the summary's room in the prompt
    # Earlier lines that match the new message by words (FTS5) and by meaning (each line's embedding).
    recall_lines: int = 6
    recall_tokens: int = 256
    meaning: bool = True
    # Notes on what each member told about themselves, per server, put in the prompt when they speak.
    members: bool = True
    member_tokens: int = 96
    pinned_tokens: int = 160  # facts an admin pinned, always in the prompt
    max_pins: int = 20  # per channel


@dataclass(frozen=True)
class StoreConfig:
    path: str = "data/bot.sqlite3"


@dataclass(frozen=True)
class PersonaConfig:
    dir: str = "persona"
    avatars_dir: str = "avatars"
    default: str = "mira"
    max_card_bytes: int = 20_000_000
    max_portrait_pixels: int = 16_777_216


@dataclass(frozen=True)
class ExpressionsConfig:
    enabled: bool = True
    # Where faces are inpainted: diffusers in this process, or the user's own ComfyUI or AUTOMATIC1111 /
    # Forge server (which keeps its checkpoint loaded, so the bot does not hold a second copy in VRAM).
    backend: Literal["diffusers", "comfyui", "a1111"] = "diffusers"
    base_url: str = ""  # comfyui / a1111: the server's address; empty: its default on this machine
    auth_env: str = "IMAGE_SERVER_AUTH"  # the variable holding user:password (basic auth) or a key
    max_concurrent: int = 1  # comfyui / a1111: renders sent at once
    drawn: bool = True  # faces drawn over the portrait (blush, tears, marks) where no sprite or render is
    terminal_face_width: int = 32  # the face in `chat`, in terminal columns (its height follows its shape)
    # A face narrower than this share of the portrait's width is shown as a bust framed on it, in which
    # the face spans `framing_face` of the width (bot/expressions/framing.py); 0: always the whole picture.
    framing_min_face: float = 0.25
    framing_face: float = 0.4
    model: str = ""  # hub id, diffusers folder or .safetensors file; empty: portraits only
    model_config: str = ""  # a single file's base model configuration (folder or hub id); empty: inferred
    lora: str = ""
    lora_scale: float = 1.0
    scheduler: str = ""  # empty: the model's own
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    cpu_offload: bool = False
    resolution: int = 0  # the size the face crop is inpainted at; 0: the model's own
    steps: int = 25
    strength: float = 0.75
    guidance: float = 7.0
    seed: int = 0
    mask_dilate: int = 8
    mask_blur: int = 12
    crop_padding: int = 32
    negative_prompt: str = "lowres, bad anatomy, extra eyes, deformed face, blurry, text, watermark"
    cache_dir: str = "avatars/cache"
    timeout_seconds: float = 300.0
    local_files_only: bool = False
    cpu_threads: int = 0  # torch threads for CPU renders; 0: the cores the LLM's decode threads leave

    @property
    def on_server(self) -> bool:
        return self.backend != "diffusers"

    @property
    def renders(self) -> bool:
        """Whether faces are inpainted at all: a model for diffusers, or an image server (which has its
        own checkpoint loaded when `model` names none)."""
        return bool(self.model) or self.on_server

    @property
    def server_url(self) -> str:
        default = DEFAULT_IMAGE_SERVERS.get(self.backend, "")
        return (self.base_url or default).rstrip("/")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    emotion: EmotionConfig = field(default_factory=EmotionConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    persona: PersonaConfig = field(default_factory=PersonaConfig)
    expressions: ExpressionsConfig = field(default_factory=ExpressionsConfig)
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    cast: CastConfig = field(default_factory=CastConfig)
    autonomy: AutonomyConfig = field(default_factory=AutonomyConfig)
    root: Path = Path(".")

    def resolve(self, relative: str) -> Path:
        """A path from the config, relative to the folder config.toml lives in."""
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self.root / path


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _check_value(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(hint):
            try:
                return _check_value(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} has the wrong type: {type(value).__name__}")
    # bool is an int subclass in Python; in a config file `true` for a number is a mistake.
    ok = (
        isinstance(value, hint) and not (hint is not bool and isinstance(value, bool))
        if hint is not float
        else isinstance(value, int | float) and not isinstance(value, bool)
    )
    if not ok:
        raise ConfigError(
            f"{where} must be {_TYPE_NAMES.get(hint, hint.__name__)}, got {type(value).__name__} {value!r}"
        )
    if hint is float and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    if hint in (int, float) and value < 0 and not where.endswith(".seed'"):  # -1 seed = random
        raise ConfigError(f"{where} must not be negative, got {value!r}")
    return float(value) if hint is float else value


def _build(cls: type, table: dict[str, Any], source: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name != "root"}
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{source}: key '{prefix}{key}'"
        if key not in known:
            raise ConfigError(f"{where} is not a known setting (known: {', '.join(sorted(known))})")
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{where} must be a table [{prefix}{key}]")
            values[key] = _build(hint, value, source, f"{prefix}{key}.")
        else:
            values[key] = _check_value(value, hint, where)
    return cls(**values)


def _web_address(url: str) -> bool:
    """An http(s) address a request can go to: a host, a valid port, no credentials, no query."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises on a port that is not a number in range
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and port != 0
        and "@" not in parts.netloc
        and not parts.query
        and not parts.fragment
        and not any(c.isspace() or ord(c) < 32 for c in url)
    )


def _validate(config: Config, source: str) -> None:
    rules = [
        (config.model.n_ctx >= 512, "model.n_ctx", "must be at least 512"),
        (config.model.n_ctx <= MAX_CONTEXT, "model.n_ctx", f"must be at most {MAX_CONTEXT}"),
        (config.model.n_batch >= 1, "model.n_batch", "must be at least 1"),
        (
            config.model.n_threads <= CPUS,
            "model.n_threads",
            f"must be at most the {CPUS} CPU threads of this machine (0 = automatic)",
        ),
        (
            config.model.n_threads_batch <= CPUS,
            "model.n_threads_batch",
            f"must be at most the {CPUS} CPU threads of this machine (0 = all)",
        ),
        (config.expressions.cpu_threads <= CPUS, "expressions.cpu_threads", f"must be at most {CPUS}"),
        (config.model.state_cache_mb <= 1 << 20, "model.state_cache_mb", "must be at most 1048576"),
        (
            config.model.max_reply_tokens < config.model.n_ctx // 2,
            "model.max_reply_tokens",
            "must be under half of n_ctx",
        ),
        (config.model.queue_size >= 1, "model.queue_size", "must be at least 1"),
        (1 <= config.model.max_concurrent <= 64, "model.max_concurrent", "must be between 1 and 64"),
        (1 <= config.model.parallel <= MAX_PARALLEL, "model.parallel", f"must be 1 to {MAX_PARALLEL}"),
        (
            config.model.backend != "openai" or _web_address(config.model.base_url),
            "model.base_url",
            "must be the server's http:// or https:// address (host and port, no user:password) when"
            ' backend = "openai"',
        ),
        (
            0 < config.model.timeout_seconds <= MAX_TIMEOUT,
            "model.timeout_seconds",
            f"must be positive and at most {MAX_TIMEOUT:g} (a day)",
        ),
        (config.model.dry_multiplier <= 5.0, "model.dry_multiplier", "must be at most 5 (0 = off)"),
        (1.0 <= config.model.dry_base <= 4.0, "model.dry_base", "must be between 1 and 4"),
        (1 <= config.model.dry_allowed_length <= 64, "model.dry_allowed_length", "must be between 1 and 64"),
        (config.model.dry_range <= MAX_CONTEXT, "model.dry_range", f"must be at most {MAX_CONTEXT}"),
        (config.model.xtc_probability <= 1.0, "model.xtc_probability", "must be between 0 and 1 (0 = off)"),
        (config.model.xtc_threshold <= 0.5, "model.xtc_threshold", "must be between 0 and 0.5"),
        (config.emotion.min_lift <= 10.0, "emotion.min_lift", "must be at most 10 (times chance)"),
        (config.emotion.switch_lift <= 10.0, "emotion.switch_lift", "must be at most 10 (times chance)"),
        (0.0 <= config.prompt.window_slack < 0.9, "prompt.window_slack", "must be between 0 and 0.9"),
        # Each memory part also gets at most 1/8 of the prompt budget, whatever is set here.
        (config.memory.summary_tokens <= 8192, "memory.summary_tokens", "must be at most 8192"),
        (config.memory.recall_tokens <= 8192, "memory.recall_tokens", "must be at most 8192"),
        (config.memory.pinned_tokens <= 8192, "memory.pinned_tokens", "must be at most 8192"),
        (config.memory.member_tokens <= 8192, "memory.member_tokens", "must be at most 8192"),
        (config.memory.recall_lines <= 32, "memory.recall_lines", "must be at most 32"),
        (1 <= config.memory.max_pins <= 200, "memory.max_pins", "must be between 1 and 200"),
        (0.0 < config.expressions.strength <= 1.0, "expressions.strength", "must be in (0, 1]"),
        (config.expressions.framing_min_face <= 1.0, "expressions.framing_min_face", "must be 0 to 1"),
        (
            0.1 <= config.expressions.framing_face <= 0.9,
            "expressions.framing_face",
            "must be between 0.1 and 0.9",
        ),
        (
            8 <= config.expressions.terminal_face_width <= 160,
            "expressions.terminal_face_width",
            "must be between 8 and 160 columns",
        ),
        (config.expressions.steps >= 1, "expressions.steps", "must be at least 1"),
        (
            not config.expressions.on_server or _web_address(config.expressions.server_url),
            "expressions.base_url",
            "must be the image server's http:// or https:// address (host and port; credentials go in"
            " the variable auth_env names)",
        ),
        (
            1 <= config.expressions.max_concurrent <= MAX_IMAGE_REQUESTS,
            "expressions.max_concurrent",
            f"must be between 1 and {MAX_IMAGE_REQUESTS}",
        ),
        (
            0 < config.expressions.timeout_seconds <= MAX_TIMEOUT,
            "expressions.timeout_seconds",
            f"must be positive and at most {MAX_TIMEOUT:g} (a day)",
        ),
        (
            config.expressions.resolution % 8 == 0 and 0 <= config.expressions.resolution <= 4096,
            "expressions.resolution",
            "must be 0 (the model's own) or a multiple of 8 up to 4096",
        ),
        *chat_rules(config.discord, config.cast, config.autonomy),
    ]
    for ok, key, why in rules:
        if not ok:
            raise ConfigError(f"{source}: key '{key}' {why}")


def load_config(path: str | Path = "config.toml") -> Config:
    """Read and validate a config file. Raises ConfigError naming the file and the key at fault."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, or a pipe that would block the start for good
        raise ConfigError(f"{path}: not a regular file (set --config to the settings file)")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (copy config.toml from the repository)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        table = tomllib.loads(raw.decode("utf-8-sig"))  # editors on Windows may save a BOM first
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if "token" in table or "token" in table.get("discord", {}):
        raise ConfigError(f"{path}: key 'discord.token' is not read from files; set DISCORD_TOKEN instead")
    model_table = table.get("model")
    if isinstance(model_table, dict) and "api_key" in model_table:
        raise ConfigError(
            f"{path}: key 'model.api_key' is not read from files; put the key in the environment variable"
            " named by model.api_key_env (default OPENAI_API_KEY)"
        )
    config = _build(Config, table, str(path), "")
    config = dataclasses.replace(config, root=path.resolve().parent)
    _validate(config, str(path))
    return config


def discord_token() -> str | None:
    """The bot token, only ever from the environment."""
    token = os.environ.get("DISCORD_TOKEN", "").strip()
    return token or None
