"""The image servers' shared client: blocking HTTP (it runs on the render worker's threads), the
credentials from the environment, bounded answers, and every failure as one line that says what to
change. A server's own words are untrusted: they are cut short and stripped of control characters before
they reach a log line or a page.

Built on http.client rather than urllib: urllib follows redirects, and with them would send the
credentials to whatever host a redirect names; and its timeout bounds each socket read, not the answer,
so a server trickling a byte a second could hold a render thread for as long as it liked. Here a request
goes only to the configured address, and a watchdog ends it at its deadline or the moment it is
cancelled."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
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
MAX_ERROR_BYTES = 64 * 1024  # an error answer's body read for its reason
MAX_ANSWER_PIXELS = 4096 * 4096
MAX_SERVER_WORDS = 300  # characters of a server's error message kept in a line
CANCEL_POLL_SECONDS = 0.2  # how soon a cancelled request is interrupted on the server
READ_CHUNK = 256 * 1024

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]+")


def server_words(text: object) -> str:
    """A server's message made safe for one line."""
    return _CONTROL.sub(" ", str(text)).strip()[:MAX_SERVER_WORDS]


def looks_out_of_memory(text: str) -> bool:
    """CUDA's "out of memory", torch's OutOfMemoryError: the same words, once run together."""
    return "outofmemory" in text.lower().replace(" ", "")


class ServerTimeout(ExpressionError):
    """A request ran past its time: the caller also takes the work off the server (its GPU would stay
    busy with a face nobody will see)."""


class _Expired(Exception):
    """The watchdog ended the request: its deadline passed, or the render was cancelled."""


class _Watchdog:
    """Ends one request's connection at its deadline, or as soon as `cancel` is set: a blocked read then
    fails at once instead of waiting on a server that trickles or never answers."""

    def __init__(
        self, connection: http.client.HTTPConnection, deadline: float, cancel: threading.Event | None
    ) -> None:
        self.connection = connection
        self.deadline = deadline
        self.cancel = cancel
        self.why = ""  # "timeout" or "cancelled" once it fired
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="image server watchdog", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.is_set():
            left = self.deadline - time.monotonic()
            if left <= 0:
                self._fire("timeout")
                return
            if self.cancel is not None and self.cancel.is_set():
                self._fire("cancelled")
                return
            self._done.wait(min(left, CANCEL_POLL_SECONDS))

    def _fire(self, why: str) -> None:
        self.why = why
        sock = self.connection.sock
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # a read blocked on it returns now

    def left(self) -> float:
        """Seconds to the deadline; raises _Expired once the watchdog fired or the time is up."""
        left = self.deadline - time.monotonic()
        cancelled = self.cancel is not None and self.cancel.is_set()
        if self.why or left <= 0 or cancelled:
            self.why = self.why or ("cancelled" if cancelled else "timeout")
            raise _Expired(self.why)
        return left

    def stop(self) -> None:
        self._done.set()


class ImageServer:
    """One server's address, credentials and time limit."""

    def __init__(self, name: str, settings: ExpressionsConfig, oom_advice: str) -> None:
        self.name = name
        self.base = settings.server_url
        self.timeout = settings.timeout_seconds
        self.auth_env = settings.auth_env
        self.oom_advice = oom_advice
        address = urllib.parse.urlsplit(self.base)  # checked when the config was loaded
        self._https = address.scheme == "https"
        self._host = address.hostname or ""
        self._port = address.port
        self._root = address.path.rstrip("/")
        self._headers: dict[str, str] = {}
        secret = os.environ.get(settings.auth_env, "") if settings.auth_env else ""
        if ":" in secret:
            self._headers["Authorization"] = "Basic " + base64.b64encode(secret.encode()).decode()
        elif secret:
            self._headers["Authorization"] = f"Bearer {secret}"

    # -- requests ---------------------------------------------------------------------------------------

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "",
        timeout: float = 0,
        cancel: threading.Event | None = None,
    ) -> bytes:
        """One exchange with the configured address only (a redirect is refused, never followed), done
        within `timeout` seconds (default: timeout_seconds) however slowly the server answers, and ended
        at once when `cancel` is set. The answer is bounded to MAX_ANSWER_BYTES as it is read."""
        limit = timeout or self.timeout
        headers = dict(self._headers)
        if content_type:
            headers["Content-Type"] = content_type
        connection = self._connection(limit)
        watchdog = _Watchdog(connection, time.monotonic() + limit, cancel)
        try:
            connection.request(method, self._root + path, body=body, headers=headers)
            response = connection.getresponse()
            status = response.status
            if 300 <= status < 400:
                raise self._redirected(status, response.getheader("Location") or "", path)
            if status >= 400:
                raw = _read(response, connection, watchdog, MAX_ERROR_BYTES, truncate=True)
                raise self._refused(status, _error_words(raw), path)
            declared = response.getheader("Content-Length") or ""
            if declared.isascii() and declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
                raise self._too_large(path)
            answer = _read(response, connection, watchdog, MAX_ANSWER_BYTES)
            if answer is None:
                raise self._too_large(path)
            return answer
        except _Expired as exc:
            raise self._expired(str(exc)) from None
        except ExpressionError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if watchdog.why:
                raise self._expired(watchdog.why) from None
            if isinstance(exc, TimeoutError | socket.timeout):
                raise self.timed_out() from None
            if isinstance(exc, ConnectionRefusedError | socket.gaierror) or (
                isinstance(exc, OSError) and not isinstance(exc, ConnectionError) and exc.errno is not None
            ):
                raise ExpressionError(
                    f"the {self.name} server at {self.base} is not reachable ({server_words(exc)}):"
                    " start it, or set [expressions] base_url to its address"
                ) from None
            why = server_words(exc) or type(exc).__name__
            raise ExpressionError(
                f"the {self.name} server at {self.base} failed mid-answer ({why})"
            ) from None
        finally:
            watchdog.stop()
            connection.close()

    def get_json(self, path: str, timeout: float = 0, cancel: threading.Event | None = None) -> Any:
        return self._json(self.request("GET", path, timeout=timeout, cancel=cancel), path)

    def post_json(
        self, path: str, payload: object, timeout: float = 0, cancel: threading.Event | None = None
    ) -> Any:
        answer = self.request("POST", path, json.dumps(payload).encode(), "application/json", timeout, cancel)
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
        except (ValueError, RecursionError):
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

    def _redirected(self, status: int, location: str, path: str) -> ExpressionError:
        return ExpressionError(
            f"the {self.name} server at {self.base} sent {path} elsewhere ({status} to"
            f" {server_words(location)[:120] or 'nowhere'}): the bot follows no redirects, so that its"
            " credentials go only to base_url; set [expressions] base_url to the address that serves the API"
        )

    def _too_large(self, path: str) -> ExpressionError:
        return ExpressionError(f"the {self.name} server's answer to {path} is over {MAX_ANSWER_BYTES} bytes")

    def _expired(self, why: str) -> BaseException:
        if why == "cancelled":
            return asyncio.CancelledError("render cancelled")
        return self.timed_out()

    def out_of_memory(self) -> ExpressionError:
        return ExpressionError(
            f"the {self.name} server ran out of GPU memory rendering the face: {self.oom_advice}"
        )

    def timed_out(self) -> ExpressionError:
        return ServerTimeout(
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


def _read(
    response: http.client.HTTPResponse,
    connection: http.client.HTTPConnection,
    watchdog: _Watchdog,
    limit: int,
    truncate: bool = False,
) -> bytes | None:
    """The answer's body, read a chunk at a time against the deadline and stopped one byte past `limit`
    (None then, or the first `limit` bytes when `truncate`): never the whole of an oversized answer in
    memory first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        left = watchdog.left()
        if connection.sock is not None:
            connection.sock.settimeout(left)
        chunk = response.read(min(READ_CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit] if truncate else None


def _error_words(raw: bytes | None) -> str:
    """The reason in an error answer: A1111's {"error", "detail", "errors"}, ComfyUI's {"error": {...}}."""
    raw = raw or b""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return server_words(raw.decode("utf-8", "replace"))
    return server_words(error_text(body))


def _listed(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def error_text(body: object) -> str:
    if isinstance(body, dict) and isinstance(body.get("node_errors"), dict) and body["node_errors"]:
        # ComfyUI's refusal of a workflow: the general "failed validation" is in "error", what failed in
        # each node's errors.
        return "; ".join(
            f"{node.get('class_type', name)}: {error.get('message', '')} ({error.get('details', '')})"
            for name, node in body["node_errors"].items()
            if isinstance(node, dict)
            for error in _listed(node.get("errors"))
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


__all__ = ["ImageServer", "ServerTimeout", "b64_picture", "png_base64", "read_picture", "server_words"]
