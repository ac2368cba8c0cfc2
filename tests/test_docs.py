"""What a newcomer reads: the README's Discord steps hold everything needed to see the bot work the
first time, in the order it is needed."""

from __future__ import annotations

from .support.configs import REPO


def discord_steps() -> str:
    readme = (REPO / "README.md").read_text()
    return readme.split("## Running it on Discord, step by step", 1)[1].split("\n## ", 1)[0]


def test_the_discord_steps_say_how_to_get_commands_at_once() -> None:
    """Without the server's id, global commands take up to an hour to appear and a first-timer thinks the
    bot is broken: the steps say where the id is and where it goes, before the bot is started."""
    steps = discord_steps()
    for words in ("Developer Mode", "Copy Server ID", "command_guild"):
        assert words in steps, words
    assert steps.index("command_guild") < steps.index("DISCORD_TOKEN=")
