"""Layers point down: models/data -> train/export -> engines -> gateway -> evaluate, monitor,
distill, feedback -> pipeline, CLI, board. Read from the source's import statements (module-level
and inside functions), so an import that only runs on one path counts too.

The inversions that exist are listed in KNOWN with what they need; the test fails on a new one,
and on a listed one that is gone (remove it from the list, so that it cannot come back)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from conftest import REPO

SRC = REPO / "src" / "slmkit"
LAYERS: list[set[str]] = [
    {"slmkit", "config", "errors", "console", "paths", "child_process", "tools", "models", "data"}
    | {"registry", "answer_checks", "state"},
    {"train", "export", "tools_build", "doctor"},
    {"serve.engines", "rag"},
    {"serve"},
    {"evaluate", "monitor", "distill", "feedback", "cost"},
    {"pipeline", "pipeline_commands", "pipeline_report", "recipe", "cli", "ui"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
KNOWN = {  # (importer, imported): why
    ("export", "evaluate"): "the quantization report scores answers with the eval's metrics",
    ("train", "recipe"): "a run takes the whole recipe (its data, train and dpo sections)",
}


def unit_of(module: str) -> str:
    """The layer unit of a dotted module name: its top package under slmkit (serve.engines apart);
    a stage's command modules (`<stage>/commands.py`, `*_commands.py`) are the CLI's."""
    parts = module.split(".")
    if len(parts) == 1:
        return "slmkit"
    if parts[-1] == "commands" or parts[-1].endswith("_commands"):
        return "cli"
    if parts[1:3] == ["serve", "engines"]:
        return "serve.engines"
    return parts[1]


def imported(path: Path) -> list[str]:
    """The slmkit modules a source file imports (absolute imports, at any depth)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return [name for name in names if name == "slmkit" or name.startswith("slmkit.")]


def imports(src: Path = SRC) -> dict[tuple[str, str], set[str]]:
    """(importer unit, imported unit) -> the importing modules, across units only."""
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    for path in src.rglob("*.py"):
        module = ".".join(("slmkit", *path.relative_to(src).with_suffix("").parts))
        module = module.removesuffix(".__init__")
        for name in imported(path):
            edge = (unit_of(module), unit_of(name))
            if edge[0] != edge[1]:
                found[edge].add(module)
    return found


def test_every_package_has_a_layer() -> None:
    units = {unit for edge in imports() for unit in edge}
    assert units <= set(RANK), f"give these a layer in LAYERS: {sorted(units - set(RANK))}"


def test_no_package_imports_a_layer_above_it() -> None:
    upward = {
        edge: sorted(modules)
        for edge, modules in imports().items()
        if RANK[edge[1]] > RANK[edge[0]]
    }
    new = {edge: modules for edge, modules in upward.items() if edge not in KNOWN}
    assert not new, f"imports of a layer above: {new}"
    gone = set(KNOWN) - set(upward)
    assert not gone, f"fixed, remove from KNOWN: {sorted(gone)}"


def test_the_engines_import_nothing_of_the_gateway() -> None:
    """An engine can be built, used and tested without the gateway (its request type, errors and
    settings live in serve/engines/)."""
    gateway = {
        m for (a, b), ms in imports().items() if a == "serve.engines" and b == "serve" for m in ms
    }
    assert not gateway


def test_an_import_inside_a_function_counts(tmp_path: Path) -> None:
    """Heavy modules are imported lazily here: an upward import in a function body is found."""
    engines = tmp_path / "serve" / "engines"
    engines.mkdir(parents=True)
    (engines / "fake.py").write_text("def f():\n    from slmkit.serve.gateway import Gateway\n")
    assert imports(tmp_path) == {("serve.engines", "serve"): {"slmkit.serve.engines.fake"}}


def test_the_board_calls_the_stages_not_the_cli_commands() -> None:
    """The board and the CLI are peers: what both need (parsing a model list, an export config)
    lives in the stage's package, not in a CLI command module."""
    board = {(path.name, name) for path in (SRC / "ui").rglob("*.py") for name in imported(path)}
    assert board, "the walk found no import of the board"
    for path, name in board:
        assert not name.endswith(".commands") and name != "slmkit.cli", (path, name)
