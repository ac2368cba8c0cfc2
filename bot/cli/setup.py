"""`./run setup`: read the GPU, propose a language model and an inpainting model that fit on it together,
download them (with progress, resuming what an earlier run left), verify them, and write `[model] path`,
`n_gpu_layers` and `[expressions] model` into config.toml (only those lines change). Where config.toml
already sends faces to an image server (`[expressions] backend`), that server's checkpoint is the image
model: only the language model is fetched, and `[expressions] model` is left as it is. Without an NVIDIA
GPU it proposes a small language model for the CPU (faces are drawn there) and sets `n_gpu_layers = 0`."""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import re
import sys
import tomllib
from pathlib import Path

from bot.cli.catalog import ModelChoice, pick, pick_cpu, read_gpu
from bot.cli.config_lines import set_values
from bot.errors import BotError
from bot.files import atomic_write
from bot.terminal.safe import echo, safe_text

SHA256 = re.compile(r"^[0-9a-f]{64}$")
MODELS_DIR = "models"


def setup_command(config_path: Path, args: argparse.Namespace) -> int:
    gpu = read_gpu()
    server = _image_server(config_path)
    if gpu is None:
        cores = os.cpu_count() or 1
        cpu = pick_cpu(cores)
        echo(f"No NVIDIA GPU found (nvidia-smi is missing or reports none): a model for {cores} CPU cores.")
        echo(f"  expect {cpu.speed}; faces are drawn (inpainting on a CPU takes minutes a face)")
        wanted, n_gpu_layers = [("language model", cpu.llm)], 0
    else:
        tier = pick(gpu)
        echo(f"GPU: {gpu.name}, {gpu.vram_mb / 1024:.1f} GB")
        if tier is None:
            echo("That card has too little memory for a language model and an inpainting model together.")
            _say_without()
            return 0
        # The language model is picked for the card either way: a server's checkpoint takes the image share.
        wanted = [("language model", tier.llm)] + ([] if server else [("inpainting model", tier.image)])
        n_gpu_layers = tier.n_gpu_layers
    folder = config_path.parent / (args.models or MODELS_DIR)
    total = sum(choice.size_gb for _, choice in wanted)
    echo(f"Proposed, about {total:.1f} GB into {folder}:")
    for role, choice in wanted:
        echo(f"  {role}: {choice.title} ({choice.size_gb:.1f} GB, licence: {choice.licence}), {choice.repo}")
    if server and gpu is not None:
        echo(f"  inpainting: your {server} server (config.toml's [expressions] backend), nothing to download")
    if not args.yes:
        if not sys.stdin.isatty():
            echo("Run `./run setup --yes` to download them and set them in config.toml.")
            return 0
        if input("Download them and set them in config.toml? [y/N] ").strip().lower() not in ("y", "yes"):
            echo("Nothing downloaded; config.toml is unchanged.")
            return 0
    paths = {role: fetch(choice, folder) for role, choice in wanted}
    llm, image = paths["language model"], paths.get("inpainting model")
    write_config(config_path, llm, image, n_gpu_layers)
    faces = f"; [expressions] model = {_shown(image, config_path)}" if image is not None else ""
    echo(f"config.toml: [model] path = {_shown(llm, config_path)}, n_gpu_layers = {n_gpu_layers}{faces}")
    return 0


def _image_server(config_path: Path) -> str:
    """The image server config.toml sends faces to ("ComfyUI", "AUTOMATIC1111"), or "" for diffusers
    (also for a file that cannot be read: setup then proposes both models, as for a new config)."""
    try:
        backend = tomllib.loads(config_path.read_text("utf-8")).get("expressions", {}).get("backend")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
        return ""
    return {"comfyui": "ComfyUI", "a1111": "AUTOMATIC1111"}.get(str(backend), "")


def _say_without() -> None:
    echo(
        "The bundled model and the drawn faces need no GPU: `./run chat` works as it is, and"
        " `./run setup` on a machine without an NVIDIA card proposes a model for its CPU. To use a model"
        " of your own, set [model] path (a GGUF) in config.toml."
    )


def _shown(path: Path, config_path: Path) -> str:
    try:
        return str(path.relative_to(config_path.parent))
    except ValueError:
        return str(path)


def fetch(choice: ModelChoice, folder: Path) -> Path:
    """Download a model (resuming a partial download) and check every file against the hub's size and
    SHA-256; returns the GGUF file or the model's folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    target = folder / choice.repo.replace("/", "--")
    echo(f"downloading {choice.title} from {choice.repo}")
    try:
        if choice.folder:
            snapshot_download(choice.repo, local_dir=target, allow_patterns=list(choice.files))
        else:
            snapshot_download(choice.repo, local_dir=target, allow_patterns=[choice.files[0]])
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        why = (
            "it is gated: accept its licence on its page and log in (hf auth login)"
            if status in (401, 403)
            else str(exc).splitlines()[0]
        )
        raise BotError(f"{choice.repo}: download refused: {why}") from None
    except _transfer_errors() as exc:
        raise _stopped(choice, exc) from None
    try:
        verify(choice, target)
    except _transfer_errors() as exc:
        raise _stopped(choice, exc) from None
    return target if choice.folder else target / choice.files[0]


def _transfer_errors() -> tuple[type[Exception], ...]:
    """What a download can fail with: the line dropping (at the same byte every try, too), a protocol
    error, a malformed answer. The hub's client is built on httpx (httpx2 in its newer releases), whose
    errors are not OSErrors; requests' are."""
    errors: list[type[Exception]] = [OSError, ValueError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _stopped(choice: ModelChoice, exc: Exception) -> BotError:
    text = safe_text(str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return BotError(f"{choice.repo}: download stopped ({text}); run `./run setup` again to resume it")


def verify(choice: ModelChoice, target: Path) -> None:
    """Every downloaded file has the size and (for large files) the SHA-256 the hub gives for it; a file
    that does not is removed, so that the next run downloads it again."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    files = sorted(
        p for p in target.rglob("*") if p.is_file() and ".cache" not in p.relative_to(target).parts
    )
    if not files:
        raise BotError(f"{choice.repo}: nothing was downloaded (do its files exist on the hub?)")
    for path in files:
        name = path.relative_to(target).as_posix()
        meta = get_hf_file_metadata(hf_hub_url(choice.repo, name))
        bad = meta.size is not None and path.stat().st_size != meta.size
        if not bad and meta.etag and SHA256.match(meta.etag):
            bad = _sha256(path) != meta.etag
        if bad:
            path.unlink()
            raise BotError(
                f"{choice.repo}: {name} is not what the hub holds (size or SHA-256); removed it:"
                " run `./run setup` again to download it afresh"
            )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_config(config_path: Path, llm: Path, image: Path | None, n_gpu_layers: int) -> None:
    text = config_path.read_text("utf-8") if config_path.is_file() else ""
    values: dict[tuple[str, str], object] = {
        ("model", "path"): _shown(llm, config_path),
        ("model", "n_gpu_layers"): n_gpu_layers,
    }
    if image is not None:
        values[("expressions", "model")] = _shown(image, config_path)
    edited = set_values(text, values)
    atomic_write(config_path, edited.encode("utf-8"))
