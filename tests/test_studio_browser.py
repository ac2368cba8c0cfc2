"""The studio in a real browser (headless Chromium through its DevTools protocol): a card dropped on the
page is imported, the face box is dragged and saved, the faces are shown, a render is started and its
progress followed, each asserted on the page and on disk. STUDIO_SCREENSHOTS=folder keeps screenshots
(the README's come from here)."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
from PIL import Image

from bot.personas.cards import write_card_png

from .support.browser import browser, require_chromium
from .support.configs import add_persona, shipped
from .support.studio import served, studio_config

pytestmark = pytest.mark.slow  # the real bundled model backs the engine


def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("STUDIO_SCREENSHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def selka_card(folder: Path) -> Path:
    """A V2 card PNG as SillyTavern writes one, with a portrait of its own."""
    with Image.open(shipped() / "avatars" / "tobin.png") as tobin:
        portrait = tobin.convert("RGB").rotate(0)
    data = {
        "name": "Selka",
        "description": "{{char}} is a cartographer <b>who</b> maps the sky.",
        "first_mes": "*Selka unrolls a star chart.* Look!",
        "personality": "patient",
        "scenario": "",
        "mes_example": "",
    }
    path = folder / "Selka the Cartographer.png"
    path.write_bytes(write_card_png(portrait, data, "v2"))
    return path


async def test_the_studio_in_a_browser(tmp_path: Path, tiny_pipeline_dir: Path) -> None:
    require_chromium()
    out = shots(tmp_path)
    config = studio_config(tmp_path / "bot", tiny_pipeline_dir)
    async with served(config) as s, browser(tmp_path / "profile") as chrome:
        page = await chrome.new_page()

        # Without the token nothing is served, from this machine too.
        await page.send("Page.navigate", url=s.base + "/")
        text = await page.wait_for("document.readyState === 'complete' && document.body.innerText")
        assert "needs its token" in text
        assert not await page.evaluate("!!document.getElementById('persona-list')")

        # The printed link sets the cookie and lands on the page, without the token in the address.
        await page.goto(s.link)
        await page.wait_for("document.querySelectorAll('#persona-list li').length === 2")
        names = await page.evaluate(
            "[...document.querySelectorAll('#persona-list li span')].map(e => e.textContent)"
        )
        assert names == ["Mira", "Tobin"]
        await page.wait_for("document.querySelectorAll('#faces .face').length === 10")
        await page.screenshot(out / "studio-persona.png")

        # A picture that holds no card: the command line's one line, shown on the page; nothing written.
        plain = tmp_path / "holiday.png"
        Image.new("RGB", (64, 64), (10, 200, 30)).save(plain)
        persona_files = sorted(p.name for p in (s.folder / "persona").iterdir())
        await page.drop_files("#drop", [plain])
        shown = await page.wait_for("$('message').classList.contains('error') && $('message').textContent")
        assert shown.startswith("holiday.png: ") and "\n" not in shown
        assert sorted(p.name for p in (s.folder / "persona").iterdir()) == persona_files

        # Import a card by dropping it on the page.
        card = selka_card(tmp_path)
        await page.drop_files("#drop", [card])
        message = await page.wait_for("/imported/.test($('message').textContent) && $('message').textContent")
        assert message.startswith("imported Selka as 'selka'")
        await page.wait_for("document.querySelectorAll('#persona-list li').length === 3")
        assert await page.evaluate("$('persona-title').textContent") == "Selka"
        # Card text is shown as text, never as markup.
        assert "<b>who</b>" in await page.evaluate("$('f-description').value")
        saved = tomllib.loads((s.folder / "persona" / "selka.toml").read_text())
        assert saved["name"] == "Selka" and (s.folder / "avatars" / "selka.png").is_file()

        # Drag Mira's face box and resize it by its corner, then save.
        await page.click("#persona-list li[data-slug='mira']")
        await page.wait_for("studio.persona && studio.persona.slug === 'mira' && !$('box').hidden")
        await page.wait_for("$('portrait').complete && $('portrait').naturalWidth > 0")
        toml = s.folder / "persona" / "mira.toml"
        before = toml.read_text()
        old_box = await page.evaluate("studio.box")
        assert old_box == [166, 200, 180, 190]
        scale = await page.evaluate("studio.scale")
        await page.scroll_into_view("#stage")
        x, y = await page.center("#box")
        await page.drag((x, y), (x + 30, y + 20))
        moved = await page.evaluate("studio.box")
        assert moved[0] == old_box[0] + round(30 * scale) and moved[1] == old_box[1] + round(20 * scale)
        assert moved[2:] == old_box[2:]
        hx, hy = await page.center("#handle")
        await page.drag((hx, hy), (hx - 20, hy + 10))
        resized = await page.evaluate("studio.box")
        assert resized[:2] == moved[:2]
        assert resized[2] == moved[2] - round(20 * scale) and resized[3] == moved[3] + round(10 * scale)
        await page.click("#show-preview")
        await page.wait_for("!$('mask-preview').hidden && $('mask-preview').naturalWidth > 0")
        assert toml.read_text() == before  # a preview writes nothing
        await page.screenshot(out / "studio-face.png")
        await page.click("#save-face")
        await page.wait_for("/saved in mira.toml/.test($('message').textContent)")
        after = toml.read_text()
        assert tomllib.loads(after)["portrait"]["face_box"] == resized
        changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
        assert changed == [(f"face_box = {old_box}", f"face_box = {resized}")]  # only that line

        # The faces: every label, with where its face comes from (drawn: no renders yet).
        await page.wait_for("document.querySelectorAll('#faces .face').length === 10")
        kinds = await page.evaluate("[...document.querySelectorAll('#faces .face')].map(e => e.dataset.kind)")
        assert set(kinds) <= {"drawn", "portrait"} and "drawn" in kinds
        await page.wait_for(
            "[...document.querySelectorAll('#faces img')].every(i => i.complete && i.naturalWidth > 0)"
        )

        # Render them all and follow the progress.
        await page.click("#render-all")
        await page.wait_for("$('render-status').dataset.state === 'running'")
        await page.screenshot(out / "studio-render.png")
        await page.wait_for("$('render-status').dataset.state === 'done'", within=300)
        seen = await page.evaluate("studio.job.seen")
        assert any(0 < done < 10 for done, _ in seen), seen  # faces counted as they finished
        assert any(step > 0 for _, step in seen), seen  # and denoising steps within a face
        status = await page.evaluate("$('render-status').textContent")
        assert status.startswith("10/10 faces") and "done" in status
        await page.wait_for(
            "[...document.querySelectorAll('#faces .face')].every(e => e.dataset.kind === 'render')"
        )
        await page.wait_for(
            "[...document.querySelectorAll('#faces img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        rendered = sorted(p.name for p in (s.folder / "avatars" / "cache" / "mira").glob("*.png"))
        assert len([n for n in rendered if re.match(r"[a-z]+-0-[0-9a-f]{16}\.png", n)]) == 10
        await page.screenshot(out / "studio-faces.png")

        # Channels: the terminal's channel after one turn, with a cast and a summary.
        await s.engine.turn(0, "Ren", "Hello Mira, any stories tonight?")
        await s.engine.admin.cast_add(0, "tobin")
        await s.engine.admin.edit_summary(0, "Ren sheltered from the storm; Mira told of the drowned bell.")
        await page.click("#tab-channels")
        await page.wait_for("document.querySelectorAll('#channel-rows tr').length === 1")
        cells = await page.evaluate(
            "[...document.querySelectorAll('#channel-rows td')].map(e => e.textContent)"
        )
        assert cells[:4] == ["0 (terminal)", "Mira, Tobin", "always (terminal)", "2"]
        assert cells[5] == "Ren sheltered from the storm; Mira told of the drowned bell."
        await page.screenshot(out / "studio-channels.png")


async def test_a_persona_without_a_portrait_shows_nothing_of_another_and_takes_one(tmp_path: Path) -> None:
    """Ada has no portrait and is the first persona listed (so the page opens on her): no picture, no box,
    no broken image and no other persona's render progress is shown for her, after Mira's either; a
    picture chosen on the page becomes her portrait and her face is looked for."""
    from bot.config import load_config

    from .support.configs import write_config

    require_chromium()
    config = load_config(write_config(tmp_path / "bot"))
    add_persona(config.root, "ada", "Ada", portrait=False)

    def nothing_shown() -> str:
        return (
            "studio.persona && studio.persona.slug === 'ada'"
            " && getComputedStyle($('portrait')).display === 'none' && !$('portrait').getAttribute('src')"
            " && $('box').hidden && !$('no-portrait').hidden && $('render-status').textContent === ''"
            " && document.querySelectorAll('#faces .face').length === 10"
            " && document.querySelectorAll('#faces img').length === 0"
            " && document.querySelectorAll('#faces .no-face').length === 10"
        )

    async with served(config) as s, browser(tmp_path / "profile") as chrome:
        page = await chrome.new_page()
        await page.goto(s.link)
        await page.wait_for("document.querySelectorAll('#persona-list li').length === 3")
        await page.wait_for(nothing_shown())  # opened first
        await page.click("#persona-list li[data-slug='mira']")
        await page.wait_for(
            "studio.persona.slug === 'mira' && !$('box').hidden && $('portrait').naturalWidth > 0"
        )
        await page.click("#render-all")  # drawn faces: the job ends at once, and says so
        await page.wait_for("$('render-status').dataset.state === 'done'")
        said = await page.wait_for(
            "/drew 10 faces/.test($('message').textContent) && $('message').textContent"
        )
        assert "no inpainting model is set" in said and "./run setup" in said
        await page.click("#persona-list li[data-slug='ada']")
        await page.wait_for(nothing_shown())  # nothing of Mira's stays
        await page.evaluate("window.dispatchEvent(new Event('resize'))")  # redraws, with nothing to draw on
        await page.wait_for(nothing_shown() + " && $('box-numbers').textContent === 'none (no portrait yet)'")
        await page.screenshot(shots(tmp_path) / "studio-no-portrait.png")
        picture = tmp_path / "ada.png"
        with Image.open(shipped() / "avatars" / "tobin.png") as tobin:
            tobin.convert("RGB").save(picture)
        await page.choose_files("#portrait-file", [picture])
        said = await page.wait_for(
            "/portrait saved/.test($('message').textContent) && $('message').textContent"
        )
        assert said.startswith("Ada's portrait saved")
        await page.wait_for(
            "studio.persona.slug === 'ada' && getComputedStyle($('portrait')).display !== 'none'"
            " && $('portrait').complete && $('portrait').naturalWidth > 0 && $('no-portrait').hidden"
        )
        await page.wait_for(
            "document.querySelectorAll('#faces img').length === 10"
            " && [...document.querySelectorAll('#faces img')].every(i => i.complete && i.naturalWidth > 0)"
        )
    assert (config.root / "avatars" / "ada.png").is_file()
