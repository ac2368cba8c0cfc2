"""The local Discord server checks requests against Discord's own API description and refuses invalid
ones exactly as Discord does, so a wrong API call by the bot fails the test that made it."""

from __future__ import annotations

import aiohttp
import pytest

from .support.discord_server import FakeDiscord
from .support.discord_spec import check

CHANNEL = "/channels/1000000000000000003/messages"


def test_a_valid_message_passes() -> None:
    body = {"content": "hi", "allowed_mentions": {"parse": []}, "message_reference": {"message_id": "1"}}
    assert check("POST", CHANNEL, {}, body, {}, multipart=False) is None
    assert check("POST", CHANNEL, {}, body, {"files[0]": b"png"}, multipart=True) is None


@pytest.mark.parametrize(
    ("method", "path", "query", "body", "parts", "wrong"),
    [
        ("POST", CHANNEL, {}, {"content": 5}, {}, "body content: 5 is not of type"),
        ("POST", CHANNEL, {}, {"content": "x" * 4001}, {}, "content: str fails maxLength 4000"),
        ("POST", CHANNEL, {}, {"allowed_mentions": {"parse": ["friends"]}}, {}, "allowed_mentions"),
        ("POST", "/channels/general/messages", {}, {"content": "hi"}, {}, "path parameter channel_id"),
        ("GET", CHANNEL, {"limit": "1000"}, None, {}, "query parameter limit"),
        ("GET", CHANNEL, {"colour": "red"}, None, {}, "unknown query parameter colour"),
        ("POST", CHANNEL, {}, {"content": "hi"}, {"image": b"png"}, "multipart part 'image' is not files[n]"),
        ("PUT", CHANNEL, {}, None, {}, "method not allowed"),
        ("PATCH", "/guilds/1/members/@me", {}, {"nick": "N" * 33}, {}, "body nick"),
        ("POST", CHANNEL, {}, {"allowed_mentions": {"parse": "users"}}, {}, "allowed_mentions"),
        ("GET", "/channels/1/teleport", {}, None, {}, "no such route"),
    ],
)
def test_invalid_requests_are_refused_naming_the_problem(method, path, query, body, parts, wrong) -> None:
    result = check(method, path, query, body, parts, multipart=bool(parts))
    assert result is not None and wrong in result[0]


def test_the_refusal_is_discords_invalid_form_body() -> None:
    result = check("POST", CHANNEL, {}, {"content": 5, "tts": "yes"}, {}, multipart=False)
    assert result is not None
    _, body = result
    assert body["code"] == 50035 and body["message"] == "Invalid Form Body"
    assert set(body["errors"]) == {"content", "tts"} and body["errors"]["content"]["_errors"]


async def test_the_server_answers_an_invalid_request_as_discord_does() -> None:
    server = FakeDiscord()
    await server.start()
    try:
        url = f"{server.api_base}/channels/{server.channels['general']}/messages"
        headers = {"Authorization": "Bot local-test-token"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json={"content": 42}, headers=headers) as r,
        ):
            assert r.status == 400
            body = await r.json()
        assert body["code"] == 50035 and "content" in body["errors"]
        assert len(server.violations) == 1 and "body content" in server.violations[0]
    finally:
        await server.stop()


async def test_an_interaction_acknowledged_too_late_is_unknown() -> None:
    server = FakeDiscord()
    await server.start()
    try:
        user = FakeDiscord.user("Milo", user_id=2_000_000_000_000_000_002)
        token = await server.slash(server.channels["general"], user, "status")
        server._interactions[token] -= 10  # sent ten seconds ago
        iid = "1000000000000000099"
        url = f"{server.api_base}/interactions/{iid}/{token}/callback"
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json={"type": 5}) as response,
        ):
            assert response.status == 404
            assert (await response.json())["code"] == 10062
        assert server.violations == [f"interaction {iid} acknowledged after 3 s"]
    finally:
        await server.stop()


def test_permissions_come_from_roles_and_channel_overwrites() -> None:
    from .support.discord_server import ADMIN_PERMISSIONS, MANAGE_GUILD, MEMBER_PERMISSIONS

    server = FakeDiscord()
    general, quiet = server.channels["general"], server.channels["quiet"]
    assert server.permissions(admin=False, channel=general) == MEMBER_PERMISSIONS
    assert server.permissions(admin=True, channel=general) == ADMIN_PERMISSIONS
    # A channel that lets the admin role manage the server's settings there, and takes sending from everyone.
    send = 1 << 11
    server.overwrites[quiet] = [
        {"id": str(server.guild_id), "type": 0, "allow": "0", "deny": str(send)},
        {"id": str(server.admin_role), "type": 0, "allow": str(send), "deny": "0"},
    ]
    assert not server.permissions(admin=False, channel=quiet) & send
    assert server.permissions(admin=True, channel=quiet) & send
    assert server.permissions(admin=True, channel=quiet) & MANAGE_GUILD
