from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from bot.errors import AlreadyImported, CardError, PersonaError
from bot.personas import CARD_EXTENSION, PersonaLibrary
from bot.personas.cards import read_card

from .support.cardfiles import V2_CARD, V3_CARD, b64json, chunk, plain_png, with_text_chunks
from .support.configs import REPO


def load(raw: bytes, name: str = "card.png"):
    return read_card(raw, name, max_bytes=20_000_000, max_pixels=4096 * 4096)


def test_v2_png_made_elsewhere_imports_and_round_trips(library: PersonaLibrary, tmp_path) -> None:
    raw = with_text_chunks(plain_png(), {"chara": b64json(V2_CARD)})
    persona = library.import_card(raw, "rook.png")
    assert persona.slug == "captain-rook" and persona.name == "Captain Rook"
    assert persona.greeting.startswith("*{{char}} grips")  # macros are kept, expanded only in prompts
    assert persona.fill(persona.greeting, "Sam") == "*Captain Rook grips the wheel.* Hold on, Sam!"
    assert len(persona.lorebook) == 2
    reloaded = library.load("captain-rook")
    assert reloaded == persona
    with Image.open(library.portrait_path(reloaded)) as portrait:
        assert portrait.size == (64, 96)

    exported = library.export_card(reloaded, "v2")
    card = load(exported)
    assert card.spec == "v2"
    original = V2_CARD["data"]
    ours = card.data["extensions"].pop(CARD_EXTENSION)  # this project's face settings, added on export
    assert ours["labels"] == list(reloaded.labels) and ours["appearance"] == "portrait of Captain Rook"
    for key, value in original.items():
        assert kept(value, card.data[key]), key  # every field, unknown extensions and the lorebook included
    assert card.portrait is not None and card.portrait.size == (64, 96)


def test_face_settings_survive_a_card_round_trip(library: PersonaLibrary) -> None:
    mira = library.load("mira")
    assert mira.face_box and mira.appearance and mira.emotion_prompts
    custom = dataclasses.replace(
        mira, slug="mira-custom", labels=("neutral", "joy", "smug"), emotion_prompts={"smug": "smirk"}
    )
    for spec in ("v2", "v3"):
        again = library.import_card(library.export_card(custom, spec), "mira.png", slug=f"again-{spec}")
        for field in ("face_box", "appearance", "labels", "emotion_prompts", "name", "greeting", "tags"):
            assert getattr(again, field) == getattr(custom, field), (spec, field)
        # Ours is read into the persona's fields, not kept twice in the card's other data.
        assert CARD_EXTENSION not in again.card_extra.get("extensions", {})
        assert library.load(f"again-{spec}") == again


@pytest.mark.parametrize(
    ("ours", "message"),
    [
        ({"face_box": [1, 2, 3]}, "field 'face_box' must be four non-negative integers"),
        ({"labels": ["joy"]}, "field 'labels' needs 2+ distinct lowercase words"),
        ({"labels": ["joy", "../x"]}, "field 'labels' needs 2+ distinct"),
        ({"emotion_prompts": {"joy": 5}}, "field 'emotion_prompts.joy' must be text"),
        ({"mask": "x.png"}, "unknown field 'mask'"),
        ([], "must be an object"),
    ],
)
def test_bad_face_settings_in_a_card(library: PersonaLibrary, snapshot, ours, message: str) -> None:
    card = {**V2_CARD, "data": {**V2_CARD["data"], "extensions": {CARD_EXTENSION: ours}}}
    before = snapshot(library.dir), snapshot(library.avatars)
    with pytest.raises(CardError, match=re.escape(message)):
        library.import_card(json.dumps(card).encode(), "card.json")
    assert (snapshot(library.dir), snapshot(library.avatars)) == before


def test_v3_png_round_trips_and_ccv3_wins_over_chara(library: PersonaLibrary) -> None:
    raw = with_text_chunks(plain_png(), {"chara": b64json(V2_CARD), "ccv3": b64json(V3_CARD)})
    persona = library.import_card(raw, "rook3.png")
    assert persona.name == "Captain Rook V3"
    card = load(library.export_card(library.load(persona.slug), "v3"))
    assert card.spec == "v3"
    assert card.data["extensions"].pop(CARD_EXTENSION)["labels"] == list(persona.labels)
    for key, value in V3_CARD["data"].items():
        assert kept(value, card.data[key]), key  # the V3 lorebook may gain use_regex: false
    # SillyTavern reads the 'chara' chunk of a V3 export too: it must be a valid V2 card.
    text = _text_chunks(library.export_card(library.load(persona.slug), "v3"))
    v2 = json.loads(base64.b64decode(text["chara"]))
    assert v2["spec"] == "chara_card_v2" and v2["data"]["name"] == "Captain Rook V3"
    assert "assets" not in v2["data"]


def _text_chunks(png: bytes) -> dict[str, str]:
    image = Image.open(io.BytesIO(png))
    image.load()
    return dict(image.text)  # type: ignore[attr-defined]


def test_v1_json_card(library: PersonaLibrary) -> None:
    v1 = {
        "name": "Old Timer",
        "description": "<BOT> talks to <USER>.",
        "first_mes": "Hello.",
        "mes_example": "",
    }
    persona = library.import_card(json.dumps(v1).encode(), "old.json")
    assert persona.fill(persona.description, "Sam") == "Old Timer talks to Sam."
    assert persona.portrait == ""


def test_a_card_imported_again_asks_instead_of_making_a_copy(library: PersonaLibrary) -> None:
    """The same card twice (or the same character renamed since): never a silent captain-rook-2; the
    error names the persona it already is and how to replace it or keep both."""
    raw = json.dumps(V2_CARD).encode()
    assert library.import_card(raw, "a.json").slug == "captain-rook"
    before = sorted(p.name for p in library.dir.iterdir())
    with pytest.raises(
        AlreadyImported, match=r"b\.json: already imported as 'captain-rook'; --force"
    ) as again:
        library.import_card(raw, "b.json")
    assert again.value.slug == "captain-rook"
    assert sorted(p.name for p in library.dir.iterdir()) == before  # nothing written
    library.update(library.load("captain-rook"), {"name": "Rook"})  # renamed since: still the same one
    with pytest.raises(AlreadyImported, match="already imported as 'captain-rook'"):
        library.import_card(raw, "c.json")
    assert library.import_card(raw, "d.json", force=True).slug == "captain-rook"  # replaced
    assert library.load("captain-rook").name == "Captain Rook"
    assert library.import_card(raw, "e.json", slug="rook-two").slug == "rook-two"  # both kept
    other = json.loads(json.dumps(V2_CARD))
    other["data"].update(description="Someone else entirely.", first_mes="Hello.")
    other["data"]["name"] = "Captain Rook!"  # another character whose name makes the same id
    with pytest.raises(AlreadyImported, match="already imported as 'captain-rook'"):
        library.import_card(json.dumps(other).encode(), "f.json")


def test_path_like_names_never_become_paths(library: PersonaLibrary) -> None:
    card = json.loads(json.dumps(V2_CARD))
    card["data"]["name"] = "../../etc/passwd"
    persona = library.import_card(json.dumps(card).encode(), "evil.json")
    assert persona.slug == "etc-passwd"
    assert (library.dir / "etc-passwd.toml").is_file()


def _bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A small file whose header claims `width` x `height` pixels of zeros."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


BAD_CARDS = [
    (b"GIF89a not a png at all", "card.png", "named .png but is not a PNG"),
    (plain_png(), "card.png", "no character data"),
    (with_text_chunks(plain_png(), {"chara": "!!!not base64!!!"}), "card.png", "not valid base64"),
    (
        with_text_chunks(plain_png(), {"chara": base64.b64encode(b"{nope").decode()}),
        "card.png",
        "not valid JSON",
    ),
    (b"{nope", "card.json", "not valid JSON"),
    (b"[1, 2]", "card.json", "must be an object"),
    (json.dumps({"spec": "chara_card_v9", "data": {}}).encode(), "c.json", "unknown card spec"),
    (json.dumps({"spec": "chara_card_v2", "data": {"name": 5}}).encode(), "c.json", "'name' must be text"),
    (json.dumps({"spec": "chara_card_v2", "data": {"name": ""}}).encode(), "c.json", "'name' is missing"),
    (json.dumps({"spec": "chara_card_v2"}).encode(), "c.json", "needs a 'data' object"),
    (json.dumps({"name": "x", "alternate_greetings": "hi"}).encode(), "c.json", "must be a list of text"),
    (
        json.dumps({"name": "x", "character_book": {"entries": [{"keys": 5}]}}).encode(),
        "c.json",
        "'keys' must be",
    ),
    (plain_png()[:40], "card.png", "truncated"),
    (b"", "card.json", "card file is empty"),
]


@pytest.mark.parametrize(("raw", "name", "message"), BAD_CARDS)
def test_bad_cards_get_clear_errors_and_change_nothing(
    library: PersonaLibrary, snapshot, raw, name, message
) -> None:
    before = snapshot(library.dir), snapshot(library.avatars)
    with pytest.raises(CardError, match=message) as info:
        library.import_card(raw, name)
    assert name in str(info.value)
    assert (snapshot(library.dir), snapshot(library.avatars)) == before


def test_oversized_card_is_refused_before_parsing(library: PersonaLibrary, snapshot) -> None:
    before = snapshot(library.dir)
    raw = with_text_chunks(plain_png(), {"chara": b64json(V2_CARD)}) + b"\0" * 50_000_000
    with pytest.raises(CardError, match="more than the 20000000 allowed"):
        library.import_card(raw, "huge.png")
    assert snapshot(library.dir) == before


def test_decompression_bomb_is_refused(library: PersonaLibrary, snapshot) -> None:
    before = snapshot(library.dir), snapshot(library.avatars)
    raw = with_text_chunks(_bomb_png(), {"chara": b64json(V2_CARD)})
    assert len(raw) < 2_000_000
    with pytest.raises(CardError, match="30000x30000 pixels"):
        library.import_card(raw, "bomb.png")
    assert (snapshot(library.dir), snapshot(library.avatars)) == before


def test_our_pixel_limit_applies_below_pillows(library: PersonaLibrary, snapshot) -> None:
    # 4200 x 4200 = 17.6 M pixels: above the configured 16.7 M, far below Pillow's own bomb limit
    # (89 M), so only the project's own check can refuse it.
    before = snapshot(library.dir), snapshot(library.avatars)
    raw = with_text_chunks(_bomb_png(4200, 4200), {"chara": b64json(V2_CARD)})
    with pytest.raises(CardError, match="4200x4200 pixels, more than the 16777216 allowed"):
        library.import_card(raw, "big.png")
    assert (snapshot(library.dir), snapshot(library.avatars)) == before


def test_corrupt_chunk_checksum(library: PersonaLibrary) -> None:
    raw = bytearray(with_text_chunks(plain_png(), {"chara": b64json(V2_CARD)}))
    raw[-30] ^= 0xFF
    with pytest.raises(CardError, match=r"corrupt|truncated"):
        library.import_card(bytes(raw), "c.png")


# -- cards from the wild, and what SillyTavern accepts -------------------------------------------------

SHARED_CARDS = REPO.parent / "shared" / "cards"
V3_ONLY = {"assets", "group_only_greetings", "nickname", "creator_notes_multilingual", "source"}
V3_ONLY |= {"creation_date", "modification_date"}


def wild_cards() -> list[str]:
    if not SHARED_CARDS.is_dir():
        return []
    # SOURCES.md: `s-*` files are formats the project need not import; every other card must round-trip.
    return sorted(
        p.name
        for p in SHARED_CARDS.iterdir()
        if p.suffix in (".png", ".json") and not p.name.startswith("s-")
    )


def kept(original: object, exported: object) -> bool:
    """Everything in `original` is in `exported` unchanged; exported may only add (spec-required) keys."""
    if isinstance(original, dict) and isinstance(exported, dict):
        return all(k in exported and kept(v, exported[k]) for k, v in original.items())
    if isinstance(original, list) and isinstance(exported, list):
        return len(original) == len(exported) and all(map(kept, original, exported))
    return original == exported


@pytest.mark.skipif(not wild_cards(), reason="../shared/cards is not beside this checkout")
@pytest.mark.parametrize("name", wild_cards() or ["none"])
@pytest.mark.parametrize("spec", ["v2", "v3"])
def test_cards_from_the_wild_round_trip(library: PersonaLibrary, name: str, spec: str) -> None:
    raw = (SHARED_CARDS / name).read_bytes()
    original = load(raw, name).data
    persona = library.import_card(raw, name)
    assert persona.name == original["name"]  # spaces and punctuation included
    first = load(library.export_card(persona, spec), "first.png")  # type: ignore[arg-type]
    first.data["extensions"].pop(CARD_EXTENSION)
    for key, value in original.items():
        if spec == "v2" and key in V3_ONLY:
            continue
        assert kept(value, first.data[key]), key
    exported = library.export_card(persona, spec)  # type: ignore[arg-type]
    again = library.import_card(exported, name, slug=f"{persona.slug}-again")
    second = load(library.export_card(again, spec), "second.png")  # type: ignore[arg-type]
    second.data["extensions"].pop(CARD_EXTENSION)
    assert second.data == first.data  # import, export, import again: equal


def test_what_sillytavern_accepts_is_accepted(library: PersonaLibrary) -> None:
    data = {
        "name": "  Lady  Mira ",
        "description": None,
        "first_mes": "Hello.",
        "character_version": 2.5,
        "tags": "fantasy, lighthouse,  ,keeper",
        "alternate_greetings": None,
        "creator_notes": None,
    }
    raw = json.dumps({"spec": "chara_card_v2", "spec_version": "2.0", "data": data}).encode()
    persona = library.import_card(raw, "mira.json")
    assert persona.name == "  Lady  Mira "  # a display name keeps its spaces
    assert persona.slug == "lady-mira"
    assert persona.tags == ("fantasy", "lighthouse", "keeper")
    assert persona.alternate_greetings == () and persona.description == ""
    card = load(library.export_card(persona, "v3"), "out.png")
    assert card.data["character_version"] == "2.5"
    assert card.data["tags"] == ["fantasy", "lighthouse", "keeper"]


def test_v3_export_upgrades_a_v2_lorebook(library: PersonaLibrary) -> None:
    book = {"entries": [{"keys": ["lamp"], "content": "The lamp never goes out."}]}
    data = {"name": "Rook", "first_mes": "Hi", "character_book": book}
    raw = json.dumps({"spec": "chara_card_v2", "spec_version": "2.0", "data": data}).encode()
    persona = library.import_card(raw, "rook.json")
    v3 = load(library.export_card(persona, "v3"), "out.png").data["character_book"]
    assert v3["extensions"] == {}
    assert v3["entries"][0] | {"keys": ["lamp"]} == {
        "keys": ["lamp"],
        "content": "The lamp never goes out.",
        "extensions": {},
        "enabled": True,
        "insertion_order": 100,
        "use_regex": False,
    }
    v2 = load(library.export_card(persona, "v2"), "out.png").data["character_book"]
    assert "use_regex" not in v2["entries"][0] and v2["entries"][0]["extensions"] == {}


def test_importing_over_a_persona_needs_force(library: PersonaLibrary, snapshot) -> None:
    raw = with_text_chunks(plain_png(), {"chara": b64json(V2_CARD)})
    before = snapshot(library.dir)
    with pytest.raises(PersonaError, match="already exists; import with --force"):
        library.import_card(raw, "rook.png", slug="mira")
    assert snapshot(library.dir) == before
    replaced = library.import_card(raw, "rook.png", slug="mira", force=True)
    assert replaced.name == "Captain Rook" and library.load("mira").name == "Captain Rook"


def test_a_charx_card_is_refused_by_name(library: PersonaLibrary) -> None:
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as pack:
        pack.writestr("card.json", json.dumps({"spec": "chara_card_v3", "data": {"name": "X"}}))
    with pytest.raises(CardError, match="CHARX"):
        library.import_card(out.getvalue(), "x.charx")


def test_the_command_line_lists_long_ids_in_columns_and_hints_at_a_shorter_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.cli.main import main

    from .support.configs import write_config

    config = write_config(tmp_path)
    card = json.loads(json.dumps(V2_CARD))
    card["data"]["name"] = "Amanda || Blunt, Depressed Rogue"
    path = tmp_path / "amanda.json"
    path.write_text(json.dumps(card))
    import subprocess
    import sys

    from .support.configs import REPO

    done = subprocess.run(  # a real process: its log lines go where a person sees them
        [sys.executable, "-m", "bot", "--config", str(config), "persona", "import", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout
    assert done.returncode == 0, done.stderr
    assert out.count("imported 'Amanda || Blunt, Depressed Rogue' as persona 'amanda-blunt") == 1
    assert "imported" not in done.stderr  # said once: no log line repeating it
    assert "reads like a title" in out and "such as 'Amanda'" in out and "./run studio" in out
    assert main(["--config", str(config), "persona", "list"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows == [
        "amanda-blunt-depressed-rogue  Amanda || Blunt, Depressed Rogue",
        "mira                          Mira",
        "tobin                         Tobin",
    ]
    plain = json.loads(json.dumps(V2_CARD))
    plain["data"].update(description="A sky pirate.", first_mes="Ahoy.")  # another character
    path.write_text(json.dumps(plain))
    assert main(["--config", str(config), "persona", "import", str(path)]) == 0
    assert "reads like a title" not in capsys.readouterr().out  # "Captain Rook" is a name
