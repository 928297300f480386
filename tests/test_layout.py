"""The package's folders are its stages, and imports flow one way between them: every
import of every module (at its top or inside a function) is read from its source, and
an arrow that runs back up the order fails, naming both modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "bertrep"

# bottom to top; a module may import its own layer and those below it
LAYERS = (
    ("errors", "env"),  # plain Python: the one error type, environment variable names
    ("maths",),  # pure numerics on arrays: CKA, transfer metrics, bootstrap, LogME
    ("data",),  # tasks, tokenization, probe sets, activation tables
    ("encoders",),  # each encoder family's anatomy, and running its parts
    ("tracking",),  # every MLflow name, the local tracking server
    ("training",),  # config, encoder + heads, freezing, the loop, read-out, models
    ("sweeps",),  # sweep specs, a sweep's runs in MLflow, progress lines
    ("analysis",),  # what the analysis reads, its tables, intervals, summary
    ("figures",),  # every figure from the analysis tables
    ("train", "sweep", "analyze", "study", "tasks", "cli", "__main__", "__init__", "bertrep"),
)
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def part(module: str) -> str:
    """The layer name of bertrep.<part>[.rest]."""
    return module.split(".")[1] if module.count(".") else module


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        out.append((".".join(rel.parts), path))
    return out


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, bertrep.module) of every import of a project module in the file; a relative
    import is refused (it would hide its target from this check)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}:{node.lineno}: a relative import; write bertrep.<...>")
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "bertrep":
                found += [(node.lineno, f"bertrep.{a.name}") for a in node.names]
            elif node.module.startswith("bertrep."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("bertrep")]
    return found


def test_every_module_belongs_to_a_layer():
    unknown = [name for name, _ in modules() if part(name) not in RANK and name != "bertrep"]
    assert not unknown, f"modules outside every layer of this test: {unknown}"


def violations(name: str, path: Path) -> list[str]:
    """Each import of `path` (module `name`) that runs back up the order."""
    mine, out = RANK[part(name)], []
    for line, target in imports(path):
        if RANK[part(target)] > mine:
            out.append(f"{name} (line {line}) imports {target}, a layer above it")
        elif part(name) == "maths" and part(target) != "maths":  # pure numerics
            out.append(f"{name} (line {line}) imports {target}: maths imports only maths")
    return out


@pytest.mark.parametrize("name,path", modules(), ids=[name for name, _ in modules()])
def test_imports_flow_one_way(name, path):
    assert violations(name, path) == []


def test_an_arrow_back_up_is_found_even_inside_a_function(tmp_path):
    module = tmp_path / "tables.py"
    module.write_text(
        "from bertrep.maths import transfer\n"
        "def draw():\n    from bertrep import analyze\n    return analyze\n"
    )
    relative = tmp_path / "relative.py"
    relative.write_text("from .cells import typed\n")
    with pytest.raises(AssertionError, match="relative import"):
        imports(relative)
    assert violations("bertrep.analysis.tables", module) == [
        "bertrep.analysis.tables (line 3) imports bertrep.analyze, a layer above it"
    ]
    assert violations("bertrep.maths.cka", module) == [
        "bertrep.maths.cka (line 3) imports bertrep.analyze, a layer above it"
    ]


MODULE_LINES, FUNCTION_LINES = 400, 60  # a module one reads in a sitting; a function on a screen


def too_long(path: Path) -> list[str]:
    """The module itself when it passes MODULE_LINES, and each function (nested ones too)
    longer than FUNCTION_LINES, from its `def` to its last line."""
    text = path.read_text()
    out = []
    if len(text.splitlines()) > MODULE_LINES:
        out.append(f"{path.name}: {len(text.splitlines())} lines > {MODULE_LINES}")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > FUNCTION_LINES:
                out.append(f"{path.name}:{node.lineno} {node.name}: {length} lines")
    return out


@pytest.mark.parametrize("name,path", modules(), ids=[name for name, _ in modules()])
def test_modules_and_functions_stay_readable(name, path):
    assert too_long(path) == []


def test_a_long_function_is_found(tmp_path):
    module = tmp_path / "long.py"
    body = "".join(f"    x{i} = {i}\n" for i in range(FUNCTION_LINES))
    module.write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}    return x0\n")
    assert too_long(module) == [f"long.py:5 long: {FUNCTION_LINES + 2} lines"]
