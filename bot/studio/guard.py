"""Who may use the studio. Any local process, and any web page the user opens, can reach a port on
127.0.0.1, so every request needs the random token printed at start (the printed link sets it as a
cookie); a Host header naming another address is refused (a DNS-rebinding page would send its own name),
and so is a changing request from another origin (the cookie is SameSite=Strict as well)."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

COOKIE = "studio_token"
TOKEN_PARAM = "token"
SAFE_METHODS = frozenset({"GET", "HEAD"})
# The page loads only its own files and draws portraits from its own address.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self';"
        " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # the first link carries the token
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_token() -> str:
    return secrets.token_urlsafe(32)


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """The Host headers the studio answers: the address it serves, and the loopback names for it."""
    names = {host}
    try:
        if ipaddress.ip_address(host).is_loopback:
            names |= {"127.0.0.1", "localhost", "[::1]"}
    except ValueError:  # a name, not an address
        if host == "localhost":
            names |= {"127.0.0.1", "[::1]"}
    if ":" in host and not host.startswith("["):
        names.add(f"[{host}]")
    return frozenset(f"{name}:{port}" for name in names)


def guard(token: str, hosts: Iterable[str]) -> Middleware:
    """The middleware that enforces all of the above before any route runs."""
    hosts = frozenset(h.lower() for h in hosts)
    origins = frozenset(f"http://{h}" for h in hosts)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.headers.get("Host") or "").lower() not in hosts:
            return _refuse(421, "this address is not the studio's: open the link printed at start")
        if request.method not in SAFE_METHODS:
            origin = request.headers.get("Origin")
            if origin is None or origin.lower() not in origins:
                return _refuse(403, "refused: the request came from another site")
        offered = request.query.get(TOKEN_PARAM)
        if offered is not None and request.method in SAFE_METHODS and _same(offered, token):
            # The link from the terminal: keep the token in a cookie, and out of the address bar.
            target = request.rel_url.with_query({k: v for k, v in request.query.items() if k != TOKEN_PARAM})
            moved = web.Response(status=303, headers={"Location": str(target)})
            moved.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
            _secure(moved)
            return moved
        if not _same(request.cookies.get(COOKIE, ""), token):
            return _refuse(401, "the studio needs its token: open the link printed when it started")
        response = await handler(request)
        _secure(response)
        return response

    return check


def _same(offered: str, token: str) -> bool:
    return hmac.compare_digest(offered.encode(), token.encode())


def _refuse(status: int, why: str) -> web.Response:
    response = web.json_response({"error": why}, status=status)
    _secure(response)
    return response


def _secure(response: web.StreamResponse) -> None:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
