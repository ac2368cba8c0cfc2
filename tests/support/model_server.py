"""llama-cpp-python's own OpenAI-compatible server on the bundled model, as a separate process: what the
server backend is tested against (no mock)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from bot.llm import bundled_model_path

from .local_http import free_port, stop_process

READY_WITHIN = 120.0  # seconds for the server to load the model and answer


@contextlib.contextmanager
def model_server(
    n_ctx: int = 2048,
    log: Path | None = None,
    api_key: str = "",
    flags: Sequence[str] = (),
    model: Path | None = None,
) -> Iterator[str]:
    """A running server; yields its base URL (http://127.0.0.1:PORT/v1). With `api_key`, it refuses
    requests without that key; `flags` are more of its command-line settings; `model` is a GGUF other
    than the bundled one."""
    port = free_port()
    out = log.open("w") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model or bundled_model_path()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            str(n_ctx),
            *(["--api_key", api_key] if api_key else []),
            *flags,
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + READY_WITHIN
        while True:  # ready when it lists its model
            if process.poll() is not None:
                raise RuntimeError(f"the model server exited with {process.returncode} before it was ready")
            try:
                request = urllib.request.Request(
                    base + "/models", headers={"Authorization": f"Bearer {api_key}"}
                )
                with urllib.request.urlopen(request, timeout=2) as response:
                    if json.loads(response.read())["data"]:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the model server did not answer within {READY_WITHIN:g} s") from None
                time.sleep(0.2)
        yield base
    finally:
        stop_process(process, grace=15)
        if log is not None:
            out.close()  # type: ignore[union-attr]
