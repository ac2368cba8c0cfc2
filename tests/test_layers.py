"""The package's shape, checked on its source: data flows one way (no module imports a higher layer),
and the front-ends talk to the engine's own methods, never to the store, personas or models inside it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .support.configs import REPO
from .support.parsing import parse

PACKAGE = REPO / "bot"
# Lowest first. A module may import its own layer or lower ones.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "native", "bounded", "files", "workers", "config", "config_chat", "images"),  # shared
    ("store", "personas"),  # data
    ("llm",),  # the models that write
    ("emotion", "expressions", "memory"),  # the models that judge and draw, and memory
    ("core",),  # the turn
    ("discord", "terminal", "studio", "cli", "__main__"),  # front-ends
]
FRONT_ENDS = ("discord", "terminal", "studio", "cli", "__main__")
# Front-ends that start the others (the command line runs Discord and the terminal chat).
LAUNCHERS = ("cli", "__main__")
ENGINE_INSIDES = {
    "store",
    "personas",
    "llm",
    "expressions",
    "judge",
    "prompts",
    "models",
    "scene",
    "composer",
}


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
        for line, target in bot_imports(parse(path.read_text(), str(path))):
            if target != own and layer_of(target) > layer_of(own):
                wrong.append(f"{path.relative_to(REPO)}:{line} imports bot.{target}")
    assert not wrong, "lower layers must not import higher ones:\n" + "\n".join(wrong)


def test_every_module_has_a_layer() -> None:
    for path in modules():
        layer_of(top_name(path))


def _chain(node: ast.expr) -> list[str]:
    """The names an attribute chain passes through: `self.engine.admin` -> [admin, engine, self]."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        names.append(node.id)
    return names


def reaches_inside_engine(tree: ast.AST) -> list[int]:
    """Lines with `engine.store`, `self.engine.llm`, `engine.admin.store`, `engine._anything` and the like:
    the engine's public parts are its methods and `admin` and `replies`' methods."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        if (node.attr in ENGINE_INSIDES or node.attr.startswith("_")) and "engine" in _chain(node.value):
            lines.append(node.lineno)
    return lines


def test_front_ends_do_not_import_each_other() -> None:
    """Discord and the terminal stand side by side; only the command line starts them."""
    wrong = []
    for path in modules():
        own = top_name(path)
        if own in FRONT_ENDS and own not in LAUNCHERS:
            for line, target in bot_imports(parse(path.read_text(), str(path))):
                if target in FRONT_ENDS and target != own:
                    wrong.append(f"{path.relative_to(REPO)}:{line} imports bot.{target}")
    assert not wrong, "front-ends import each other:\n" + "\n".join(wrong)


def test_front_ends_use_only_the_engines_methods() -> None:
    wrong = []
    for path in modules():
        if top_name(path) in FRONT_ENDS:
            for line in reaches_inside_engine(parse(path.read_text(), str(path))):
                wrong.append(f"{path.relative_to(REPO)}:{line}")
    assert not wrong, "front-ends reach past the engine:\n" + "\n".join(wrong)


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("x = self.engine.store.channel(1)", True),
        ("x = engine.llm.name", True),
        ("x = self.engine.admin.face()", False),
    ],
)
def test_the_engine_check_sees_what_it_should(source: str, caught: bool) -> None:
    assert bool(reaches_inside_engine(parse(source))) is caught


MAX_LINES = 450  # ../shared/ARCHITECTURE.md: no module over about this without a stated reason
LONG_REASON = "Longer than 450 lines because"


def test_no_module_is_long_without_a_stated_reason() -> None:
    long = []
    for path in modules():
        lines = path.read_text().count("\n")
        docstring = ast.get_docstring(parse(path.read_text())) or ""
        if lines > MAX_LINES and LONG_REASON not in " ".join(docstring.split()):
            long.append(f"{path.relative_to(REPO)}: {lines} lines")
    assert not long, f"over {MAX_LINES} lines with no '{LONG_REASON} …' in the docstring:\n" + "\n".join(long)


def test_the_readme_code_map_lists_every_module() -> None:
    """The code map (docs/architecture.md) names each module of bot/ once, and nothing that is not there."""
    readme = (REPO / "docs" / "architecture.md").read_text()
    block = readme.split("<!-- code map:", 1)[1].split("```", 2)[1]
    listed: set[str] = set()
    folders: list[str] = []  # the folders the current line sits in, by its indent (two spaces a level)
    for line in block.splitlines()[2:]:  # after "bot/"
        if not line.strip():
            continue
        name = line.split()[0]
        depth = (len(line) - len(line.lstrip(" "))) // 2 - 1
        del folders[depth:]
        if name.endswith("/"):
            folders.append(name)
        else:
            listed.add("".join(folders) + name)
    actual = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "__pycache__" not in p.parts and (p.name != "__init__.py" or p.parent == PACKAGE)
    }
    assert listed == actual, (
        f"missing from the map: {sorted(actual - listed)}; gone: {sorted(listed - actual)}"
    )


def test_a_spurious_ast_constructor_error_is_parsed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from .support import parsing

    real, failures = ast.parse, iter([True, False])

    def flaky(source: str, filename: str = "<unknown>") -> ast.Module:
        if next(failures):
            raise SystemError("AST constructor recursion depth mismatch (before=120, after=172)")
        return real(source, filename)

    monkeypatch.setattr(parsing.ast, "parse", flaky)
    assert isinstance(parse("x = 1").body[0], ast.Assign)
