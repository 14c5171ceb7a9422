"""The package layering: igds_jax imports sae, models and train, never the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", ["models", "sae", "train"])
def test_lower_packages_do_not_import_igds_jax(package):
    offenders = []
    for path in sorted((REPO / package).rglob("*.py")):
        bad = [m for m in imported_modules(path) if m.split(".")[0] == "igds_jax"]
        if bad:
            offenders.append(f"{path.relative_to(REPO)}: {', '.join(sorted(bad))}")
    assert offenders == []
