"""The bad-input corpus: one case per kind of bad input an operator or a member can give. Each must end
with one clear line (no traceback), exit status 2 where a command refuses it, and leave the store,
persona/ and avatars/ byte-identical."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bot.cli.main import main

from .support.cardfiles import V2_CARD
from .support.configs import REPO, folder_snapshot, shipped, write_config

pytestmark = pytest.mark.slow


def state(folder: Path) -> dict[str, dict[str, bytes]]:
    return {part: folder_snapshot(folder / part) for part in ("persona", "avatars", "data")}


def refused(capsys, args: list[str], folder: Path, message: str) -> str:
    """Run a command in-process; it must exit 2 with one line naming the problem and change nothing."""
    before = state(folder)
    code = main(["--config", str(folder / "config.toml"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert message in err, err
    assert state(folder) == before
    return err


def setup(tmp_path: Path, extra: str = "", *, store: bool = True) -> Path:
    """A bot folder as a user has it after some use: config, personas, avatars and a history database."""
    write_config(tmp_path, extra)
    (tmp_path / "data").mkdir(exist_ok=True)
    if store:
        import asyncio

        from bot.store import Store

        async def create() -> None:
            await (await Store.open(tmp_path / "data" / "test.sqlite3")).close()

        asyncio.run(create())
    return tmp_path


# -- config ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("n_ctx = 4294968320\n", "key 'model.n_ctx' must be at most 1048576"),
        (
            "n_ctx = 65536\n",
            "key 'model.n_ctx' = 65536 is more than SmolLM2-135M-Instruct.Q4_1.gguf's training",
        ),
        ("n_threads = 100000\n", "key 'model.n_threads' must be at most the"),
        ("n_batch = 0\n", "key 'model.n_batch' must be at least 1"),
    ],
)
def test_config_out_of_range(tmp_path: Path, extra: str, message: str) -> None:
    folder = setup(tmp_path)
    config = folder / "config.toml"
    text = config.read_text().replace("n_ctx = 2048\n", "") if "n_ctx" in extra else config.read_text()
    config.write_text(text.replace("[model]\n", "[model]\n" + extra, 1))
    refused_by_process(folder, message, "chat")


# -- store ----------------------------------------------------------------------------------------------


def run_cli(folder: Path, *args: str, stdin: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess:
    """The real command in its own process: a hang fails the test instead of stalling the suite."""
    return subprocess.run(
        [sys.executable, "-m", "bot", "--config", str(folder / "config.toml"), *args],
        input=stdin,
        capture_output=True,
        cwd=REPO,
        timeout=timeout,
    )


def refused_by_process(folder: Path, message: str, *args: str) -> None:
    """Like `refused`, in its own process with no input: were the input not refused, `chat` would start,
    reach the end of its input and exit 0, instead of waiting on the test's own standard input."""
    before = state(folder)
    done = run_cli(folder, *args)
    err = done.stderr.decode().strip()
    assert done.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert message in err, err
    assert state(folder) == before


def store_case(tmp_path: Path, name: str) -> tuple[Path, str]:
    folder = setup(tmp_path, store=False)
    db = folder / "data" / "test.sqlite3"
    if name == "folder":
        db.mkdir()
        return folder, "is a folder, not a database file"
    if name == "under a file":
        (folder / "data" / "file").write_text("x")
        config = folder / "config.toml"
        config.write_text(config.read_text().replace("data/test.sqlite3", "data/file/test.sqlite3"))
        return folder, "a parent of this path is a file"
    if name == "not sqlite":
        db.write_bytes(b"this is my diary, not a database\n" * 100)
        return folder, "not an SQLite database"
    if name == "another program's":
        with sqlite3.connect(db) as connection:
            connection.execute("CREATE TABLE bookmarks (url TEXT)")
        return folder, "another program's SQLite database (its tables: bookmarks)"
    if name == "damaged schema":
        import asyncio

        from bot.store import Store

        async def create() -> None:
            await (await Store.open(db)).close()

        asyncio.run(create())
        connection = sqlite3.connect(db)
        connection.execute("DROP TABLE messages")
        connection.commit()
        connection.execute("PRAGMA journal_mode=DELETE")  # at rest, as a copy or a backup tool leaves it
        connection.close()
        return folder, "the database is damaged: table messages is missing"
    with sqlite3.connect(db) as connection:
        connection.execute("PRAGMA user_version = 999")
    return folder, "database schema version 999 is newer than this bot's"


@pytest.mark.parametrize(
    "name", ["folder", "under a file", "not sqlite", "newer schema", "another program's", "damaged schema"]
)
def test_unusable_store(tmp_path: Path, name: str) -> None:
    folder, message = store_case(tmp_path, name)
    refused_by_process(folder, message, "chat")


# -- persona files and card data files ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("book", "message"),
    [
        ({"entries": [{"keys": ["a"], "insertion_order": "first"}]}, "'insertion_order' must be a number"),
        ({"entries": [{"keys": 5}]}, "'keys' must be a list of text, got int"),
        ({"entries": "many"}, "'entries' must be a list, got str"),
        ({"entries": [7]}, "entry 0 must be an object, got int"),
        ([], "must be an object, got list"),
    ],
)
def test_odd_lorebook_in_a_card_data_file(tmp_path: Path, capsys, book, message: str) -> None:
    folder = setup(tmp_path)
    toml = folder / "persona" / "mira.toml"
    toml.write_text(toml.read_text() + '\n[card]\nextra = "mira.card.json"\n')
    (folder / "persona" / "mira.card.json").write_text(json.dumps({"character_book": book}))
    err = refused(capsys, ["persona", "show", "mira"], folder, message)
    assert "mira.toml" in err


def test_card_data_file_that_is_not_an_object(tmp_path: Path, capsys) -> None:
    folder = setup(tmp_path)
    toml = folder / "persona" / "mira.toml"
    toml.write_text(toml.read_text() + '\n[card]\nextra = "mira.card.json"\n')
    (folder / "persona" / "mira.card.json").write_text("[1, 2]")
    refused(
        capsys, ["persona", "show", "mira"], folder, "card data file mira.card.json must hold a JSON object"
    )


def test_persona_too_large_for_the_context_is_named(tmp_path: Path) -> None:
    folder = setup(tmp_path)
    toml = folder / "persona" / "mira.toml"
    toml.write_text(
        toml.read_text().replace('personality = "', 'personality = "' + "very long words " * 900, 1)
    )
    refused_by_process(folder, "persona 'mira' alone needs", "chat")


# -- cards ---------------------------------------------------------------------------------------------


def card_with(**data) -> bytes:
    return json.dumps({**V2_CARD, "data": {**V2_CARD["data"], **data}}).encode()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            card_with(character_book={"entries": [{"keys": ["a"], "insertion_order": "first"}]}),
            "must be a number",
        ),
        (card_with(character_book={"entries": [{"keys": 5}]}), "'keys' must be a list of text"),
        (card_with(character_book={"entries": [{"keys": ["a"], "extensions": 3}]}), "'extensions' must be"),
        (card_with(character_book=[]), "'character_book' must be an object"),
        (card_with(tags=5), "'tags' must be a list of text"),
        (b'{"spec": "chara_card_v2", "data": {"name": "x", "weight": Infinity}}', "Infinity"),
        (b'{"spec": "chara_card_v2", "data": {"name": "x", "n": ' + b"9" * 5000 + b"}}", "5000 digits"),
        (b'{"spec": "chara_card_v2", "data": {"name": "\\ud800x"}}', "lone surrogate"),
        (
            b'{"spec": "chara_card_v2", "data": {"name": "x", "deep": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
            "nested",
        ),
        (card_with(extensions={"expressive_rp_bot": {"face_box": [1, 2]}}), "field 'face_box' must be four"),
    ],
)
def test_bad_cards(tmp_path: Path, capsys, raw: bytes, message: str) -> None:
    folder = setup(tmp_path)
    (tmp_path / "card.json").write_bytes(raw)
    err = refused(capsys, ["persona", "import", str(tmp_path / "card.json")], folder, message)
    assert err.startswith("error: card.json: ")  # the file's name, never an object's repr


def test_null_extensions_and_comma_keys_are_accepted_as_sillytavern_does(tmp_path: Path, capsys) -> None:
    folder = setup(tmp_path)
    raw = card_with(extensions=None, character_book={"entries": [{"keys": "storm, sky", "content": "x"}]})
    (tmp_path / "card.json").write_bytes(raw)
    assert (
        main(["--config", str(folder / "config.toml"), "persona", "import", str(tmp_path / "card.json")]) == 0
    )
    assert "imported 'Captain Rook'" in capsys.readouterr().out


# -- images and sprite packs ------------------------------------------------------------------------------


def test_sprite_pack_that_unpacks_too_large(tmp_path: Path, capsys) -> None:
    folder = setup(tmp_path)
    pack = tmp_path / "bomb.zip"
    with zipfile.ZipFile(pack, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for i in range(20):  # 20 x 9.9 MB of zeros: a small file that unpacks to 198 MB
            archive.writestr(f"joy-{i}.png", b"\0" * 9_900_000)
    assert pack.stat().st_size < 1_000_000
    refused(capsys, ["expressions", "import", "--persona", "mira", str(pack)], folder, "more than 100000000")


def test_sprite_pack_with_a_broken_picture_writes_nothing(tmp_path: Path, capsys) -> None:
    folder = setup(tmp_path)
    pack = tmp_path / "pack.zip"
    good = (shipped() / "avatars" / "sprites" / "mira" / "joy.png").read_bytes()
    with zipfile.ZipFile(pack, "w") as archive:
        archive.writestr("joy.png", good)
        archive.writestr("sadness.png", b"\x89PNG\r\n\x1a\n broken")
    refused(capsys, ["expressions", "import", "--persona", "mira", str(pack)], folder, "sadness.png")


# -- messages ------------------------------------------------------------------------------------------


def test_invalid_utf8_typed_into_the_chat_is_replaced(tmp_path: Path) -> None:
    folder = setup(tmp_path)
    done = run_cli(folder, "chat", "--user", "Sam", stdin=b"caf\xe9 au lait, s'il vous pla\xeet\n/quit\n")
    assert done.returncode == 0, done.stderr.decode()
    assert b"[emotion: " in done.stdout  # the line was answered, and the chat went on to /quit
    with sqlite3.connect(folder / "data" / "test.sqlite3") as db:
        [(content,)] = db.execute("SELECT content FROM messages WHERE role = 'user'").fetchall()
    assert content == "caf\ufffd au lait, s'il vous pla\ufffdt"


# -- the Discord process -------------------------------------------------------------------------------


async def test_sigterm_drains_and_exits_cleanly(tmp_path: Path) -> None:
    import asyncio

    from .support.discord_server import FakeDiscord

    server = FakeDiscord()
    await server.start()
    try:
        discord = f'[discord]\napi_base = "{server.api_base}"\ngateway_url = "{server.gateway_url}"\n'
        folder = setup(tmp_path, discord, store=False)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "--config", str(folder / "config.toml"), "run",
            cwd=REPO,
            env={**os.environ, "DISCORD_TOKEN": "local-test-token"},
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await server.wait_for(lambda r: r.method == "PUT" and "/commands" in r.path, limit=60)
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()
        assert b"SIGTERM received: shutting down" in err and b"Traceback" not in err
    finally:
        await server.stop()


JSON_VALUES = [None, True, 0, -1, 1.5, "", "text", [], ["a"], [1], {}, {"a": 1}, [[]], [{}]]


def test_every_json_value_type_in_every_card_field_is_accepted_or_refused_cleanly(tmp_path: Path) -> None:
    from bot.config import load_config
    from bot.errors import PersonaError
    from bot.personas import PersonaLibrary

    folder = setup(tmp_path)
    library = PersonaLibrary.from_config(load_config(folder / "config.toml"))
    entry_fields = [
        "keys",
        "secondary_keys",
        "content",
        "insertion_order",
        "enabled",
        "selective",
        "constant",
    ]
    entry_fields += ["case_sensitive", "extensions", "use_regex", "name", "priority", "id"]
    cases: list[dict] = []
    for field in [*V2_CARD["data"], "extensions", "character_book", "alternate_greetings", "tags"]:
        cases += [{field: value} for value in JSON_VALUES]
    for field in entry_fields:
        cases += [{"character_book": {"entries": [{"keys": ["a"], field: value}]}} for value in JSON_VALUES]
    cases += [{"character_book": {"entries": value}} for value in JSON_VALUES]
    cases += [
        {"extensions": {"expressive_rp_bot": {k: v}}} for k in ("face_box", "labels") for v in JSON_VALUES
    ]
    outcomes = {"imported": 0, "refused": 0}
    for n, data in enumerate(cases):
        raw = card_with(**data)
        before = state(folder)
        try:
            persona = library.import_card(raw, "card.json", slug=f"fuzz-{n}")
        except PersonaError as exc:  # CardError included: a clear message, nothing written
            assert "card.json" in str(exc) and "\n" not in str(exc), (data, exc)
            assert state(folder) == before, data
            outcomes["refused"] += 1
        else:
            assert library.load(persona.slug) == persona, data  # what was written reads back the same
            outcomes["imported"] += 1
    assert outcomes["imported"] and outcomes["refused"]


# -- files the commands read and write, and their numbers ------------------------------------------------


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a size its data does not have (a decompression bomb's header)."""
    import struct
    import zlib

    from .support.cardfiles import chunk

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _zip_with(flag_bits: int = 0, method: int | None = None) -> bytes:
    """A sprite pack whose one member is encrypted (flag bit 0) or packed with another method (98: PPMd),
    as other archivers write them; zipfile writes neither, so the headers are set by hand."""
    import io
    import struct

    from .support.cardfiles import plain_png

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as pack:
        pack.writestr("joy.png", plain_png())
    raw = bytearray(out.getvalue())
    # (local header, central directory): where the flags and the method sit in each
    for signature, flags_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = raw.index(signature)
        if flag_bits:
            raw[start + flags_at] |= flag_bits
        if method is not None:
            raw[start + method_at : start + method_at + 2] = struct.pack("<H", method)
    return bytes(raw)


def file_case(folder: Path, name: str) -> tuple[list[str], str]:
    """A command given a bad file or number: its arguments and the line it must answer."""
    pack = folder / "pack"
    if name.startswith("sprite folder"):
        pack.mkdir()
        from .support.cardfiles import plain_png

        (pack / "joy.png").write_bytes(plain_png())
        odd = pack / "sadness.png"
        if "link" in name:
            odd.symlink_to(folder / "nowhere.png")
        elif "folder named" in name:
            odd.mkdir()
        else:
            os.mkfifo(odd)
        return ["expressions", "import", "--persona", "mira", str(pack)], "sadness.png: not a regular file"
    zip_pack = folder / "pack.zip"
    import_zip = ["expressions", "import", "--persona", "mira", str(zip_pack)]
    if name == "zip: encrypted member":
        zip_pack.write_bytes(_zip_with(flag_bits=0x1))
        return import_zip, "pack it without a password"
    if name == "zip: PPMd member":
        zip_pack.write_bytes(_zip_with(method=98))
        return import_zip, "pack it with Deflate"
    if name == "sprite pack: a pipe":
        os.mkfifo(zip_pack)
        return import_zip, "not a regular file"
    if name == "face mask claiming 20000x20000":
        (folder / "avatars" / "huge-mask.png").write_bytes(_png_claiming(20000, 20000))
        toml = folder / "persona" / "mira.toml"
        toml.write_text(
            toml.read_text().replace("[portrait]\n", '[portrait]\nface_mask = "huge-mask.png"\n', 1)
        )
        return ["persona", "face", "mira"], "face mask"
    if name == "card import: a pipe":
        os.mkfifo(folder / "card.png")
        return ["persona", "import", str(folder / "card.png")], "not a regular file"
    if name == "card import: a folder":
        (folder / "card.png").mkdir()
        return ["persona", "import", str(folder / "card.png")], "not a regular file"
    missing, onto = str(folder / "nowhere" / "out.png"), str(folder / "persona")
    outputs = {
        "persona export: missing folder": (["persona", "export", "mira", missing], "does not exist"),
        "persona export: onto a folder": (["persona", "export", "mira", onto], "is a folder"),
        "expressions export: missing folder": (
            ["expressions", "export", "--persona", "mira", missing],
            "does not exist",
        ),
        "expressions export: onto a folder": (
            ["expressions", "export", "--persona", "mira", onto],
            "is a folder",
        ),
        "persona face --out: missing folder": (
            ["persona", "face", "mira", "--out", missing],
            "does not exist",
        ),
        "persona face --out: onto a folder, with a new box": (
            ["persona", "face", "mira", "--box", "10", "10", "50", "50", "--out", onto],
            "is a folder",
        ),
        "chat --channel beyond SQLite": (["chat", "--channel", "18446744073709551616"], "--channel must be"),
        "chat --channel negative": (["chat", "--channel", "-1"], "--channel must be between 0 and"),
        "expressions render --variants 0": (
            ["expressions", "render", "--persona", "mira", "--variants", "0"],
            "--variants must be between 1 and 16",
        ),
    }
    return outputs[name]


FILE_CASES = [
    "sprite folder: dangling link",
    "sprite folder: a folder named like an image",
    "sprite folder: a pipe named like an image",
    "zip: encrypted member",
    "zip: PPMd member",
    "sprite pack: a pipe",
    "face mask claiming 20000x20000",
    "card import: a pipe",
    "card import: a folder",
    "persona export: missing folder",
    "persona export: onto a folder",
    "expressions export: missing folder",
    "expressions export: onto a folder",
    "persona face --out: missing folder",
    "persona face --out: onto a folder, with a new box",
    "chat --channel beyond SQLite",
    "chat --channel negative",
    "expressions render --variants 0",
]


@pytest.mark.parametrize("name", FILE_CASES)
def test_bad_files_and_numbers_on_the_command_line(tmp_path: Path, name: str) -> None:
    """In its own process: a pipe that were read would hang it, and the test's time limit ends that."""
    folder = setup(tmp_path)
    args, message = file_case(folder, name)
    refused_by_process(folder, message, *args)


def test_a_config_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    folder = setup(tmp_path)
    config = folder / "config.toml"
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
    done = run_cli(folder, "persona", "list")
    assert done.returncode == 0 and b"mira" in done.stdout, done.stderr


def test_a_pipe_as_the_config_or_the_store_is_one_line(tmp_path: Path) -> None:
    folder = setup(tmp_path, store=False)
    os.mkfifo(folder / "data" / "test.sqlite3")
    refused_by_process(folder, "not a regular file (a pipe or a device)", "chat")
    config = folder / "config.toml"
    text = config.read_text()
    config.unlink()
    os.mkfifo(config)
    done = run_cli(folder, "persona", "list")
    err = done.stderr.decode().strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1 and "not a regular file" in err, err
    config.unlink()
    config.write_text(text)


def test_a_lorebook_number_too_large_names_its_field(tmp_path: Path, capsys) -> None:
    folder = setup(tmp_path)
    book = '{"entries": [{"keys": ["lamp"], "content": "The lamp.", "insertion_order": 1e400}]}'
    card = card_with(character_book={"entries": []}).replace(
        b'"character_book": {"entries": []}', b'"character_book": ' + book.encode()
    )
    (folder / "card.json").write_bytes(card)
    refused(
        capsys,
        ["persona", "import", str(folder / "card.json")],
        folder,
        "insertion_order is a number too large",
    )
