"""The package's shape, checked on its source: data flows one way (no module imports a higher layer),
and the front-ends talk to the engine's own methods, never to the store, personas or models inside it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .support.configs import REPO

PACKAGE = REPO / "bot"
# Lowest first. A module may import its own layer or lower ones.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "native", "bounded", "files", "splitting", "speakers", "workers", "config", "images", "gguf"),
    ("store", "cards", "persona", "prompt"),
    ("llm", "emotion", "expressions", "cast"),
    ("engine",),
    ("app",),
    ("client", "cogs", "webhooks", "console", "faces", "expressions_cli", "__main__"),
]
FRONT_ENDS = ("client", "cogs", "webhooks", "console", "expressions_cli", "__main__")
ENGINE_INSIDES = {"store", "personas", "llm", "expressions", "judge", "prompts"}


def layer_of(top: str) -> int:
    for level, names in enumerate(LAYERS):
        if top in names:
            return level
    raise AssertionError(f"bot.{top} has no layer in tests/test_layers.py: add it where it belongs")


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def top_name(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def bot_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level bot module) of every import of the package, at any depth of the file."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bot."):
            found.append((node.lineno, node.module.split(".")[1]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("bot.")]
    return found


def test_no_module_imports_a_higher_layer() -> None:
    wrong = []
    for path in modules():
        own = top_name(path)
        for line, target in bot_imports(ast.parse(path.read_text(), str(path))):
            if target != own and layer_of(target) > layer_of(own):
                wrong.append(f"{path.relative_to(REPO)}:{line} imports bot.{target}")
    assert not wrong, "lower layers must not import higher ones:\n" + "\n".join(wrong)


def test_every_module_has_a_layer() -> None:
    for path in modules():
        layer_of(top_name(path))


def reaches_inside_engine(tree: ast.AST) -> list[int]:
    """Lines with `engine.store`, `self.engine.llm` and the like."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ENGINE_INSIDES:
            owner = node.value
            name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", None)
            if name == "engine":
                lines.append(node.lineno)
    return lines


def test_front_ends_use_only_the_engines_methods() -> None:
    wrong = []
    for path in modules():
        if top_name(path) in FRONT_ENDS:
            for line in reaches_inside_engine(ast.parse(path.read_text(), str(path))):
                wrong.append(f"{path.relative_to(REPO)}:{line}")
    assert not wrong, "front-ends reach past the engine:\n" + "\n".join(wrong)


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("x = self.engine.store.channel(1)", True),
        ("x = engine.llm.name", True),
        ("x = self.engine.face()", False),
    ],
)
def test_the_engine_check_sees_what_it_should(source: str, caught: bool) -> None:
    assert bool(reaches_inside_engine(ast.parse(source))) is caught
