"""docs/architecture.md: the libraries never import each other or `agent`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARIES = ("uftp", "ocpp_bridge", "forecaster")
FORBIDDEN = {"agent", *LIBRARIES}


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("library", LIBRARIES)
def test_library_imports_no_sibling_and_not_agent(library: str) -> None:
    offenders = []
    for path in sorted((ROOT / library).rglob("*.py")):
        bad = imported_top_levels(path) & (FORBIDDEN - {library})
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(bad))}")
    assert offenders == []
