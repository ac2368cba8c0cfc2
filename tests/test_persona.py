from __future__ import annotations

import pytest

from bot.errors import PersonaError
from bot.personas import DEFAULT_SYSTEM_PROMPT, LoreEntry, Persona, PersonaLibrary, check_slug


def test_example_persona_loads(library: PersonaLibrary) -> None:
    mira = library.load("mira")
    assert mira.name == "Mira" and mira.face_box == (166, 200, 180, 190)
    assert library.portrait_path(mira).is_file()  # type: ignore[union-attr]
    assert "joy" in mira.labels and mira.emotion_prompts["joy"]


@pytest.mark.parametrize("name", ["../etc/passwd", "..", "a/b", "x\\y", "", "UPPER/../x", "a" * 80, "ü"])
def test_bad_persona_names(library: PersonaLibrary, name: str) -> None:
    with pytest.raises(PersonaError, match="not a valid persona name"):
        library.load(name)


def test_unknown_persona_lists_the_known_ones(library: PersonaLibrary) -> None:
    with pytest.raises(PersonaError, match=r"no persona named 'nobody' \(available: mira, tobin\)"):
        library.load("nobody")
    # A near miss is named first.
    with pytest.raises(
        PersonaError, match=r"no persona named 'mria' \(did you mean 'mira'\? available: mira"
    ):
        library.load("mria")
    with pytest.raises(PersonaError, match=r"no persona named 'tobn' \(did you mean 'tobin'\?"):
        library.load("tobn")


def test_check_slug_normalises_case() -> None:
    assert check_slug(" Mira ") == "mira"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = 3\n", "key 'name' must be text"),
        ('name = "x"\nmood = "y"\n', "unknown key 'mood'"),
        ('name = "x"\n[portrait]\nface_box = [1, 2]\n', "four non-negative integers"),
        ('name = "x"\n[emotions]\nlabels = ["joy"]\n', r"2\+ distinct lowercase words"),
        ('name = "x"\n[emotions]\nlabels = ["Joy!", "sad"]\n', r"2\+ distinct lowercase words"),
        ('name = ""\n', "key 'name' is missing"),
        ('name = "x\n', "not valid TOML"),
    ],
)
def test_bad_persona_files(library: PersonaLibrary, text: str, message: str) -> None:
    (library.dir / "broken.toml").write_text(text)
    with pytest.raises(PersonaError, match=message) as info:
        library.load("broken")
    assert "broken.toml" in str(info.value)


def test_macros_and_original() -> None:
    p = Persona(
        slug="p",
        name="Mira",
        system_prompt="{{original}} Be terse.",
        post_history_instructions="{{original}}Go.",
    )
    assert (
        p.fill("{{char}} waves at {{USER}}. <BOT> and <USER>.", "Sam") == "Mira waves at Sam. Mira and Sam."
    )
    assert p.system_text() == DEFAULT_SYSTEM_PROMPT + " Be terse."
    assert p.post_history_text() == "Go."


def test_lorebook_triggering() -> None:
    entry = LoreEntry(keys=("art",), content="x")
    assert entry.triggered_by("I love ART")
    assert not entry.triggered_by("let us start")  # whole words only
    selective = LoreEntry(keys=("storm",), content="x", selective=True, secondary_keys=("sky",))
    assert not selective.triggered_by("a storm")
    assert selective.triggered_by("a storm in the sky")
    assert LoreEntry(keys=(), content="x", constant=True).triggered_by("")
    assert not LoreEntry(keys=("a",), content="x", enabled=False).triggered_by("a")
    assert not LoreEntry(keys=("Rook",), content="x", case_sensitive=True).triggered_by("rook")


@pytest.mark.parametrize(
    ("assets", "expected"),
    [
        (
            [{"type": "icon", "uri": "https://example.org/a.png", "name": "main", "ext": "png"}],
            "https://example.org/a.png",
        ),
        (
            [{"type": "icon", "uri": "ccdefault:"}, {"type": "icon", "uri": "https://x.org/b.png"}],
            "https://x.org/b.png",
        ),
        (
            [{"type": "icon", "uri": "http://example.org/a.png"}],
            None,
        ),  # not https: Discord would fetch it in clear
        ([{"type": "icon", "uri": "embeded://assets/icon.png"}], None),  # inside the card: no public address
        ([{"type": "background", "uri": "https://example.org/bg.png"}], None),
        ([{"type": "icon", "uri": "https://example.org/" + "a" * 3000}], None),
        ("https://example.org/a.png", None),  # not a list
        ([None, 3, {"type": "icon", "uri": 7}], None),
    ],
)
def test_a_cards_public_icon_is_the_webhook_avatar(assets: object, expected: str | None) -> None:
    assert Persona(slug="x", name="X", card_extra={"assets": assets}).avatar_url() == expected


def test_imported_files_get_ordinary_modes_and_replaced_ones_keep_theirs(library: PersonaLibrary) -> None:
    """An imported card's portrait and persona file are readable like the shipped ones (0666 less the
    umask, not a temporary file's 0600); a file rewritten in place keeps the mode its owner gave it."""
    import os

    from .support.cardfiles import V2_CARD, b64json, plain_png, with_text_chunks

    umask = os.umask(0o022)
    os.umask(umask)
    card = with_text_chunks(plain_png(), {"chara": b64json(V2_CARD)})
    persona = library.import_card(card, "card.png")
    portrait = library.portrait_path(persona)
    assert portrait is not None
    for path in (portrait, library.path_of(persona.slug)):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, oct(path.stat().st_mode)
    toml = library.path_of(persona.slug)
    toml.chmod(0o640)
    library.set_face_box(persona, (1, 1, 8, 8))
    assert toml.stat().st_mode & 0o777 == 0o640
