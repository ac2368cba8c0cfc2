"""`./run setup` against a local hub (HF_ENDPOINT) and a stand-in nvidia-smi: it reads the card, proposes
the pair that fits it, downloads both (a download cut halfway is resumed; a second run fetches nothing
again), checks them against the hub's SHA-256, and sets only `[model] path`, `n_gpu_layers` and
`[expressions] model` in config.toml; the bot then loads both. Without a GPU nothing is downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bot.cli.catalog import (
    LLAMA_3B,
    LLAMA_8B,
    NEMO_12B,
    NEMO_12B_Q6,
    QWEN_1_5B,
    SD15_INPAINT,
    SDXL_INPAINT,
    Gpu,
    pick,
    pick_cpu,
)
from bot.cli.config_lines import set_values
from bot.errors import ConfigError

from .support.configs import REPO, shipped
from .support.hub import local_hub
from .support.tiny_diffusion import TINY_TEXT, TINY_UNET, TINY_VAE, _build

GGUF = "Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"


def bundled_gguf() -> Path:
    from bot.llm.llamacpp import bundled_model_path

    return bundled_model_path()


def fake_nvidia_smi(folder: Path, output: str, status: int = 0) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' '{output}'\nexit {status}\n")
    script.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def run_setup(folder: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", "--config", str(folder / "config.toml"), "setup", *extra],
        cwd=REPO,
        env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HOME": str(folder / "hf-home"), **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def fp16_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline saved as half-precision variant files, as the hub's fp16 folders hold them."""
    folder = tmp_path_factory.mktemp("hub") / "sd15-inpaint"
    pipe = _build(None, TINY_UNET, TINY_VAE, TINY_TEXT, 0)
    pipe.save_pretrained(folder, variant="fp16")
    return folder


@pytest.mark.parametrize(
    ("vram", "llm", "image"),
    [
        (24_576, NEMO_12B_Q6, SDXL_INPAINT),
        (16_384, NEMO_12B, SD15_INPAINT),
        (12_288, LLAMA_8B, SD15_INPAINT),
        (8_192, LLAMA_3B, SD15_INPAINT),
    ],
)
def test_each_card_gets_a_pair_that_fits_it(vram: int, llm, image) -> None:
    tier = pick(Gpu("card", vram))
    assert tier is not None and (tier.llm, tier.image) == (llm, image)
    assert (llm.size_gb + image.size_gb) < vram / 1024 * 0.8  # room left for the context and activations
    assert pick(Gpu("card", 6_144)) is None


def test_only_the_asked_lines_change() -> None:
    text = (
        '# my settings\n[model]\n# which model\npath = ""  # empty: bundled\nn_ctx = 8192\n\n'
        "[expressions]\nenabled = true\n\n[discord]\nstream_edits = true\n"
    )
    edited = set_values(
        text,
        {
            ("model", "path"): "models/x.gguf",
            ("model", "n_gpu_layers"): 999,
            ("expressions", "model"): "models/sd",
        },
    )
    assert edited.splitlines() == [
        "# my settings",
        "[model]",
        "# which model",
        'path = "models/x.gguf"',
        "n_ctx = 8192",
        "n_gpu_layers = 999",
        "",
        "[expressions]",
        "enabled = true",
        'model = "models/sd"',
        "",
        "[discord]",
        "stream_edits = true",
    ]
    assert (
        set_values("", {("model", "path"): 'C:\\models\\"q".gguf'})
        == '\n[model]\npath = "C:\\\\models\\\\\\"q\\".gguf"\n'
    )
    with pytest.raises(ConfigError, match=r"could not set \[model\] path"):
        set_values('[model]\npath = """\nx\n"""\n', {("model", "path"): "y"})


@pytest.mark.slow
def test_setup_picks_downloads_verifies_and_configures_both_models(
    tmp_path: Path, fp16_pipeline: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text((shipped() / "config.toml").read_text())  # the shipped file, comments and all
    before = config.read_text()
    env = fake_nvidia_smi(tmp_path / "bin", "NVIDIA GeForce RTX 3060, 12288")
    with local_hub() as hub:
        hub.add(LLAMA_8B.repo, {GGUF: bundled_gguf()})
        hub.add_folder(SD15_INPAINT.repo, fp16_pipeline)
        hub.cut_once.add(f"{LLAMA_8B.repo}/{GGUF}")  # the line drops halfway through the big file
        env["HF_ENDPOINT"] = hub.url

        asked = run_setup(tmp_path, env)  # not a terminal, no --yes: it only proposes
        assert asked.returncode == 0, asked.stderr
        assert "GPU: NVIDIA GeForce RTX 3060, 12.0 GB" in asked.stdout
        assert "Llama 3.1 8B Instruct, Q4_K_M (4.9 GB, licence: Llama 3.1 Community License)" in asked.stdout
        assert (
            "Stable Diffusion 1.5 inpainting (fp16) (2.1 GB, licence: CreativeML OpenRAIL-M)" in asked.stdout
        )
        assert "./run setup --yes" in asked.stdout and config.read_text() == before
        assert not any(method == "GET" and "/resolve/" in path for method, path, _ in hub.requests)

        done = run_setup(tmp_path, env, "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        gets = [path for method, path, _ in hub.requests if method == "GET" and path.endswith(GGUF)]
        assert len(gets) == 2  # cut halfway, then fetched to the end

        hub.requests.clear()
        again = run_setup(tmp_path, env, "--yes")  # what is there and verified is not fetched again
        assert again.returncode == 0, again.stderr
        assert not any(method == "GET" and "/resolve/" in path for method, path, _ in hub.requests)

    gguf = tmp_path / "models" / "bartowski--Meta-Llama-3.1-8B-Instruct-GGUF" / GGUF
    assert gguf.read_bytes() == bundled_gguf().read_bytes()
    image = tmp_path / "models" / "stable-diffusion-v1-5--stable-diffusion-inpainting"
    assert (image / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    after = config.read_text()
    settings = tomllib.loads(after)
    assert settings["model"]["path"] == f"models/bartowski--Meta-Llama-3.1-8B-Instruct-GGUF/{GGUF}"
    assert settings["model"]["n_gpu_layers"] == 999
    assert settings["expressions"]["model"] == "models/stable-diffusion-v1-5--stable-diffusion-inpainting"
    old, new = before.splitlines(), after.splitlines()
    changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]  # line for line: no line added
    assert changed == [
        ('path = ""', f'path = "models/bartowski--Meta-Llama-3.1-8B-Instruct-GGUF/{GGUF}"'),
        ("n_gpu_layers = 0", "n_gpu_layers = 999"),
        ('model = ""', 'model = "models/stable-diffusion-v1-5--stable-diffusion-inpainting"'),
    ]

    # The bot loads both from where setup put them.
    import asyncio

    from bot.config import load_config
    from bot.expressions.backends.diffusers import load_pipeline
    from bot.llm import LlamaBackend

    loaded = load_config(config)
    assert type(load_pipeline(loaded.expressions, loaded.root)).__name__ == "StableDiffusionInpaintPipeline"
    backend = asyncio.run(LlamaBackend.load(loaded.model, loaded.root))
    try:
        assert backend.path == gguf
    finally:
        asyncio.run(backend.close())


def test_with_an_image_server_only_the_language_model_is_fetched(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    text = (shipped() / "config.toml").read_text()
    config.write_text(text.replace('backend = "diffusers"', 'backend = "comfyui"'))
    before = config.read_text()
    env = fake_nvidia_smi(tmp_path / "bin", "NVIDIA GeForce RTX 3060, 12288")
    with local_hub() as hub:
        hub.add(LLAMA_8B.repo, {GGUF: bundled_gguf()})  # the hub holds no image model: none is asked for
        env["HF_ENDPOINT"] = hub.url
        done = run_setup(tmp_path, env, "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        assert not any(SD15_INPAINT.repo in path for _, path, _ in hub.requests)
    assert (
        "inpainting: your ComfyUI server (config.toml's [expressions] backend), nothing to download"
        in done.stdout
    )
    assert "Stable Diffusion" not in done.stdout and "[expressions] model" not in done.stdout
    changed = [
        (a, b) for a, b in zip(before.splitlines(), config.read_text().splitlines(), strict=True) if a != b
    ]
    assert changed == [
        ('path = ""', f'path = "models/bartowski--Meta-Llama-3.1-8B-Instruct-GGUF/{GGUF}"'),
        ("n_gpu_layers = 0", "n_gpu_layers = 999"),
    ]


@pytest.mark.slow
def test_a_download_that_is_not_what_the_hub_holds_is_removed_with_one_line(
    tmp_path: Path, fp16_pipeline: Path
) -> None:
    from .support.configs import write_config

    config = write_config(tmp_path)
    before = config.read_text()
    env = fake_nvidia_smi(tmp_path / "bin", "NVIDIA GeForce RTX 4060, 8188")
    small = tmp_path / "small.gguf"
    small.write_bytes(bundled_gguf().read_bytes()[:4_000_000])
    with local_hub() as hub:
        hub.add(LLAMA_3B.repo, {LLAMA_3B.files[0]: small})
        hub.corrupt.add(f"{LLAMA_3B.repo}/{LLAMA_3B.files[0]}")
        env["HF_ENDPOINT"] = hub.url
        done = run_setup(tmp_path, env, "--yes")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and "is not what the hub holds" in lines[0] and "run `./run setup` again" in lines[0]
    )
    assert not (tmp_path / "models" / "bartowski--Llama-3.2-3B-Instruct-GGUF" / LLAMA_3B.files[0]).exists()
    assert config.read_text() == before


@pytest.mark.slow
def test_a_download_cut_at_the_same_byte_every_time_is_one_line(tmp_path: Path) -> None:
    from .support.configs import write_config

    config = write_config(tmp_path)
    before = config.read_text()
    env = fake_nvidia_smi(tmp_path / "bin", "NVIDIA GeForce RTX 4060, 8188")
    with local_hub() as hub:
        hub.add(LLAMA_3B.repo, {LLAMA_3B.files[0]: bundled_gguf()})
        hub.cut_at[f"{LLAMA_3B.repo}/{LLAMA_3B.files[0]}"] = 1_000_000
        env["HF_ENDPOINT"] = hub.url
        done = run_setup(tmp_path, env, "--yes")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    # The hub's client says each try it makes; what ends the command is one line of ours.
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == done.stderr.strip().splitlines()[-1], done.stderr
    assert "download stopped (" in errors[0] and "run `./run setup` again to resume it" in errors[0]
    assert config.read_text() == before


@pytest.mark.parametrize("answer", ["", "maybe", "n", "no", "yes please"])
def test_only_yes_at_the_question_downloads(tmp_path: Path, answer: str) -> None:
    """[y/N]: Enter, or anything but y or yes, downloads nothing and leaves config.toml alone."""
    import pty

    from .support.configs import write_config

    config = write_config(tmp_path)
    before = config.read_text()
    env = fake_nvidia_smi(tmp_path / "bin", "NVIDIA GeForce RTX 4060, 8188")
    master, terminal = pty.openpty()  # a terminal for standard input: setup asks only a person
    os.write(master, f"{answer}\n".encode())  # typed ahead: the terminal holds it until it is read
    try:
        with local_hub() as hub:
            env["HF_ENDPOINT"] = hub.url
            done = subprocess.run(
                [sys.executable, "-m", "bot", "--config", str(config), "setup"],
                cwd=REPO,
                env={**os.environ, "HF_HOME": str(tmp_path / "hf-home"), **env},
                stdin=terminal,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert not any(method == "GET" and "/resolve/" in path for method, path, _ in hub.requests)
    finally:
        os.close(master)
        os.close(terminal)
    assert done.returncode == 0, done.stderr
    assert "Nothing downloaded; config.toml is unchanged." in done.stdout
    assert config.read_text() == before and not (tmp_path / "models").exists()


def test_setting_model_leaves_model_config_alone() -> None:
    text = '[expressions]\nmodel_config = "configs/sd15"\nmodel = ""\nmodels_dir = "x"\n'
    edited = set_values(text, {("expressions", "model"): "models/sd"})
    assert edited.splitlines() == [
        "[expressions]",
        'model_config = "configs/sd15"',
        'model = "models/sd"',
        'models_dir = "x"',
    ]


@pytest.mark.parametrize(
    ("smi", "status"),
    [
        (None, 0),
        ("", 9),
        ("garbled output", 0),
        ("NVIDIA GeForce RTX 4090, inf", 0),
        ("NVIDIA GeForce RTX 4090, 1e400", 0),
        ("NVIDIA GeForce RTX 4090, nan", 0),
        ("NVIDIA GeForce RTX 4090, -24564", 0),
    ],
)
def test_without_a_usable_gpu_it_proposes_a_model_for_the_cpu(
    tmp_path: Path, smi: str | None, status: int
) -> None:
    """No card (or no sane reading of one): a small language model for this machine's cores, downloaded,
    verified and set with every layer on the CPU; no inpainting model (faces are drawn)."""
    from .support.configs import write_config

    config = write_config(tmp_path)
    before = config.read_text()
    env = {"PATH": str(tmp_path)} if smi is None else fake_nvidia_smi(tmp_path / "bin", smi, status)
    cpu = pick_cpu(os.cpu_count() or 1)
    with local_hub() as hub:
        hub.add(cpu.llm.repo, {cpu.llm.files[0]: bundled_gguf()})
        env["HF_ENDPOINT"] = hub.url
        asked = run_setup(tmp_path, env)  # not a terminal, no --yes: it only proposes
        assert asked.returncode == 0, asked.stderr
        assert "No NVIDIA GPU found" in asked.stdout and f"language model: {cpu.llm.title}" in asked.stdout
        assert f"licence: {cpu.llm.licence}" in asked.stdout and cpu.speed in asked.stdout
        assert "inpainting model" not in asked.stdout and config.read_text() == before
        assert not any(method == "GET" and "/resolve/" in path for method, path, _ in hub.requests)
        done = run_setup(tmp_path, env, "--yes")
    assert done.returncode == 0, done.stderr
    folder = cpu.llm.repo.replace("/", "--")
    gguf = tmp_path / "models" / folder / cpu.llm.files[0]
    assert gguf.read_bytes() == bundled_gguf().read_bytes()
    settings = tomllib.loads(config.read_text())
    assert settings["model"]["path"] == f"models/{folder}/{cpu.llm.files[0]}"
    assert settings["model"]["n_gpu_layers"] == 0
    added = set(config.read_text().splitlines()) - set(before.splitlines())
    assert added == {f'path = "models/{folder}/{cpu.llm.files[0]}"', "n_gpu_layers = 0"}  # nothing else


def test_the_cpu_tier_follows_the_cores() -> None:
    assert pick_cpu(2).llm == QWEN_1_5B and pick_cpu(4).llm == QWEN_1_5B
    assert pick_cpu(8).llm == LLAMA_3B and pick_cpu(32).llm == LLAMA_3B
    for cores in (1, 2, 8):
        tier = pick_cpu(cores)
        assert tier.llm.size_gb < 2.5 and tier.llm.licence in ("Apache-2.0", "Llama 3.2 Community License")
