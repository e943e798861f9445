"""The package's map (docs/architecture.md) against its code: every module on one floor, each importing only
modules on floors below its own (at the top of the file or inside a function), no circle, none over 450 lines."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vaehelpers"
MOST_LINES = 450


def _imports(path: Path) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vaehelpers"):
            found |= {node.module.split(".")[1]} if "." in node.module else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("vaehelpers.")}
    return {m.split(".")[0] for m in found} - {path.stem}


def _floors() -> dict[str, int]:
    """Each module's floor as docs/architecture.md's table gives it: `| floor | `module`, `module` | ... |`."""
    floors = {}
    for floor, modules in re.findall(r"^\| *(\d+) *\|([^|]+)\|", (ROOT / "docs" / "architecture.md").read_text(), re.M):
        for module in re.findall(r"`([\w]+)`", modules):
            assert module not in floors, f"docs/architecture.md puts {module} on two floors"
            floors[module] = int(floor)
    return floors


GRAPH = {p.stem: _imports(p) for p in sorted(PACKAGE.glob("*.py"))}


def test_the_map_names_every_module_once_and_nothing_else():
    floors = _floors()
    assert set(floors) == set(GRAPH), (f"in the package, not on the map: {sorted(set(GRAPH) - set(floors))}; on the "
                                       f"map, not in the package: {sorted(set(floors) - set(GRAPH))}")


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_a_module_imports_only_from_floors_below_its_own(module):
    floors = _floors()
    upward = sorted(m for m in GRAPH[module] if m in floors and floors[m] >= floors.get(module, -1))
    assert not upward, (f"{module} (floor {floors.get(module)}) imports {', '.join(f'{m} (floor {floors[m]})' for m in upward)}:"
                        " move it, or the code it needs, to another floor (docs/architecture.md)")


def test_no_module_is_over_the_most_lines():
    long = {p.name: n for p in PACKAGE.glob("*.py") if (n := len(p.read_text().splitlines())) > MOST_LINES}
    assert not long, f"over {MOST_LINES} lines: {long}: split it by job (docs/architecture.md)"


def test_the_check_finds_an_upward_import(tmp_path):
    """The checks above can fail: a module that imports one on its own floor or above is found, in either form."""
    for text in ("from .build import render\n", "def f():\n    from vaehelpers.build import render\n",
                 "import vaehelpers.build\n"):
        (tmp_path / "model.py").write_text(text)
        assert _imports(tmp_path / "model.py") == {"build"}
