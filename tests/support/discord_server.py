"""A local server that speaks enough of Discord's REST API and gateway for the unmodified discord.py
client: only its API base and gateway URL are pointed here. Every request is recorded so tests can
assert on exactly what the bot sent (content, allowed_mentions, attachments, timing).

It is a test double of Discord, not of our code: the bot under test runs unchanged.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

from . import discord_spec

MANAGE_GUILD = 1 << 5
MANAGE_WEBHOOKS = 1 << 29
SEND_MESSAGES = 1 << 11
MEMBER_PERMISSIONS = (
    (1 << 10) | (1 << 11) | (1 << 15) | (1 << 16) | (1 << 31)
)  # view, send, files, history, slash
ADMIN_PERMISSIONS = MEMBER_PERMISSIONS | MANAGE_GUILD
ACK_WITHIN = 3.0  # seconds Discord gives a bot to acknowledge an interaction
ADMINISTRATOR = 1 << 3
DIRECT_MESSAGES = 1 << 12  # the gateway intent for DMs
TOKEN_LIFE = 15 * 60.0  # seconds an interaction token can send follow-ups and edits


@dataclass
class Request:
    method: str
    path: str
    json: Any
    files: dict[str, bytes]
    at: float
    query: dict[str, str] = field(default_factory=dict)
    throttled: bool = False  # answered 429: the client sends it again
    status: int = 0  # the answer's HTTP status, once routed


def _now() -> str:
    return datetime.now(UTC).isoformat()


class FakeDiscord:
    """Start with `await server.start()`; then point the bot at `server.api_base` / `server.gateway_url`."""

    def __init__(self) -> None:
        self._ids = itertools.count(1_000_000_000_000_000_000)
        self.guild_id = self.new_id()
        self.app_id = self.new_id()
        self.bot_user = self.user("RoleplayBot", bot=True)
        self.admin_role = self.new_id()
        self.bot_role = self.new_id()  # the bot's own role: it may manage webhooks unless a test says no
        self.bot_manage_webhooks = True
        self.webhooks: dict[int, dict[str, Any]] = {}  # channel webhooks, by id
        self.webhook_channels: dict[str, str] = {}  # every webhook ever made -> its channel
        self._pressed: dict[str, dict[str, Any]] = {}  # component interaction token -> its message
        # Called with each message the bot posts, before the bot gets the answer to its request: what
        # users do the moment a message appears.
        self.on_bot_message: Callable[[dict[str, Any]], Awaitable[None]] | None = None
        self.channels = {name: self.new_id() for name in ("general", "roleplay", "quiet", "side")}
        self.dm_channels: dict[str, int] = {}  # user id -> their direct-message channel with the bot
        self.outsiders: set[str] = set()  # users who share no server with the bot (others are members)
        self.requests: list[Request] = []
        # Requests Discord's API description rejects (each answered 400 / 50035 as Discord would).
        self.violations: list[str] = []
        # Everyone a message of the bot's pinged, as Discord computes it, on posting and on every edit.
        self.pings: list[str] = []
        self.refuse_command_sync = False
        # Channel permission overwrites (channel id -> Discord's overwrite objects), and commands a
        # server admin opened to everyone in the server's integration settings.
        self.overwrites: dict[int, list[dict[str, Any]]] = {}
        self.command_overrides: set[str] = set()
        # Overwrites the bot sees on a channel (its own role's, say), sent with the server at connect.
        self.channel_overwrites: dict[int, list[dict[str, Any]]] = {}
        self.hidden_attempts: list[str] = []  # commands a member tried that Discord hides from them
        self._interactions: dict[str, float] = {}  # token -> when the interaction was sent
        self.token_life = TOKEN_LIFE
        # Off unless a test sets it: at most `rate_limit` writes per route and channel per `rate_window`.
        self.rate_limit: int | None = None
        self.rate_window = 1.0
        self.throttled = 0  # 429 answers given
        self._buckets: dict[tuple[str, str], list[float]] = {}
        self.known_users: dict[int, dict[str, Any]] = {}  # everyone who posted or was named
        self.known_users[int(self.bot_user["id"])] = self.bot_user
        self.messages: dict[int, dict[str, Any]] = {}
        self.attachments: dict[str, bytes] = {}
        self.commands: list[dict[str, Any]] = []
        self.nickname: str | None = None
        self._sockets: list[web.WebSocketResponse] = []
        self._seq = 0
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.identified = asyncio.Event()
        self.identify_payload: dict[str, Any] = {}
        self._original: dict[str, Any] = {}  # the latest interaction response message

    def new_id(self) -> int:
        return next(self._ids)

    @staticmethod
    def user(name: str, *, bot: bool = False, user_id: int | None = None) -> dict[str, Any]:
        uid = user_id or int(time.time_ns() % 10**17) + 10**18
        return {
            "id": str(uid),
            "username": name.lower(),
            "global_name": name,
            "discriminator": "0",
            "avatar": None,
            "bot": bot,
        }

    # -- lifecycle --------------------------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        """Listen on `port` (0: any free one)."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{name}", self._attachment)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # -- gateway ----------------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None})
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            payload = json.loads(msg.data)
            op = payload.get("op")
            if op == 1:
                await ws.send_json({"op": 11, "d": None, "s": None, "t": None})
            elif op in (2, 6):  # identify, or resume (answered as a fresh session)
                self.identify_payload = payload["d"]
                self._sockets.append(ws)
                await self._send(
                    ws,
                    "READY",
                    {
                        "v": 10,
                        "user": self.bot_user,
                        "guilds": [{"id": str(self.guild_id), "unavailable": True}],
                        "session_id": "local-session",
                        "resume_gateway_url": self.gateway_url,
                        "application": {"id": str(self.app_id), "flags": 0},
                        "private_channels": [],
                        "relationships": [],
                        "shard": [0, 1],
                    },
                )
                await self._send(ws, "GUILD_CREATE", self.guild_payload())
                self.identified.set()
        if ws in self._sockets:
            self._sockets.remove(ws)
        return ws

    async def _send(self, ws: web.WebSocketResponse, event: str, data: dict[str, Any]) -> None:
        self._seq += 1
        await ws.send_json({"op": 0, "t": event, "s": self._seq, "d": data})

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        for ws in list(self._sockets):
            if not ws.closed:
                await self._send(ws, event, data)

    async def drop_connections(self) -> None:
        """Close every gateway socket, as a restart of the bot process would see it."""
        for ws in list(self._sockets):
            await ws.close()
        self._sockets.clear()
        self.identified.clear()

    def guild_payload(self) -> dict[str, Any]:
        gid = str(self.guild_id)
        bot_member = {
            "user": self.bot_user,
            "roles": [str(self.bot_role)] if self.bot_manage_webhooks else [],
            "joined_at": _now(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": self.nickname,
        }
        return {
            "id": gid,
            "name": "Local Test Server",
            "icon": None,
            "owner_id": "1",
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "premium_tier": 0,
            "nsfw_level": 0,
            "preferred_locale": "en-US",
            "features": [],
            "system_channel_flags": 0,
            "premium_progress_bar_enabled": False,
            "large": False,
            "unavailable": False,
            "member_count": 3,
            "joined_at": _now(),
            "emojis": [],
            "stickers": [],
            "roles": [
                {
                    "id": gid,
                    "name": "@everyone",
                    "permissions": str(MEMBER_PERMISSIONS),
                    "position": 0,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                },
                {
                    "id": str(self.bot_role),
                    "name": "RoleplayBot",
                    "permissions": str(MEMBER_PERMISSIONS | MANAGE_WEBHOOKS),
                    "position": 1,
                    "color": 0,
                    "hoist": False,
                    "managed": True,
                    "mentionable": False,
                    "flags": 0,
                },
                {
                    "id": str(self.admin_role),
                    "name": "Admin",
                    "permissions": str(ADMIN_PERMISSIONS),
                    "position": 1,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": True,
                    "flags": 0,
                },
            ],
            "channels": [
                {
                    "id": str(cid),
                    "type": 0,
                    "name": name,
                    "position": i,
                    "permission_overwrites": self.channel_overwrites.get(cid, []),
                    "guild_id": gid,
                    "nsfw": False,
                    "parent_id": None,
                    "topic": None,
                    "rate_limit_per_user": 0,
                }
                for i, (name, cid) in enumerate(self.channels.items())
            ],
            "members": [bot_member],
            "threads": [],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    # -- what users do --------------------------------------------------------------------------------

    def _rate_limited(self, method: str, path: str) -> float:
        """Seconds to wait when `rate_limit` requests of this route and channel were already made within
        `rate_window` (Discord's per-route buckets); 0 when the request may go."""
        if self.rate_limit is None or method == "GET":
            return 0.0
        bucket = (method, re.sub(r"/messages/\d+", "/messages/ID", path))
        now = time.monotonic()
        recent = [t for t in self._buckets.get(bucket, []) if now - t < self.rate_window]
        if len(recent) >= self.rate_limit:
            self._buckets[bucket] = recent
            return round(self.rate_window - (now - recent[0]) + 0.01, 3)
        self._buckets[bucket] = [*recent, now]
        return 0.0

    def _expired(self, token: str) -> bool:
        created = self._interactions.get(token)
        return created is not None and time.monotonic() - created > self.token_life

    def permissions(self, admin: bool, channel: int | None = None) -> int:
        """A member's permissions as Discord computes them: @everyone's and their roles' permissions, then
        the channel's overwrites (@everyone's, then their roles', deny before allow)."""
        roles = [self.admin_role] if admin else []
        base = MEMBER_PERMISSIONS | (ADMIN_PERMISSIONS if admin else 0)
        if base & ADMINISTRATOR:
            return ~0 & ((1 << 53) - 1)
        overwrites = self.overwrites.get(channel or 0, [])
        for wanted in [self.guild_id, *roles]:
            for overwrite in overwrites:
                if int(overwrite["id"]) == wanted:
                    base = (base & ~int(overwrite["deny"])) | int(overwrite["allow"])
        return base

    def member(self, user: dict[str, Any], admin: bool = False) -> dict[str, Any]:
        return {
            "user": user,
            "roles": [str(self.admin_role)] if admin else [],
            "joined_at": _now(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "nick": None,
            "avatar": None,
            "permissions": str(self.permissions(admin)),
        }

    def dm_channel(self, user: dict[str, Any]) -> int:
        """The user's direct-message channel with the bot (made on first use, as Discord does)."""
        self.known_users[int(user["id"])] = user
        return self.dm_channels.setdefault(user["id"], self.new_id())

    def is_dm(self, channel: int | str) -> bool:
        return int(channel) in self.dm_channels.values()

    def _message(self, channel: int, author: dict[str, Any], content: str, **extra: Any) -> dict[str, Any]:
        message: dict[str, Any] = {
            "id": str(self.new_id()),
            "channel_id": str(channel),
            "guild_id": str(self.guild_id),
            "author": author,
            "content": content,
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
            "components": [],
        }
        message.update(extra)
        if self.is_dm(channel):  # a direct message is in no server: no guild id, no member
            message.pop("guild_id")
            message.pop("member", None)
        self.messages[int(message["id"])] = message
        return message

    async def say(
        self,
        channel: int,
        user: dict[str, Any],
        content: str,
        *,
        mention_bot: bool = False,
        mentions: Sequence[dict[str, Any]] = (),
        reply_to: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A user posts a message (MESSAGE_CREATE reaches the bot); `mentions` are users named in it."""
        for known in (user, *mentions):
            self.known_users[int(known["id"])] = known
        extra: dict[str, Any] = {"member": {k: v for k, v in self.member(user).items() if k != "user"}}
        if mentions:
            content = " ".join(f"<@{u['id']}>" for u in mentions) + f" {content}"
            extra["mentions"] = [
                {**u, "member": {k: v for k, v in self.member(u).items() if k != "user"}} for u in mentions
            ]
        if mention_bot:
            content = f"<@{self.bot_user['id']}> {content}"
            extra["mentions"] = [*extra.get("mentions", []), self.bot_user]
        if reply_to is not None:
            extra.update(
                type=19,
                message_reference={
                    "message_id": reply_to["id"],
                    "channel_id": str(channel),
                    "guild_id": str(self.guild_id),
                },
                referenced_message=reply_to,
            )
        message = self._message(channel, user, content, **extra)
        if self.is_dm(channel) and not int(self.identify_payload.get("intents", 0)) & DIRECT_MESSAGES:
            return message  # Discord sends a bot DMs only when it asked for them
        await self.dispatch("MESSAGE_CREATE", message)
        return message

    async def edit(self, message: dict[str, Any], content: str) -> None:
        message.update(content=content, edited_timestamp=_now(), **self._mentions(content, None))
        await self.dispatch("MESSAGE_UPDATE", message)

    async def bulk_delete(self, messages: Sequence[dict[str, Any]]) -> None:
        """A moderator purges several messages of one channel at once."""
        await self.dispatch(
            "MESSAGE_DELETE_BULK",
            {
                "ids": [m["id"] for m in messages],
                "channel_id": messages[0]["channel_id"],
                "guild_id": str(self.guild_id),
            },
        )

    async def delete(self, message: dict[str, Any]) -> None:
        await self.dispatch(
            "MESSAGE_DELETE",
            {"id": message["id"], "channel_id": message["channel_id"], "guild_id": str(self.guild_id)},
        )

    def upload(self, name: str, data: bytes, content_type: str = "image/png") -> dict[str, Any]:
        """A file a user attaches to a slash command (served from /attachments/)."""
        self.attachments[name] = data
        aid = str(self.new_id())
        url = f"http://127.0.0.1:{self.port}/attachments/{name}"
        return {
            "id": aid,
            "filename": name,
            "size": len(data),
            "url": url,
            "proxy_url": url,
            "content_type": content_type,
        }

    async def slash(
        self,
        channel: int,
        user: dict[str, Any],
        name: str,
        options: list[dict[str, Any]] | None = None,
        *,
        admin: bool = False,
        resolved: dict[str, Any] | None = None,
        kind: int = 2,
        data: dict[str, Any] | None = None,
        message: dict[str, Any] | None = None,
        forced: bool = False,
    ) -> str:
        """A user runs a slash command (or presses a button, kind=3); returns the interaction token, or ""
        when Discord would not even offer the command to this member (its default permission)."""
        iid, token = self.new_id(), f"token-{self.new_id()}"
        command = next((c for c in self.commands if c["name"] == name), None)
        granted = self.permissions(admin, channel)
        required = int((command or {}).get("default_member_permissions") or 0)
        direct = self.is_dm(channel)
        contexts = (command or {}).get("contexts") or [0, 1]  # Discord's default: servers and bot DMs
        if forced:  # a stale command list in the member's client: Discord's gates are not asked
            pass
        elif kind == 2 and direct and (1 not in contexts or (command or {}).get("dm_permission") is False):
            self.hidden_attempts.append(name)  # not offered in DMs
            return ""
        elif (
            kind == 2
            and not direct  # Discord applies no member permissions in DMs
            and required
            and granted & required != required
            and name not in self.command_overrides
        ):
            self.hidden_attempts.append(name)
            return ""
        payload = data or {
            "id": command["id"] if command else str(self.new_id()),
            "name": name,
            "type": 1,
            "options": options or [],
        }
        if resolved:
            payload["resolved"] = resolved
        interaction = {
            "id": str(iid),
            "application_id": str(self.app_id),
            "type": kind,
            "data": payload,
            "guild_id": str(self.guild_id),
            "channel_id": str(channel),
            "channel": {
                "id": str(channel),
                "type": 0,
                "guild_id": str(self.guild_id),
                "name": "x",
                "position": 0,
                "permission_overwrites": [],
                "nsfw": False,
                "parent_id": None,
            },
            "member": {**self.member(user, admin), "permissions": str(granted)},
            "token": token,
            "version": 1,
            "app_permissions": str(ADMIN_PERMISSIONS),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild_id)},
            "context": 0,
            "attachment_size_limit": 25 * 1024 * 1024,
        }
        if direct:  # as Discord sends a DM's interaction: the user, no server, no member
            for key in ("guild_id", "member", "guild_locale"):
                interaction.pop(key)
            interaction.update(
                user=user,
                context=1,
                channel={"id": str(channel), "type": 1, "recipients": [user]},
                authorizing_integration_owners={"0": "0"},
            )
        if message is not None:
            interaction["message"] = message
            self._pressed[token] = message
        self._interactions[token] = time.monotonic()
        await self.dispatch("INTERACTION_CREATE", interaction)
        return token

    def last_answer(self) -> dict[str, Any]:
        """The message of the bot's latest interaction answer (where its buttons are)."""
        assert self._original, "the bot has not answered an interaction yet"
        return self._original

    async def press(
        self,
        channel: int,
        user: dict[str, Any],
        message: dict[str, Any],
        button: dict[str, Any],
        *,
        admin: bool = False,
    ) -> str:
        """A user presses a button of `message`; returns the interaction token."""
        data = {"custom_id": button["custom_id"], "component_type": 2}
        return await self.slash(channel, user, "", kind=3, admin=admin, message=message, data=data)

    async def choose(
        self,
        channel: int,
        user: dict[str, Any],
        message: dict[str, Any],
        menu: dict[str, Any],
        values: list[str],
        *,
        admin: bool = False,
    ) -> str:
        """A user picks `values` in a select menu of `message`; returns the interaction token."""
        offered = {option["value"] if "value" in option else option["label"] for option in menu["options"]}
        assert set(values) <= offered, f"{values} are not offered by the menu ({sorted(offered)})"
        data = {"custom_id": menu["custom_id"], "component_type": 3, "values": values}
        return await self.slash(channel, user, "", kind=3, admin=admin, message=message, data=data)

    def webhook_posts(self, channel: int) -> Callable[[Request], bool]:
        """Messages executed through a webhook of `channel` (not an interaction's follow-ups), including
        webhooks deleted since."""

        def executed(r: Request) -> bool:
            parts = r.path.split("/")
            return (
                r.method == "POST"
                and r.status == 200
                and len(parts) == 4
                and parts[1] == "webhooks"
                and self.webhook_channels.get(parts[2]) == str(channel)
            )

        return executed

    # -- REST ---------------------------------------------------------------------------------------------

    async def _attachment(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.requests.append(Request("GET", f"/attachments/{name}", None, {}, time.perf_counter()))
        if name not in self.attachments:
            return web.Response(status=404)
        return web.Response(body=self.attachments[name], content_type="application/octet-stream")

    async def _read(self, request: web.Request) -> tuple[Any, dict[str, bytes], dict[str, bytes]]:
        """The JSON body, the files by file name (for tests), and the parts by form name (for the spec)."""
        files: dict[str, bytes] = {}
        parts: dict[str, bytes] = {}
        body: Any = None
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":  # type: ignore[union-attr]
                    body = json.loads(await part.text())  # type: ignore[union-attr]
                else:
                    data = bytes(await part.read())  # type: ignore[union-attr]
                    files[part.filename or part.name or "file"] = data  # type: ignore[union-attr]
                    parts[part.name or ""] = data  # type: ignore[union-attr]
        elif request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        return body, files, parts

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        body, files, parts = await self._read(request)
        record = Request(request.method, path, body, files, time.perf_counter(), dict(request.query))
        self.requests.append(record)
        multipart = request.content_type.startswith("multipart/")
        try:
            wait = self._rate_limited(request.method, path)
            if wait:
                self.throttled += 1
                record.throttled = True
                limited = {"message": "You are being rate limited.", "retry_after": wait, "global": False}
                throttled = _json(limited, status=429)
                # Discord's own 429s pass its proxy ("Via"); discord.py takes others for a Cloudflare ban.
                throttled.headers.update(
                    {"Retry-After": f"{wait:.3f}", "X-RateLimit-Scope": "user", "Via": "1.1 google"}
                )
                return throttled
            invalid = discord_spec.check(request.method, path, dict(request.query), body, parts, multipart)
            if invalid is not None:
                self.violations.append(invalid[0])
                return _json(invalid[1], status=400 if invalid[1].get("code") == 50035 else 404)
            response = await self._route(
                request.method, path.split("/")[1:], body, files, dict(request.query)
            )
            record.status = response.status
        finally:
            async with self._changed:
                self._changed.notify_all()
        return response

    def _bot_message(
        self,
        channel: int,
        body: dict[str, Any],
        files: dict[str, bytes],
        author: dict[str, Any] | None = None,
        **more: Any,
    ) -> dict[str, Any]:
        attachments = []
        for i, (name, data) in enumerate(files.items()):
            self.attachments[name] = data
            url = f"http://127.0.0.1:{self.port}/attachments/{name}"
            attachments.append(
                {
                    "id": str(self.new_id() + i),
                    "filename": name,
                    "size": len(data),
                    "url": url,
                    "proxy_url": url,
                }
            )
        content = body.get("content") or ""
        extra: dict[str, Any] = {
            "embeds": body.get("embeds") or [],
            "attachments": attachments,
            "components": body.get("components") or [],
        }
        extra |= self._bot_mentions(content, body.get("allowed_mentions"), "posted")
        if body.get("message_reference"):
            # Discord answers with string snowflakes, whatever form the request used.
            reference = body["message_reference"]
            extra["message_reference"] = {
                k: str(v) if k.endswith("_id") and v is not None else v for k, v in reference.items()
            }
            extra["type"] = 19
        return self._message(channel, author or self.bot_user, content, **extra, **more)

    def _bot_mentions(self, content: str, allowed: dict[str, Any] | None, what: str) -> dict[str, Any]:
        mentions = self._mentions(content, allowed)
        pinged = [f"@{u['username']}" for u in mentions["mentions"]] + [
            f"role {r}" for r in mentions["mention_roles"]
        ]
        pinged += ["@everyone"] if mentions["mention_everyone"] else []
        if pinged:
            self.pings.append(f"{what}: {', '.join(pinged)} in {content[:80]!r}")
        return mentions

    def _mentions(self, content: str, allowed: dict[str, Any] | None) -> dict[str, Any]:
        """Who a message pings, as Discord computes it: the mentions in its text that its
        allowed_mentions permit (everything, when it has none)."""
        allowed = {"parse": ["users", "roles", "everyone"]} if allowed is None else allowed
        parse = allowed.get("parse") or []
        user_ids = [int(i) for i in re.findall(r"<@!?(\d+)>", content)]
        users = [
            self.known_users[i]
            for i in dict.fromkeys(user_ids)
            if i in self.known_users and ("users" in parse or str(i) in map(str, allowed.get("users") or []))
        ]
        roles = [
            r
            for r in dict.fromkeys(re.findall(r"<@&(\d+)>", content))
            if "roles" in parse or r in map(str, allowed.get("roles") or [])
        ]
        everyone = "everyone" in parse and bool(re.search(r"@(everyone|here)\b", content))
        return {"mentions": users, "mention_roles": roles, "mention_everyone": everyone}

    async def _route(
        self,
        method: str,
        parts: list[str],
        body: Any,
        files: dict[str, bytes],
        query: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        ok = _json
        query = query or {}
        match (method, parts):
            case ("GET", ["users", "@me"]):
                return ok(self.bot_user)
            case ("GET", ["oauth2", "applications", "@me"]) | ("GET", ["applications", "@me"]):
                return ok(
                    {
                        "id": str(self.app_id),
                        "name": "RoleplayBot",
                        "icon": None,
                        "description": "",
                        "bot_public": True,
                        "bot_require_code_grant": False,
                        "verify_key": "0" * 64,
                        "owner": self.user("Owner", user_id=1),
                        "team": None,
                        "flags": 0,
                        "summary": "",
                    }
                )
            case ("GET", ["gateway" | "gateway", *_]):
                return ok(
                    {
                        "url": self.gateway_url,
                        "shards": 1,
                        "session_start_limit": {
                            "total": 1000,
                            "remaining": 1000,
                            "reset_after": 0,
                            "max_concurrency": 1,
                        },
                    }
                )
            case ("PUT", ["applications", _, "commands"]) | (
                "PUT",
                ["applications", _, "guilds", _, "commands"],
            ):
                if self.refuse_command_sync:  # as Discord answers a command it does not accept
                    error = {"_errors": [{"code": "APPLICATION_COMMAND_TOO_LARGE", "message": "Too large"}]}
                    return ok(
                        {"message": "Invalid Form Body", "code": 50035, "errors": {"0": error}}, status=400
                    )
                self.commands = [
                    {**c, "id": str(self.new_id()), "application_id": str(self.app_id), "version": "1"}
                    for c in body
                ]
                return ok(self.commands)
            case ("POST", ["channels", _, "typing"]):
                return web.Response(status=204)
            case ("GET", ["channels", channel, "messages"]):
                # As Discord: the `limit` messages right after `after` (or the newest), newest first.
                after, limit = int(query.get("after", 0)), int(query.get("limit", 50))
                mine = sorted(
                    m for m, msg in self.messages.items() if msg["channel_id"] == channel and m > after
                )
                chosen = mine[:limit] if "after" in query else mine[-limit:]
                return ok([self.messages[m] for m in reversed(chosen)])
            case ("POST", ["channels", channel, "messages"]):
                message = self._bot_message(int(channel), body or {}, files)
                await self.dispatch("MESSAGE_CREATE", message)
                if self.on_bot_message is not None:
                    await self.on_bot_message(message)
                return ok(message)
            case ("GET", ["channels", channel, "webhooks"]) | ("POST", ["channels", channel, "webhooks"]) if (
                not self.bot_manage_webhooks
            ):
                return ok({"message": "Missing Permissions", "code": 50013}, status=403)
            case ("GET", ["channels", channel, "webhooks"]):
                return ok([w for w in self.webhooks.values() if w["channel_id"] == channel])
            case ("POST", ["channels", channel, "webhooks"]):
                wid = self.new_id()
                webhook = {
                    "id": str(wid),
                    "type": 1,
                    "guild_id": str(self.guild_id),
                    "channel_id": channel,
                    "user": self.bot_user,
                    "name": body["name"],
                    "avatar": None,
                    "token": f"webhook-token-{wid}",
                    "application_id": str(self.app_id),
                }
                self.webhooks[wid] = webhook
                self.webhook_channels[str(wid)] = channel
                return ok(webhook)
            case ("DELETE", ["webhooks", wid]):
                self.webhooks.pop(int(wid), None)
                return web.Response(status=204)
            case ("POST", ["webhooks", wid, token]) if int(wid) != self.app_id:
                hook = self.webhooks.get(int(wid))
                if hook is None or hook["token"] != token:
                    return ok({"message": "Unknown Webhook", "code": 10015}, status=404)
                author = {
                    "id": wid,
                    "username": (body or {}).get("username") or hook["name"],
                    "avatar": None,
                    "discriminator": "0000",
                    "global_name": None,
                    "bot": True,  # as Discord marks every webhook message's author
                }
                message = self._bot_message(
                    int(hook["channel_id"]),
                    body or {},
                    files,
                    author,
                    webhook_id=wid,
                    application_id=str(self.app_id),
                )
                await self.dispatch("MESSAGE_CREATE", message)
                if self.on_bot_message is not None:
                    await self.on_bot_message(message)
                return ok(message)
            case ("PATCH", ["webhooks", _, token, "messages", _]) | ("POST", ["webhooks", _, token]) if (
                self._expired(token)
            ):
                self.violations.append(f"interaction token used after {self.token_life:g} s")
                return ok({"message": "Invalid Webhook Token", "code": 50027}, status=401)
            case ("PATCH", ["channels", _, "messages", mid]) | ("PATCH", ["webhooks", _, _, "messages", mid]):
                found = self.messages.get(int(mid)) if mid != "@original" else self._original_of(parts[2])
                if found is None:
                    return ok({"message": "Unknown Message", "code": 10008}, status=404)
                message = found
                if body and "content" in body:
                    message["content"] = body["content"] or ""
                    # Discord parses an edited text's mentions again, by the edit's own allowed_mentions.
                    message.update(
                        self._bot_mentions(message["content"], body.get("allowed_mentions"), f"edit of {mid}")
                    )
                for key in ("embeds", "components"):
                    if body and key in body:
                        message[key] = body[key] or []
                if files or (body and "attachments" in body):
                    message["attachments"] = self._bot_message(int(message["channel_id"]), {}, files)[
                        "attachments"
                    ]
                message["edited_timestamp"] = _now()
                return ok(message)
            case ("GET", ["webhooks", _, token, "messages", "@original"]):
                return ok(self._original_of(token))
            case ("PUT", ["channels", _, "messages", _, "reactions", _, "@me"]):
                return web.Response(status=204)
            case ("DELETE", ["channels", _, "messages", _]):
                return web.Response(status=204)
            case ("GET", ["guilds", _, "members", user_id]):
                known = self.known_users.get(int(user_id))
                if known is None or user_id in self.outsiders:
                    return ok({"message": "Unknown Member", "code": 10007}, status=404)
                return ok(self.member(known))
            case ("PATCH", ["guilds", _, "members", "@me"]):
                self.nickname = (body or {}).get("nick")
                return ok(self.member(self.bot_user) | {"nick": self.nickname})
            case ("POST", ["interactions", iid, token, "callback"]):
                created = self._interactions.get(token)
                if created is not None and time.monotonic() - created > ACK_WITHIN:
                    # Discord forgets an interaction that was not acknowledged in time.
                    self.violations.append(f"interaction {iid} acknowledged after {ACK_WITHIN:g} s")
                    return ok({"message": "Unknown interaction", "code": 10062}, status=404)
                data = (body or {}).get("data") or {}
                kind = (body or {}).get("type")
                if kind in (6, 7) and token in self._pressed:
                    # A component's answer is its own message: deferred (6), or updated at once (7).
                    pressed = self._original_of(token)
                    for key in ("content", "embeds", "components"):
                        if kind == 7 and key in data:
                            pressed[key] = data[key] or ([] if key != "content" else "")
                    return ok(
                        {
                            "interaction": {
                                "id": iid,
                                "type": 3,
                                "response_message_id": pressed["id"],
                                "response_message_loading": False,
                                "response_message_ephemeral": False,
                            },
                            "resource": {"type": kind, "message": pressed},
                        }
                    )
                self._original = self._bot_message(0, data, files)
                self._original["flags"] = data.get("flags", 0)
                response = {
                    "interaction": {
                        "id": iid,
                        "type": 2,
                        "response_message_id": self._original["id"],
                        "response_message_loading": kind == 5,
                        "response_message_ephemeral": bool(data.get("flags", 0) & 64),
                    },
                    "resource": {"type": kind, "message": self._original},
                }
                return ok(response)
            case ("POST", ["webhooks", _, _]):
                return ok(self._bot_message(0, body or {}, files))
        return ok(
            {"message": f"404: {method} /{'/'.join(parts)} is not implemented here", "code": 0}, status=404
        )

    def _original_of(self, token: str) -> dict[str, Any]:
        """An interaction's @original: a pressed component's own message, else the latest answer."""
        pressed = self._pressed.get(token)
        return self.messages.get(int(pressed["id"]), pressed) if pressed is not None else self._original

    def delete_webhooks(self, channel: int) -> None:
        """A server admin deletes the channel's webhooks (in the channel settings)."""
        for wid in [w for w, hook in self.webhooks.items() if hook["channel_id"] == str(channel)]:
            del self.webhooks[wid]

    # -- assertions -------------------------------------------------------------------------------------

    def sent(self, predicate: Callable[[Request], bool] = lambda r: True) -> list[Request]:
        return [r for r in self.requests if predicate(r)]

    async def wait_for(
        self, predicate: Callable[[Request], bool], limit: float = 60.0, count: int = 1
    ) -> list[Request]:
        """Wait until `count` recorded requests match (the bot works concurrently with the test)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.sent(predicate)) >= count), limit)
        return self.sent(predicate)


def _json(data: Any, status: int = 200) -> web.Response:
    # Exactly 'application/json', as Discord sends it: discord.py compares the header verbatim.
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"}
    )


def posts_to(channel: int) -> Callable[[Request], bool]:
    return lambda r: r.method == "POST" and r.path == f"/channels/{channel}/messages"


def typing_in(channel: int) -> Callable[[Request], bool]:
    return lambda r: r.method == "POST" and r.path == f"/channels/{channel}/typing"


def callbacks(token: str) -> Callable[[Request], bool]:
    return lambda r: r.path.endswith(f"/{token}/callback") or f"/{token}" in r.path


def button(message: dict[str, Any], custom_id: str) -> dict[str, Any]:
    """The component of a posted message with this custom id (a reply's 🔄, ◀, ▶ or face menu)."""
    for row in message["components"]:
        for item in row["components"]:
            if item["custom_id"] == custom_id:
                return item
    raise AssertionError(f"no {custom_id} on the message: {message['components']}")
