"""The studio's web app: the guard first, then errors turned into one-line answers, then the page and the
API. `Studio.start()` serves it and returns the link that carries the token."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from bot.core.engine import Engine
from bot.errors import BotError
from bot.studio.api import Api, Handler, TooLarge
from bot.studio.guard import allowed_hosts, guard, new_token
from bot.studio.jobs import RenderJobs

_log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page")
PAGE_FILES = {
    "/": ("index.html", "text/html"),
    "/studio.js": ("studio.js", "text/javascript"),
    "/studio.css": ("studio.css", "text/css"),
}
DEFAULT_PORT = 8765


def check_host(host: str) -> str:
    """The address to serve on: one address of this machine (loopback by default), never a wildcard,
    since the Host check needs to know the one name the page is reached by."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host == "localhost":
            return host
        raise BotError(
            f"--host must be an IP address of this machine (like 127.0.0.1), not {host!r}"
        ) from None
    if address.is_unspecified:
        raise BotError(f"--host {host} would listen everywhere: give the one address to serve on")
    return host


@web.middleware
async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bad input as `{"error": "..."}` (what the command line would print); a fault as a short 500,
    logged in full. The studio keeps running either way."""
    try:
        return await handler(request)
    except TooLarge as exc:
        return web.json_response({"error": str(exc)}, status=413)
    except BotError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": exc.text or exc.reason}, status=exc.status)
    except (ConnectionResetError, OSError) as exc:
        if isinstance(exc, ConnectionResetError):  # the page went away mid-answer
            raise
        _log.exception("studio: %s %s failed", request.method, request.path)
        return web.json_response({"error": f"cannot read or write a file: {exc}"}, status=500)
    except Exception:
        _log.exception("studio: %s %s failed", request.method, request.path)
        return web.json_response({"error": "the studio hit an internal error; see its log"}, status=500)


class _OneLineRefusals(logging.Filter):
    """A request aiohttp's parser refuses (two Host headers, a malformed line) is answered 400 by
    aiohttp itself; its log record would carry a whole traceback into the studio's terminal for what is
    someone else's bad input. Such records become one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            words = " ".join(str(error.message).split())[:200]
            record.msg, record.args = "studio: refused a malformed request (%s %s)", (error.code, words)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_requests_log = logging.getLogger("bot.studio.requests")
_requests_log.addFilter(_OneLineRefusals())


class Studio:
    """The page and its API for one engine, on one local address."""

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        self.engine = engine
        self.host = check_host(host)
        self.port = port
        self.token = new_token()
        self.jobs = RenderJobs(engine)
        self._runner: web.AppRunner | None = None

    def app(self, port: int) -> web.Application:
        limits = self.engine.admin.upload_limits()
        app = web.Application(
            middlewares=[guard(self.token, allowed_hosts(self.host, port)), answer_errors],
            client_max_size=max(limits) + 1024,
        )
        for path in PAGE_FILES:
            app.router.add_get(path, self._page)
        app.add_routes(Api(self.engine, self.jobs, *limits).routes())
        return app

    async def _page(self, request: web.Request) -> web.StreamResponse:
        name, kind = PAGE_FILES[request.path]
        return web.Response(body=(PAGE / name).read_bytes(), content_type=kind, charset="utf-8")

    async def start(self) -> str:
        """Serve; returns the link to open (it sets the token's cookie). Port 0 picks a free one."""
        port = self.port
        if port == 0:
            import socket

            with socket.socket() as probe:
                probe.bind((self.host, 0))
                port = probe.getsockname()[1]
        runner = web.AppRunner(self.app(port), access_log=None, logger=_requests_log)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise BotError(f"the studio cannot listen on {self.host}:{port}: {exc.strerror}") from None
        self._runner, self.port = runner, port
        return f"{self.base_url}/?token={self.token}"

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        await self.jobs.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@contextlib.asynccontextmanager
async def studio_running(engine: Engine, host: str, port: int) -> AsyncIterator[Studio]:
    """The studio served for as long as the block runs; its link is printed (it holds the token)."""
    studio = Studio(engine, host, port)
    link = await studio.start()
    print(f"studio: open {link}", flush=True)
    try:
        yield studio
    finally:
        await studio.stop()
