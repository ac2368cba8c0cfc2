"""Faces in Discord, end to end on the local Discord server with no diffusion model: an imported card
gets its face found (or is told how to mark it), /manage face shows and sets the box, and every label
of an imported persona shows its own drawn face."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from .support.discord_server import FakeDiscord, callbacks
from .support.harness import bot_config, running_bot

pytestmark = pytest.mark.slow

ADMIN = FakeDiscord.user("Ada", user_id=2_000_000_000_000_000_001)
MEMBER = FakeDiscord.user("Milo", user_id=2_000_000_000_000_000_002)
CARDS = Path(__file__).resolve().parent.parent.parent / "shared" / "cards"


async def answer(server: FakeDiscord, token: str, has: str) -> tuple[str, dict[str, bytes]]:
    """The text and files of the bot's answer to one interaction once it says `has`."""
    [reply] = await server.wait_for(lambda r: callbacks(token)(r) and has in str(r.json), limit=60)
    body = reply.json or {}
    return str((body.get("data") or body).get("content")), reply.files


async def import_card(server: FakeDiscord, channel: int, path: Path) -> str:
    upload = server.upload(path.name, path.read_bytes())
    option = {"name": "import", "type": 1, "options": [{"name": "card", "type": 11, "value": upload["id"]}]}
    resolved = {"attachments": {upload["id"]: upload}}
    return await server.slash(channel, ADMIN, "manage", [option], admin=True, resolved=resolved)


def face_command(**values: Any) -> list[dict[str, Any]]:
    kinds = {bool: 5, int: 4, str: 3}
    options = [{"name": k, "type": kinds[type(v)], "value": v} for k, v in values.items()]
    return [{"name": "face", "type": 1, "options": options}]


@pytest.mark.skipif(not CARDS.is_dir(), reason="../shared/cards is not beside this checkout")
async def test_imported_cards_get_their_faces_found_shown_and_set(
    server: FakeDiscord, tmp_path: Path
) -> None:
    config = bot_config(tmp_path, server, None)
    # Real cards are larger than the harness's attachment bound.
    config = dataclasses.replace(
        config, discord=dataclasses.replace(config.discord, max_attachment_bytes=10**6)
    )
    channel = server.channels["general"]
    personas = tmp_path / "persona"
    async with running_bot(config, server) as run:
        # A card whose face the detector finds: the box is kept and the preview posted.
        token = await import_card(server, channel, CARDS / "st_seraphina.png")
        text, files = await answer(server, token, "Imported")
        assert "face found by the anime detector at [138, 79, 125, 125]" in text
        assert files["face.png"].startswith(b"\x89PNG")
        seraphina = tomllib.loads((personas / "seraphina.toml").read_text())
        assert seraphina["portrait"]["face_box"] == [138, 79, 125, 125]
        # A hooded face: nothing kept, and the answer says how to set the box here.
        token = await import_card(server, channel, CARDS / "aicharlib_melina.png")
        text, files = await answer(server, token, "Imported")
        assert "no face found in the portrait; faces show as a badge" in text
        assert "drag the box over it in the studio" in text and not files
        assert "use `/manage face` with x, y, width and height" in text
        assert "face_box" not in (personas / "melina.toml").read_text()
        # Members are not offered the command; half a box is refused; a whole one is saved and shown.
        assert await server.slash(channel, MEMBER, "manage", face_command(name="melina")) == ""
        token = await server.slash(channel, ADMIN, "manage", face_command(x=150, y=120), admin=True)
        await answer(server, token, "Give all of `x`, `y`, `width` and `height`")
        box = face_command(x=150, y=120, width=140, height=150, name="melina")
        token = await server.slash(channel, ADMIN, "manage", box, admin=True)
        text, files = await answer(server, token, "Saved")
        assert "Saved Melina's face box: `[150, 120, 140, 150]`" in text and "face.png" in files
        assert tomllib.loads((personas / "melina.toml").read_text())["portrait"]["face_box"] == [
            150,
            120,
            140,
            150,
        ]
        # A box outside the portrait is one line, and the file is unchanged.
        before = (personas / "melina.toml").read_bytes()
        outside = face_command(x=300, y=500, width=140, height=150, name="melina")
        token = await server.slash(channel, ADMIN, "manage", outside, admin=True)
        await answer(server, token, "lies outside the 400x600 portrait")
        assert (personas / "melina.toml").read_bytes() == before
        # Every label of the imported persona shows its own drawn face, with no diffusion model.
        seraphina_persona = run.engine.admin.persona_named(channel, "seraphina")
        labels = (await seraphina_persona).labels
        shown: set[bytes] = set()
        for label in labels:
            await run.engine.admin.set_persona(channel, "seraphina")
            option = [{"name": "show", "type": 1, "options": [{"name": "label", "type": 3, "value": label}]}]
            token = await server.slash(channel, MEMBER, "expression", option)
            _, files = await answer(server, token, f"Seraphina: *{label}*")
            shown.add(files["expression.png"])
        assert len(shown) == len(labels)
