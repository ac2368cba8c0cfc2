"""The studio's guard and API over real HTTP on a real engine: nothing without the token, no foreign
Host, no cross-site change, bounded uploads, the command line's one-line errors with nothing written,
edits, exports, sprite packs, render progress and the channel list."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tomllib
import zipfile
from pathlib import Path

import aiohttp
import pytest

from bot.config import load_config
from bot.errors import BotError
from bot.personas import PersonaLibrary

from .support.cardfiles import V2_CARD, b64json, plain_png, with_text_chunks
from .support.configs import REPO, folder_snapshot, write_config
from .support.studio import Served, served, studio_config

pytestmark = pytest.mark.slow  # the real bundled model backs the engine

PAGE_AND_API = [
    "/",
    "/studio.js",
    "/studio.css",
    "/api/personas",
    "/api/personas/mira",
    "/api/personas/mira/portrait",
    "/api/personas/mira/faces",
    "/api/personas/mira/card.png",
    "/api/channels",
]


@pytest.fixture
async def studio(tmp_path: Path):
    config = load_config(write_config(tmp_path / "bot", "[persona]\nmax_card_bytes = 200000\n"))
    async with served(config) as s:
        yield s


def on_disk(s: Served) -> dict[str, bytes]:
    return {k: v for k, v in folder_snapshot(s.folder).items() if not k.startswith("data/")}


async def test_nothing_is_served_without_the_token(studio: Served) -> None:
    async with aiohttp.ClientSession() as http:
        for path in PAGE_AND_API:
            for cookies in (
                {},
                {"studio_token": "not-the-token"},
                {"studio_token": studio.studio.token[:-1]},
            ):
                async with http.get(studio.base + path, cookies=cookies) as r:
                    assert r.status == 401, (path, cookies)
                    assert "needs its token" in (await r.json())["error"]
        # A token in the address of a changing request is not a way in either.
        async with http.put(
            f"{studio.base}/api/personas/mira/face?token={studio.studio.token}",
            json={"box": [10, 10, 50, 50]},
            headers=studio.origin,
        ) as r:
            assert r.status == 401


async def test_the_printed_link_sets_a_strict_cookie_and_leaves_the_address(studio: Served) -> None:
    assert studio.link == f"{studio.base}/?token={studio.studio.token}"
    # unsafe=True: aiohttp's jar otherwise keeps no cookies from an IP address (browsers do).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(studio.link, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/"
            cookie = r.headers["Set-Cookie"]
            assert f"studio_token={studio.studio.token}" in cookie
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            assert r.headers["Referrer-Policy"] == "no-referrer"
        async with http.get(studio.base + "/") as r:  # the session's cookie jar now holds it
            assert r.status == 200 and "<title>Studio" in await r.text()
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            assert r.headers["X-Frame-Options"] == "DENY"


async def test_a_foreign_host_header_is_refused(studio: Served) -> None:
    port = studio.studio.port
    async with aiohttp.ClientSession(cookies=studio.cookies) as http:
        for host in (
            f"evil.example:{port}",
            f"127.0.0.1.evil.example:{port}",
            f"127.0.0.1:{port + 1}",
            "127.0.0.1",
        ):
            async with http.get(studio.base + "/api/personas", headers={"Host": host}) as r:
                assert r.status == 421, host
        for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
            async with http.get(studio.base + "/api/personas", headers={"Host": host}) as r:
                assert r.status == 200, host


async def test_a_malformed_request_is_refused_in_one_log_line(studio: Served, caplog) -> None:
    """Two Host headers (one of them foreign): refused before any route runs, and the studio's terminal
    gets one line, not a traceback."""
    port = studio.studio.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /api/personas HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example\r\n"
        f"Cookie: studio_token={studio.studio.token}\r\n\r\n".encode()
    )
    await writer.drain()
    answer = await reader.read(4096)
    writer.close()
    assert answer.startswith(b"HTTP/1.0 400") and b"Duplicate 'Host' header" in answer
    assert b"mira" not in answer
    refused = [r for r in caplog.records if "malformed request" in r.getMessage()]
    assert len(refused) == 1 and "Duplicate 'Host' header" in refused[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    async with (
        aiohttp.ClientSession(cookies=studio.cookies) as http,
        http.get(studio.base + "/api/personas") as r,
    ):
        assert r.status == 200  # and the studio goes on


async def test_cross_site_requests_change_nothing(studio: Served) -> None:
    before = on_disk(studio)
    card = with_text_chunks(plain_png(), {"chara": b64json(V2_CARD)})
    async with aiohttp.ClientSession(cookies=studio.cookies) as http:
        for origin in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {}):
            async with http.put(
                studio.base + "/api/personas/mira/face", json={"box": [1, 1, 40, 40]}, headers=origin
            ) as r:
                assert r.status == 403, origin
            async with http.post(
                studio.base + "/api/personas", data=card, headers={**origin, "X-Filename": "c.png"}
            ) as r:
                assert r.status == 403, origin
        assert on_disk(studio) == before
        # The page's own origin may.
        async with http.put(
            studio.base + "/api/personas/mira/face", json={"box": [150, 190, 200, 200]}, headers=studio.origin
        ) as r:
            assert r.status == 200
    assert tomllib.loads((studio.folder / "persona" / "mira.toml").read_text())["portrait"]["face_box"] == [
        150,
        190,
        200,
        200,
    ]


async def test_uploads_are_bounded_like_card_imports(studio: Served) -> None:
    before = on_disk(studio)
    big = with_text_chunks(
        plain_png(),
        {"chara": b64json({**V2_CARD, "data": {**V2_CARD["data"], "description": "x" * 300_000}})},
    )
    async with aiohttp.ClientSession(cookies=studio.cookies) as http:
        headers = {**studio.origin, "X-Filename": "big.png"}
        async with http.post(studio.base + "/api/personas", data=big, headers=headers) as r:
            assert r.status == 413
            assert (await r.json())[
                "error"
            ] == f"big.png: card file is {len(big)} bytes, more than the 200000 allowed"

        async def chunks():  # no Content-Length: the limit holds while reading
            for _ in range(40):
                yield b"\0" * 10_000

        async with http.post(studio.base + "/api/personas", data=chunks(), headers=headers) as r:
            assert r.status == 413
            assert "more than the 200000 bytes allowed" in (await r.json())["error"]
    assert on_disk(studio) == before


async def test_bad_input_gets_the_command_lines_one_line_error_and_writes_nothing(studio: Served) -> None:
    before = on_disk(studio)
    library = PersonaLibrary.from_config(studio.config)
    broken = plain_png()  # a PNG with no card inside
    with pytest.raises(BotError) as cli:
        library.import_card(broken, "plain.png")
    cases = [
        (
            "post",
            "/api/personas",
            {"data": broken, "headers": {"X-Filename": "plain.png"}},
            400,
            str(cli.value),
        ),
        (
            "put",
            "/api/personas/mira/face",
            {"json": {"box": [400, 700, 300, 300]}},
            400,
            "lies outside the 512x640 portrait",
        ),
        ("put", "/api/personas/mira/face", {"json": {"box": [1, 2, "3", 4]}}, 400, "four whole numbers"),
        (
            "put",
            "/api/personas/mira",
            {"json": {"labels": ["Joy!"]}},
            400,
            "needs 2+ distinct lowercase words",
        ),
        ("put", "/api/personas/mira", {"json": {"name": "  "}}, 400, "key 'name' is missing or empty"),
        (
            "put",
            "/api/personas/mira",
            {"json": {"portrait": "../../etc/passwd"}},
            400,
            "cannot be edited here: portrait",
        ),
        (
            "put",
            "/api/personas/mira",
            {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "not valid JSON",
        ),
        (
            "post",
            "/api/personas/mira/renders",
            {"json": {"labels": ["smug"]}},
            400,
            "labels not in mira's set: smug",
        ),
        (
            "post",
            "/api/personas/mira/sprites",
            {"data": b"PK\x03\x04 not a zip", "headers": {"X-Filename": "pack.zip"}},
            400,
            "pack.zip: not a folder or a readable zip file",
        ),
        ("get", "/api/personas/nobody", {}, 400, "no persona named 'nobody'"),
        ("get", "/api/personas/..%2F..%2Fetc", {}, 400, "is not a valid persona name"),
        ("get", "/api/personas/mira/faces/smug", {}, 404, "mira has no label 'smug'"),
        ("get", "/api/personas/mira/card.png?spec=v9", {}, 400, "spec must be v2 or v3"),
        # Digits that str.isdigit() takes and int() refuses, and numbers no portrait has.
        ("get", "/api/personas/mira/face/preview?box=²,0,10,10", {}, 400, "four whole numbers"),
        ("get", "/api/personas/mira/face/preview?box=٣,0,10,10", {}, 400, "four whole numbers"),
        ("get", "/api/personas/mira/face/preview?box=1,2,3", {}, 400, "four whole numbers"),
        ("get", "/api/personas/mira/face/preview?box=1,2,3,-4", {}, 400, "four whole numbers"),
        ("get", "/api/personas/mira/face/preview?box=1,2,3,99999999999", {}, 400, "four whole numbers"),
    ]
    async with aiohttp.ClientSession(cookies=studio.cookies) as http:
        for method, path, kwargs, status, message in cases:
            headers = {**studio.origin, **kwargs.pop("headers", {})}
            async with http.request(method, studio.base + path, headers=headers, **kwargs) as r:
                body = await r.json()
                assert r.status == status, (path, body)
                assert message in body["error"], (path, body)
                assert "\n" not in body["error"]
    assert on_disk(studio) == before


async def test_edits_exports_and_sprite_packs(studio: Served) -> None:
    mira = studio.folder / "persona" / "mira.toml"
    async with aiohttp.ClientSession(cookies=studio.cookies, headers=studio.origin) as http:
        changes = {"name": "Mira Vale", "description": "A keeper of the light.", "greeting": "Tea?"}
        async with http.put(studio.base + "/api/personas/mira", json=changes) as r:
            assert r.status == 200
        saved = tomllib.loads(mira.read_text())
        assert (saved["name"], saved["description"], saved["greeting"]) == tuple(changes.values())
        assert saved["portrait"]["face_box"] == [166, 200, 180, 190]  # the rest kept

        labels = {"labels": ["neutral", "joy", "smug"], "prompts": {"smug": "smug grin", "joy": ""}}
        async with http.put(studio.base + "/api/personas/mira", json=labels) as r:
            persona = (await r.json())["persona"]
        assert persona["labels"] == ["neutral", "joy", "smug"]
        assert persona["prompts"] == {
            "neutral": "",
            "joy": "",
            "smug": "smug grin",
        }  # emptied: the default words
        assert tomllib.loads(mira.read_text())["emotions"]["prompts"] == {"smug": "smug grin"}

        for spec in ("v2", "v3"):
            async with http.get(studio.base + f"/api/personas/mira/card.png?spec={spec}") as r:
                assert r.headers["Content-Disposition"] == f'attachment; filename="mira-{spec}.png"'
                card = await r.read()
            # Mira's own card: already imported as 'mira'. The page is asked; nothing is written.
            headers = {"X-Filename": f"mira-{spec}.png"}
            async with http.post(studio.base + "/api/personas", data=card, headers=headers) as r:
                assert r.status == 409 and (await r.json())["existing"] == "mira"
            async with http.post(
                studio.base + f"/api/personas?id=mira-{spec}", data=card, headers=headers
            ) as r:
                imported = (await r.json())["persona"]
            assert imported["slug"] == f"mira-{spec}"
            assert imported["name"] == "Mira Vale" and imported["labels"] == ["neutral", "joy", "smug"]

        # Tobin's shipped faces as a pack, exported and imported for Mira.
        async with http.get(studio.base + "/api/personas/tobin/sprites.zip") as r:
            pack = await r.read()
        assert sorted(zipfile.ZipFile(io.BytesIO(pack)).namelist())[:2] == ["amusement.png", "anger.png"]
        async with http.post(
            studio.base + "/api/personas/mira/sprites", data=pack, headers={"X-Filename": "tobin.zip"}
        ) as r:
            report = await r.json()
        assert report["message"].startswith("imported 2 sprites: joy.png, neutral.png")
        async with http.get(studio.base + "/api/personas/mira/faces") as r:
            faces = {f["label"]: f["kind"] for f in (await r.json())["faces"]}
        assert faces == {"neutral": "sprite", "joy": "sprite", "smug": "drawn"}
        async with http.get(studio.base + "/api/personas/mira/sheet.png") as r:
            assert r.status == 200 and (await r.read()).startswith(b"\x89PNG")


async def test_edits_sent_at_once_all_land(studio: Served) -> None:
    """The page sends two edits of one persona at once (two fields, two tabs): each is applied on top of
    the other, none silently undone by a write made from a stale copy."""
    mira = studio.folder / "persona" / "mira.toml"
    async with aiohttp.ClientSession(cookies=studio.cookies, headers=studio.origin) as http:

        async def put(changes: dict[str, str]) -> int:
            async with http.put(studio.base + "/api/personas/mira", json=changes) as r:
                return r.status

        for round_ in range(5):
            edits = [
                {"name": f"Mira {round_}"},
                {"description": f"Keeper, year {round_}."},
                {"greeting": f"Tea, round {round_}?"},
            ]
            assert await asyncio.gather(*(put(e) for e in edits)) == [200, 200, 200]
            saved = tomllib.loads(mira.read_text())
            assert (saved["name"], saved["description"], saved["greeting"]) == (
                f"Mira {round_}",
                f"Keeper, year {round_}.",
                f"Tea, round {round_}?",
            )


async def test_a_portrait_is_added_or_replaced_within_the_card_bounds(studio: Served) -> None:
    """PUT a picture as a persona's portrait: bounded like a card upload (bytes, then pixels), decoded
    and re-encoded, the old face box dropped with the old picture, the new face looked for at once."""
    from bot.personas import PersonaLibrary

    from .support.configs import add_persona

    add_persona(studio.folder, "ada", "Ada", portrait=False)
    cards = REPO.parent / "shared" / "cards"
    face = plain_png()
    if cards.is_dir():  # a JPEG of a card's picture, with a face the detector is sure of
        from PIL import Image

        out = io.BytesIO()
        with Image.open(cards / "st_seraphina.png") as card:
            card.convert("RGB").save(out, "JPEG", quality=85)
        face = out.getvalue()
    path = "/api/personas/ada/portrait"
    async with aiohttp.ClientSession(cookies=studio.cookies, headers=studio.origin) as http:
        before = on_disk(studio)
        for body, status, words in (
            (b"GIF89a not a picture", 400, "ada.gif: the portrait is not a readable image: cannot identify"),
            (
                b"\x89PNG" + b"\0" * 300_000,
                413,
                "ada.gif: portrait is 300004 bytes, more than the 200000 allowed",
            ),
        ):
            async with http.put(studio.base + path, data=body, headers={"X-Filename": "ada.gif"}) as r:
                answer = await r.json()
                assert r.status == status and answer["error"].startswith(words), answer
        assert on_disk(studio) == before  # nothing written
        async with http.put(studio.base + path, data=face, headers={"X-Filename": "ada.jpg"}) as r:
            answer = await r.json()
        assert r.status == 200, answer
        assert answer["message"].startswith("Ada's portrait saved") and answer["persona"]["portrait"]
        ada = PersonaLibrary.from_config(studio.config).load("ada")
        assert ada.portrait == "ada.png" and (studio.folder / "avatars" / "ada.png").is_file()
        if cards.is_dir():
            assert "face found by the anime detector" in answer["message"] and ada.face_box is not None
        # Replaced: Mira's box belonged to her old picture, and goes with it.
        async with http.put(
            studio.base + "/api/personas/mira/portrait", data=face, headers={"X-Filename": "new.jpg"}
        ) as r:
            assert r.status == 200
        mira = PersonaLibrary.from_config(studio.config).load("mira")
        assert mira.face_box != (166, 200, 180, 190)
        async with http.get(studio.base + "/api/personas") as r:
            rows = {p["slug"]: p for p in (await r.json())["personas"]}
        assert rows["ada"]["portrait"]


async def test_detect_only_proposes_and_each_persona_has_its_own_render_job(studio: Served) -> None:
    cards = REPO.parent / "shared" / "cards"
    if cards.is_dir():  # a portrait with a face the detector is sure of, in place of Tobin's
        shutil.copyfile(cards / "st_seraphina.png", studio.folder / "avatars" / "tobin.png")
    before = on_disk(studio)
    async with aiohttp.ClientSession(cookies=studio.cookies, headers=studio.origin) as http:
        async with http.get(studio.base + "/api/personas/tobin/face/detect") as r:
            proposed = await r.json()
        assert r.status == 200 and "box" in proposed
        if cards.is_dir():
            assert proposed["strong"] and proposed["box"] != [*studio.engine.personas.load("tobin").face_box]
        assert on_disk(studio) == before  # proposed only: the persona file is as it was
        # Tobin's faces are drawn (no model here); a job of Mira's running does not take Tobin's click.
        jobs = studio.studio.jobs
        mira, tobin = studio.engine.personas.load("mira"), studio.engine.personas.load("tobin")
        first = jobs.start(mira, ["joy"], force=False)
        second = jobs.start(tobin, ["joy"], force=False)
        again = jobs.start(mira, ["joy"], force=False)
        assert first.state == second.state == "running"
        assert (second.persona, first.persona) == ("tobin", "mira") and second.id != first.id
        assert again.id == first.id  # the same persona's second click joins its job
        assert first.snapshot()["drawn"]  # no inpainting model here: the page says the faces are drawn
        for job in (first, second):
            async with http.get(f"{studio.base}/api/jobs/{job.id}/events") as r:
                async for _line in r.content:
                    pass
            assert job.state == "done", job.error


async def test_a_render_reports_each_face_and_step_and_the_chat_goes_on(
    tmp_path: Path, tiny_pipeline_dir: Path
) -> None:
    config = studio_config(tmp_path / "bot", tiny_pipeline_dir, steps=6)
    async with served(config) as s, aiohttp.ClientSession(cookies=s.cookies, headers=s.origin) as http:
        async with http.post(s.base + "/api/personas/mira/renders", json={"labels": ["joy", "anger"]}) as r:
            assert r.status == 202
            job = await r.json()
        async with http.post(s.base + "/api/personas/mira/renders", json={}) as r:
            assert (await r.json())["id"] == job["id"]  # one job per persona: a second click joins it
        events = []
        turn = asyncio.ensure_future(s.engine.turn(5, "Ren", "Hi Mira!"))  # the chat, meanwhile
        async with http.get(f"{s.base}/api/jobs/{job['id']}/events") as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            async for line in r.content:
                if line.startswith(b"data: "):
                    events.append(json.loads(line[6:]))
        result = await asyncio.wait_for(turn, 120)
        assert result.text
        assert events[-1]["state"] == "done" and events[-1]["done"] == 2
        steps = [(e["label"], e["step"], e["steps"]) for e in events if e["steps"]]
        total = steps[0][2]
        assert total == int(6 * config.expressions.strength)  # strength < 1 skips the first steps
        for label in ("joy", "anger"):
            assert [st for lb, st, _ in steps if lb == label] == list(range(1, total + 1))
        async with http.get(s.base + "/api/personas/mira/faces") as r:
            faces = {f["label"]: f["kind"] for f in (await r.json())["faces"]}
        assert faces["joy"] == faces["anger"] == "render" and faces["neutral"] != "render"


async def test_channels_show_persona_cast_size_and_summary(studio: Served) -> None:
    engine = studio.engine
    await engine.turn(7, "Ren", "Hello there")
    await engine.admin.cast_add(7, "tobin")
    await engine.admin.edit_summary(7, "Ren met Mira at the lighthouse.")
    await engine.admin.configure_channel(8, enabled=True, mode="mention")
    async with (
        aiohttp.ClientSession(cookies=studio.cookies) as http,
        http.get(studio.base + "/api/channels") as r,
    ):
        channels = {c["id"]: c for c in (await r.json())["channels"]}
    assert channels["7"]["cast"] == ["Mira", "Tobin"] and channels["7"]["messages"] >= 2
    assert channels["7"]["summary"] == "Ren met Mira at the lighthouse."
    assert channels["8"]["messages"] == 0 and channels["8"]["mode"] == "mention" and channels["8"]["enabled"]

    async def cast_of(channel: str) -> list[str]:
        async with (
            aiohttp.ClientSession(cookies=studio.cookies) as http,
            http.get(studio.base + "/api/channels") as r,
        ):
            return next(c["cast"] for c in (await r.json())["channels"] if c["id"] == channel)

    (studio.folder / "persona" / "tobin.toml").unlink()  # a member's file gone: it sits out
    assert await cast_of("7") == ["Mira"]
    (studio.folder / "persona" / "mira.toml").unlink()  # the lead's: the channel is still listed, and why
    assert (await cast_of("7"))[0].startswith("mira (unusable: no persona named 'mira'")


def test_the_page_never_parses_text_as_markup() -> None:
    script = (Path(__file__).parent.parent / "bot" / "studio" / "page" / "studio.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["studio", "--host", "0.0.0.0"], "would listen everywhere"),
        (["studio", "--host", "example.com"], "must be an IP address"),
        (["studio", "--port", "70000"], "--port must be between 0"),
        (["run", "--studio", "--host", "::"], "would listen everywhere"),
    ],
)
def test_the_studio_address_is_checked_first(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    from bot.cli.main import main

    config = write_config(tmp_path)
    assert main(["--config", str(config), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


async def test_run_with_studio_serves_discord_and_the_page_on_one_engine(tmp_path: Path) -> None:
    """`run --studio`: the studio beside Discord, on one engine: a Discord turn shows on the page."""
    import contextlib

    from bot.discord.client import serve
    from bot.studio.server import Studio

    from .support.discord_server import FakeDiscord, posts_to
    from .support.harness import bot_config, enable_channel

    server = FakeDiscord()
    await server.start()
    started: asyncio.Queue[Studio] = asyncio.Queue()
    engines: list = []

    @contextlib.asynccontextmanager
    async def alongside(engine):
        engines.append(engine)
        studio = Studio(engine, "127.0.0.1", 0)
        await studio.start()
        await started.put(studio)
        try:
            yield studio
        finally:
            await studio.stop()

    config = bot_config(tmp_path, server, None, cooldown=0.0)
    running = asyncio.create_task(serve(config, "local-test-token", alongside))
    try:
        studio = await asyncio.wait_for(started.get(), 60)
        await asyncio.wait_for(server.identified.wait(), 60)
        admin, member = FakeDiscord.user("Ada", user_id=2_000_000_000_000_000_001), FakeDiscord.user("Milo")
        channel = server.channels["roleplay"]
        await enable_channel(server, channel, admin)
        await server.say(channel, member, "Hello Mira!")
        await server.wait_for(posts_to(channel))
        async with engines[0].scene.lock(channel):  # the turn holds it until its reply is stored
            pass
        cookies = {"studio_token": studio.token}
        async with (
            aiohttp.ClientSession(cookies=cookies) as http,
            http.get(studio.base_url + "/api/channels") as r,
        ):
            rows = {c["id"]: c for c in (await r.json())["channels"]}
        assert rows[str(channel)]["messages"] == 2 and rows[str(channel)]["enabled"]
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await server.drop_connections()
        await server.stop()
