from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import Config, discord_token, load_config
from bot.errors import ConfigError

from .support.configs import REPO, shipped


def test_repository_config_is_valid_and_documented() -> None:
    config = load_config(shipped() / "config.toml")
    assert config.model.n_ctx == 4096
    assert config.persona.default == "mira"
    assert config.root == shipped()
    # Every setting has a comment above it: a reader never meets an unexplained key.
    lines = (shipped() / "config.toml").read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            above = lines[i - 1].strip()
            assert above.startswith("#") or "=" in above, f"undocumented setting: {line}"


def test_defaults_match_the_shipped_file() -> None:
    assert load_config(shipped() / "config.toml").model == Config().model


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[model]\nn_ctx = "big"\n', "key 'model.n_ctx' must be an integer, got str 'big'"),
        ("[model]\ncontext = 10\n", "key 'model.context' is not a known setting"),
        ("[nonsense]\na = 1\n", "key 'nonsense' is not a known setting"),
        ("[model]\ntemperature = true\n", "key 'model.temperature' must be a number"),
        ('[discord]\ndefault_mode = "sometimes"\n', "key 'discord.default_mode' must be one of"),
        ("[model]\nn_ctx = 100\n", "key 'model.n_ctx' must be at least 512"),
        ("[model]\nn_threads = -3\n", "key 'model.n_threads' must not be negative"),
        ("model = 3\n", "key 'model' must be a table"),
        ('[discord]\ntoken = "abc"\n', "set DISCORD_TOKEN instead"),
        ("[model\n", "not valid TOML"),
        ("[memory]\nrecall_lines = 100\n", "key 'memory.recall_lines' must be at most 32"),
        ("[memory]\nmax_pins = 0\n", "key 'memory.max_pins' must be between 1 and 200"),
        ("[memory]\nsummary_tokens = 100000\n", "key 'memory.summary_tokens' must be at most 8192"),
        ("[memory]\nenabled = 1\n", "key 'memory.enabled' must be true or false"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_bad_config_exits_with_status_2(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[model]\nn_ctx = "big"\n')
    done = subprocess.run(
        [sys.executable, "-m", "bot", "--config", str(path), "persona", "list"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"{path}: key 'model.n_ctx' must be an integer" in done.stderr
    assert "Traceback" not in done.stderr


def test_token_comes_only_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    assert discord_token() is None
    monkeypatch.setenv("DISCORD_TOKEN", "  abc.def  ")
    assert discord_token() == "abc.def"


def test_relative_paths_resolve_next_to_the_config(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[store]\npath = "db/x.sqlite3"\n')
    assert load_config(path).resolve("db/x.sqlite3") == tmp_path.resolve() / "db/x.sqlite3"


def test_help_names_the_command_people_type_and_describes_every_subcommand() -> None:
    import argparse

    from bot.cli.main import _parser

    parser = _parser()
    assert parser.format_usage().startswith("usage: ./run ")

    def undescribed(p: argparse.ArgumentParser, path: str) -> list[str]:
        missing = []
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                described = {a.dest for a in action._choices_actions if a.help}
                for name, sub in action.choices.items():
                    if name not in described:
                        missing.append(f"{path} {name}")
                    missing += undescribed(sub, f"{path} {name}")
        return missing

    assert undescribed(parser, "./run") == []
