"""The image servers' shared client: blocking HTTP (it runs on the render worker's threads), the
credentials from the environment, bounded answers, and every failure as one line that says what to
change. A server's own words are untrusted: they are cut short and stripped of control characters before
they reach a log line or a page."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from PIL import Image

from bot.config import ExpressionsConfig
from bot.errors import ExpressionError
from bot.files import png_bytes
from bot.images import decode_image

MAX_ANSWER_BYTES = 64 * 1024 * 1024  # a 2048x2048 PNG in base64 is ~15 MB; anything far larger is wrong
MAX_ANSWER_PIXELS = 4096 * 4096
MAX_SERVER_WORDS = 300  # characters of a server's error message kept in a line
CANCEL_POLL_SECONDS = 0.2  # how soon a cancelled request is interrupted on the server

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]+")


def server_words(text: object) -> str:
    """A server's message made safe for one line."""
    return _CONTROL.sub(" ", str(text)).strip()[:MAX_SERVER_WORDS]


def looks_out_of_memory(text: str) -> bool:
    """CUDA's "out of memory", torch's OutOfMemoryError: the same words, once run together."""
    return "outofmemory" in text.lower().replace(" ", "")


class ImageServer:
    """One server's address, credentials and time limit."""

    def __init__(self, name: str, settings: ExpressionsConfig, oom_advice: str) -> None:
        self.name = name
        self.base = settings.server_url
        self.timeout = settings.timeout_seconds
        self.auth_env = settings.auth_env
        self.oom_advice = oom_advice
        self._headers: dict[str, str] = {}
        secret = os.environ.get(settings.auth_env, "") if settings.auth_env else ""
        if ":" in secret:
            self._headers["Authorization"] = "Basic " + base64.b64encode(secret.encode()).decode()
        elif secret:
            self._headers["Authorization"] = f"Bearer {secret}"

    # -- requests ---------------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str = "", timeout: float = 0
    ) -> bytes:
        headers = dict(self._headers)
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.base + path, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                answer = response.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise self._refused(exc.code, _read_error(exc), path) from None
        except TimeoutError:
            raise self.timed_out() from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError | socket.timeout):
                raise self.timed_out() from None
            raise ExpressionError(
                f"the {self.name} server at {self.base} is not reachable ({server_words(exc.reason)}):"
                " start it, or set [expressions] base_url to its address"
            ) from None
        except (OSError, ValueError) as exc:  # a connection reset mid-answer, a malformed URL
            raise ExpressionError(
                f"the {self.name} server at {self.base} failed mid-answer ({server_words(exc)})"
            ) from None
        if len(answer) > MAX_ANSWER_BYTES:
            raise ExpressionError(
                f"the {self.name} server's answer to {path} is over {MAX_ANSWER_BYTES} bytes"
            )
        return answer

    def get_json(self, path: str, timeout: float = 0) -> Any:
        return self._json(self.request("GET", path, timeout=timeout), path)

    def post_json(self, path: str, payload: object, timeout: float = 0) -> Any:
        answer = self.request("POST", path, json.dumps(payload).encode(), "application/json", timeout)
        return self._json(answer, path) if answer.strip() else None

    def post_form(self, path: str, fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> Any:
        """A multipart/form-data POST (ComfyUI's uploads)."""
        boundary = uuid.uuid4().hex
        parts: list[bytes] = []
        for name, value in fields.items():
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            )
        for name, (filename, data) in files.items():
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: image/png\r\n\r\n"
            )
            parts.append(head.encode() + data + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        answer = self.request("POST", path, b"".join(parts), f"multipart/form-data; boundary={boundary}")
        return self._json(answer, path)

    def _json(self, answer: bytes, path: str) -> Any:
        try:
            return json.loads(answer)
        except ValueError:
            raise ExpressionError(
                f"the {self.name} server at {self.base} answered {path} with something that is not JSON:"
                " is base_url the right server?"
            ) from None

    # -- failures ---------------------------------------------------------------------------------------

    def _refused(self, status: int, words: str, path: str) -> ExpressionError:
        if status in (401, 403):
            where = (
                f"the credentials in the environment variable {self.auth_env} were refused"
                if "Authorization" in self._headers
                else f"put user:password or its key in the environment variable {self.auth_env}"
            )
            return ExpressionError(
                f"the {self.name} server at {self.base} refused the bot ({status}): {where}"
            )
        if looks_out_of_memory(words):
            return self.out_of_memory()
        if status == 404:
            return ExpressionError(
                f"the {self.name} server at {self.base} has no {path} ({status}): is base_url the right"
                f" server{', started with --api' if 'sdapi' in path else ''}?"
            )
        return ExpressionError(
            f"the {self.name} server refused the render ({status}): {words or 'no reason given'}"
        )

    def out_of_memory(self) -> ExpressionError:
        return ExpressionError(
            f"the {self.name} server ran out of GPU memory rendering the face: {self.oom_advice}"
        )

    def timed_out(self) -> ExpressionError:
        return ExpressionError(
            f"the {self.name} server at {self.base} took longer than {self.timeout:g} s:"
            " raise [expressions] timeout_seconds, or lower steps or resolution"
        )

    # -- cancelling -------------------------------------------------------------------------------------

    @contextmanager
    def interrupting(self, cancel: threading.Event | None, interrupt: Callable[[], None]) -> Iterator[None]:
        """While the block waits on the server, a cancelled render (a timeout, shutdown) interrupts the
        server's work instead of leaving its GPU busy with a face nobody will see."""
        if cancel is None:
            yield
            return
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                if cancel.wait(CANCEL_POLL_SECONDS) and not done.is_set():
                    with suppress(ExpressionError):  # the server is gone: nothing left to interrupt
                        interrupt()
                    return

        watcher = threading.Thread(target=watch, name=f"{self.name} cancel", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()


def _read_error(exc: urllib.error.HTTPError) -> str:
    """The reason in an error answer: A1111's {"error", "detail", "errors"}, ComfyUI's {"error": {...}}."""
    try:
        raw = exc.read(64 * 1024)
    except OSError:
        return ""
    try:
        body = json.loads(raw)
    except ValueError:
        return server_words(raw.decode("utf-8", "replace"))
    return server_words(error_text(body))


def error_text(body: object) -> str:
    if isinstance(body, dict) and isinstance(body.get("node_errors"), dict) and body["node_errors"]:
        # ComfyUI's refusal of a workflow: the general "failed validation" is in "error", what failed in
        # each node's errors.
        return "; ".join(
            f"{node.get('class_type', name)}: {error.get('message', '')} ({error.get('details', '')})"
            for name, node in body["node_errors"].items()
            if isinstance(node, dict)
            for error in node.get("errors", [])
            if isinstance(error, dict)
        )
    if isinstance(body, dict):
        for key in ("errors", "detail", "message", "error"):
            value = body.get(key)
            if isinstance(value, dict):
                return error_text(value)
            if value:
                return str(value) if not isinstance(value, list) else "; ".join(map(str, value))
    return str(body)


def png_base64(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode()


def read_picture(raw: bytes, who: str) -> Image.Image:
    """A server's picture, decoded with the bounds every untrusted picture gets."""
    return decode_image(
        raw, f"the picture {who} returned", max_pixels=MAX_ANSWER_PIXELS, error=ExpressionError
    )


def b64_picture(text: object, who: str) -> Image.Image:
    if not isinstance(text, str):
        raise ExpressionError(f"{who} returned no picture")
    try:
        raw = base64.b64decode(text.split(",", 1)[-1], validate=False)
    except ValueError:
        raise ExpressionError(f"{who} returned a picture that is not base64") from None
    return read_picture(raw, who)


__all__ = ["ImageServer", "b64_picture", "png_base64", "read_picture", "server_words"]
