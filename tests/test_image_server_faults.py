"""Image servers that misbehave: a redirect to another host (the credentials must not follow), an answer
trickled a byte at a time (it costs at most timeout_seconds and never holds the next render), answers of
the wrong JSON shape, and answers too large (refused as they are read, not after). Each is one line; the
command line exits 2 with it; nothing is cached."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import bot.expressions.backends.http as image_http
from bot.config import Config, load_config
from bot.errors import ConfigError, ExpressionError
from bot.expressions import ExpressionService, face_mask
from bot.expressions.backends.a1111 import A1111Backend
from bot.expressions.backends.comfyui import NODES, ComfyUIBackend
from bot.personas import PersonaLibrary
from bot.store import Store

from .support.configs import REPO, write_config
from .support.local_http import serving

SETTINGS = "resolution = 64\nsteps = 2\nmask_dilate = 2\nmask_blur = 3\ncrop_padding = 8\n"
Answer = Callable[[BaseHTTPRequestHandler], None]
BOT = [sys.executable, "-m", "bot"]


class Recorder:
    """What a local server was asked, and how it answers each path (longest matching prefix wins)."""

    def __init__(self, answers: dict[str, Answer]) -> None:
        self.answers = answers
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Authorization
        self.lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with recorder.lock:
                    recorder.requests.append((self.command, self.path, self.headers.get("Authorization")))
                match = max((p for p in recorder.answers if self.path.startswith(p)), key=len, default=None)
                if match is None:
                    send_json(self, {"detail": "Not Found"}, 404)
                    return
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the bot hung up
                    recorder.answers[match](self)

            do_GET = do_POST = _any

        return Handler


def send_json(handler: BaseHTTPRequestHandler, body: object, status: int = 200) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def json_answer(body: object, status: int = 200) -> Answer:
    return lambda handler: send_json(handler, body, status)


@contextmanager
def server(answers: dict[str, Answer]) -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder(answers)
    with serving(recorder.handler()) as url:
        yield url, recorder


def config_for(folder: Path, backend: str, url: str, extra: str = "") -> Config:
    text = f'[expressions]\nbackend = "{backend}"\nbase_url = "{url}"\n{SETTINGS}{extra}'
    return load_config(write_config(folder, text, sprites=False))


def mira_inputs(config: Config) -> tuple[Image.Image, Image.Image]:
    library = PersonaLibrary.from_config(config)
    mira = library.load("mira")
    with Image.open(library.portrait_path(mira)) as image:  # type: ignore[arg-type]
        portrait = image.convert("RGB")
    return portrait, face_mask(mira, portrait.size, library.avatars, 2, 3)


def picture_b64() -> str:
    import base64
    import io

    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


# -- redirects ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_refused_and_the_credentials_go_nowhere_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    monkeypatch.setenv("IMAGE_SERVER_AUTH", "user:hunter2")
    with server({"/": json_answer({"images": [picture_b64()]})}) as (elsewhere, stolen):

        def moved(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(status)
            handler.send_header("Location", f"{elsewhere}{handler.path}")
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        with server({"/": moved}) as (url, asked):
            config = config_for(tmp_path / str(status), "a1111", url)
            portrait, mask = mira_inputs(config)
            with pytest.raises(ExpressionError) as caught:
                A1111Backend(config.expressions).render(portrait, mask, "smile", 1)
            comfy = ComfyUIBackend(config_for(tmp_path / f"c{status}", "comfyui", url).expressions)
            with pytest.raises(ExpressionError, match="follows no redirects"):
                comfy.checkpoints()
    message = str(caught.value)
    assert f"sent /sdapi/v1/img2img elsewhere ({status} to {elsewhere}" in message
    assert "follows no redirects" in message and "base_url" in message and "\n" not in message
    assert asked.requests and all(auth is not None for _, _, auth in asked.requests)  # sent to base_url
    assert stolen.requests == []  # and to nobody else


# -- slow servers ---------------------------------------------------------------------------------------


def trickle(body: bytes, every: float, stop: threading.Event) -> Answer:
    """An answer sent one byte per `every` seconds (until the bot hangs up or the test ends)."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        for byte in body:
            if stop.wait(every):
                return
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()

    return answer


@pytest.fixture
def released() -> Iterator[threading.Event]:
    stop = threading.Event()
    yield stop
    stop.set()


def test_a_trickling_answer_costs_at_most_the_timeout(tmp_path: Path, released: threading.Event) -> None:
    body = json.dumps({"images": [picture_b64()]}).encode()
    with server({"/sdapi/v1/img2img": trickle(body, 0.5, released)}) as (url, _):
        config = config_for(tmp_path, "a1111", url, "timeout_seconds = 2\n")
        portrait, mask = mira_inputs(config)
        started = time.monotonic()
        with pytest.raises(
            ExpressionError, match=r"took longer than 2 s: raise \[expressions\] timeout_seconds"
        ):
            A1111Backend(config.expressions).render(portrait, mask, "smile", 1)
        # The whole answer would take minutes; each byte arrives well within a per-read timeout.
        assert time.monotonic() - started < 20


def test_a_cancelled_render_lets_go_of_the_server_at_once(tmp_path: Path, released: threading.Event) -> None:
    """Shutdown, or the service's own limit, cancels a render: the request waiting on the server ends
    then, not when the server finally answers (here: minutes away, with a limit of an hour)."""
    body = json.dumps({"images": [picture_b64()]}).encode()
    answers = {"/sdapi/v1/img2img": trickle(body, 0.5, released), "/sdapi/v1/interrupt": json_answer({})}
    with server(answers) as (url, asked):
        config = config_for(tmp_path, "a1111", url, "timeout_seconds = 3600\n")
        portrait, mask = mira_inputs(config)
        cancel = threading.Event()
        threading.Timer(0.5, cancel.set).start()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            A1111Backend(config.expressions).render(portrait, mask, "smile", 1, cancel)
        assert time.monotonic() - started < 20
    assert ("POST", "/sdapi/v1/interrupt") in [(m, p) for m, p, _ in asked.requests]  # the GPU told to stop


async def test_a_slow_render_never_holds_the_next_one(tmp_path: Path, released: threading.Event) -> None:
    """One render at a time (max_concurrent = 1): the first hangs on a trickling server and fails at its
    limit; the one queued behind it is answered at once and succeeds, not "took longer" as well."""
    body = json.dumps({"images": [picture_b64()]}).encode()
    calls = 0
    slow = trickle(body, 0.5, released)

    def img2img(handler: BaseHTTPRequestHandler) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            slow(handler)
        else:
            send_json(handler, {"images": [picture_b64()]})

    with server({"/sdapi/v1/img2img": img2img}) as (url, _):
        config = config_for(tmp_path, "a1111", url, "timeout_seconds = 2\n")
        store = await Store.open(config.resolve(config.store.path))
        service = ExpressionService(config, store, PersonaLibrary.from_config(config))
        try:
            mira = service.personas.load("mira")
            first = asyncio.ensure_future(service.render(mira, "joy"))
            second = asyncio.ensure_future(service.render(mira, "sadness"))
            done = await asyncio.gather(first, second, return_exceptions=True)
        finally:
            await service.close()
            await store.close()
    # Whichever reached the server first hung; the other waited for the thread, then got its answer.
    failed = [r for r in done if isinstance(r, BaseException)]
    rendered = [r for r in done if isinstance(r, Path)]
    assert len(failed) == 1 and isinstance(failed[0], ExpressionError), done
    assert "took longer than 2 s" in str(failed[0])
    assert len(rendered) == 1 and rendered[0].is_file() and calls == 2


def test_a_render_timeout_on_the_command_line_is_one_line(tmp_path: Path, released: threading.Event) -> None:
    body = json.dumps({"images": [picture_b64()]}).encode()
    with server({"/sdapi/v1/img2img": trickle(body, 0.5, released)}) as (url, _):
        config = write_config(
            tmp_path,
            f'[expressions]\nbackend = "a1111"\nbase_url = "{url}"\n{SETTINGS}timeout_seconds = 1\n',
            sprites=False,
        )
        done = subprocess.run(
            [*BOT, "--config", str(config), "expressions", "render", "--persona", "mira", "--labels", "joy"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in done.stderr
    assert len(errors) == 1 and "took longer than 1 s" in errors[0], done.stderr


# -- answers of the wrong shape -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [{"images": 5}, {"images": {"0": "x"}}, {"images": []}, {"images": [7]}, [], "images", 12, None],
)
def test_a1111_answers_of_the_wrong_shape_are_one_line(tmp_path: Path, answer: Any) -> None:
    with server({"/sdapi/v1/img2img": json_answer(answer)}) as (url, _):
        config = config_for(tmp_path, "a1111", url)
        portrait, mask = mira_inputs(config)
        with pytest.raises(ExpressionError, match=r"AUTOMATIC1111 server returned no picture"):
            A1111Backend(config.expressions).render(portrait, mask, "smile", 1)


COMFY_NODES = {name: {} for name in NODES} | {
    "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["face.safetensors"]]}}}
}


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"status": "error", "outputs": {}}, "took longer"),
        ({"status": {"status_str": "error", "messages": "boom"}}, "failed the render without saying why"),
        ({"status": {"completed": True}, "outputs": []}, "finished without a picture"),
        ({"status": {"completed": True}, "outputs": {"result": "x"}}, "finished without a picture"),
        ({"status": {"completed": True}, "outputs": {"result": {"images": 3}}}, "finished without a picture"),
        ("not an entry", "took longer"),
    ],
)
def test_comfyui_answers_of_the_wrong_shape_are_one_line(tmp_path: Path, entry: Any, expected: str) -> None:
    answers: dict[str, Answer] = {
        "/object_info": json_answer(COMFY_NODES),
        "/upload/image": json_answer({"name": "face.png", "subfolder": ["not", "text"]}),
        "/prompt": json_answer({"prompt_id": "p1"}),
        "/history/p1": json_answer({"p1": entry}),
        "/queue": json_answer({"queue_running": "none"}),
        "/interrupt": json_answer({}),
    }
    with server(answers) as (url, _):
        config = config_for(tmp_path, "comfyui", url, 'model = "face"\ntimeout_seconds = 1\n')
        portrait, mask = mira_inputs(config)
        with pytest.raises(ExpressionError, match=expected) as caught:
            ComfyUIBackend(config.expressions).render(portrait, mask, "smile", 1)
    assert "\n" not in str(caught.value)


def test_comfyui_checkpoints_of_the_wrong_shape_are_one_line(tmp_path: Path) -> None:
    nodes = COMFY_NODES | {"CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [5]}}}}
    with server({"/object_info": json_answer(nodes)}) as (url, _):
        config = config_for(tmp_path, "comfyui", url, 'model = "face"\n')
        with pytest.raises(ExpressionError, match=r"checkpoint 'face' is not on the ComfyUI server .*none"):
            ComfyUIBackend(config.expressions).checkpoint()


# -- answers too large ----------------------------------------------------------------------------------


def test_an_oversized_answer_is_refused_as_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, released: threading.Event
) -> None:
    """Past the bound, the answer is refused at once: one byte over it, not once the whole of it is in
    memory (this one never ends: the server keeps the line open after the first bytes)."""
    monkeypatch.setattr(image_http, "MAX_ANSWER_BYTES", 100_000)

    def endless(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.end_headers()  # no length: the answer runs until the line closes
        handler.close_connection = True
        handler.wfile.write(b'{"images": ["' + b"A" * 200_000)
        handler.wfile.flush()
        released.wait(60)

    def announced(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(10**12))
        handler.end_headers()
        released.wait(60)

    for answer in (endless, announced):
        with server({"/sdapi/v1/img2img": answer}) as (url, _):
            config = config_for(tmp_path / answer.__name__, "a1111", url, "timeout_seconds = 30\n")
            portrait, mask = mira_inputs(config)
            with pytest.raises(ExpressionError, match=r"answer to /sdapi/v1/img2img is over 100000 bytes"):
                A1111Backend(config.expressions).render(portrait, mask, "smile", 1)


# -- settings that used to load and then crash ----------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "key"),
    [
        ('[expressions]\nbackend = "a1111"\nbase_url = "http://[::1"\n', "expressions.base_url"),
        ('[expressions]\nbackend = "a1111"\nbase_url = "http://127.0.0.1:99999"\n', "expressions.base_url"),
        ('[expressions]\nbackend = "a1111"\nbase_url = "http://user:pw@127.0.0.1"\n', "expressions.base_url"),
        ('[expressions]\nbackend = "comfyui"\nbase_url = "http://"\n', "expressions.base_url"),
        ('[expressions]\nbackend = "comfyui"\nbase_url = "http://host name"\n', "expressions.base_url"),
        ("[expressions]\ntimeout_seconds = inf\n", "expressions.timeout_seconds"),
        ("[expressions]\ntimeout_seconds = 1e10\n", "expressions.timeout_seconds"),
        ("[expressions]\ntimeout_seconds = nan\n", "expressions.timeout_seconds"),
        ("[expressions]\nstrength = nan\n", "expressions.strength"),
        ("[discord]\ncooldown_seconds = inf\n", "discord.cooldown_seconds"),
        ('[model]\nbackend = "openai"\nbase_url = "http://[::1/v1"\n', "model.base_url"),
    ],
)
def test_settings_that_would_crash_a_render_are_refused_at_load(tmp_path: Path, lines: str, key: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(lines)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path)


def test_good_addresses_still_load(tmp_path: Path) -> None:
    for url in ("http://[::1]:8188", "https://comfy.example.org/sub/path", "http://localhost"):
        path = tmp_path / "config.toml"
        path.write_text(f'[expressions]\nbackend = "comfyui"\nbase_url = "{url}"\ntimeout_seconds = 86400\n')
        assert load_config(path).expressions.server_url == url.rstrip("/")
