"""What a newcomer reads: the README's Discord steps hold everything needed to see the bot work the
first time, in the order it is needed."""

from __future__ import annotations

import re

from .support.configs import REPO


def discord_steps() -> str:
    readme = (REPO / "README.md").read_text()
    return readme.split("## Putting it on Discord", 1)[1].split("\n## ", 1)[0]


def test_the_discord_steps_say_how_to_get_commands_at_once() -> None:
    """Without the server's id, global commands take up to an hour to appear and a first-timer thinks the
    bot is broken: the steps say where the id is and where it goes, before the bot is started."""
    steps = discord_steps()
    for words in ("Developer Mode", "Copy Server ID", "command_guild"):
        assert words in steps, words
    assert steps.index("command_guild") < steps.index("DISCORD_TOKEN=")


def test_the_readme_is_a_newcomers_page_and_docs_hold_the_rest() -> None:
    """Short enough to finish; every doc it points to exists; no path into the developers' shared folder
    (a user's clone has none)."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for section in (
        "## Two commands",
        "## Chatting in the terminal",
        "## Putting it on Discord",
        "## Your own models",
        "## The studio",
    ):
        assert section in readme, section
    linked = set(re.findall(r"`(docs/[\w-]+\.md)`", readme)) | set(re.findall(r"\((docs/[\w.-]+)\)", readme))
    assert linked and all((REPO / path).is_file() for path in linked), linked
    for doc in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        if doc.name not in ("testing.md", "emotion.md"):  # the developers' own pages may name it
            assert "../shared" not in doc.read_text(), doc.name


def test_shipped_files_say_commands_that_work_from_a_fresh_checkout() -> None:
    """A command a shipped file tells a user to run works as written: `./run …` (`python -m bot` needs the
    project's virtual environment active)."""
    for path in [*(REPO / "persona").glob("*.toml"), REPO / "config.toml", REPO / "README.md"]:
        assert "`python -m bot" not in path.read_text(), path.name
