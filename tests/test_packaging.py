"""Packaging for labs: torch is a range a lab's environment can meet, the exact pair lives in constraints.txt
(what this project's venv and CI install), and every third-party module alkit imports is declared."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11 (tomllib)")

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
#: imported only where the user installed it from its authors' git repository (not on PyPI; README: Encoders)
NOT_ON_PYPI = {"conch"}


def _requirements(extra: str | None = None) -> dict[str, Requirement]:
    lines = PYPROJECT["dependencies"] if extra is None else PYPROJECT["optional-dependencies"][extra]
    return {canonicalize_name(r.name): r for r in map(Requirement, lines)}


def test_torch_is_a_range_and_the_exact_pair_is_a_constraint_of_the_projects_own_install():
    core = _requirements()
    pins = {canonicalize_name(Requirement(line).name): Requirement(line) for line in
            (REPO / "constraints.txt").read_text().splitlines() if line.strip() and not line.startswith("#")}
    assert set(pins) == {"torch", "torchvision"}
    for name in ("torch", "torchvision"):
        assert not any(spec.operator in ("==", "===") for spec in core[name].specifier), core[name]
        (pin,) = pins[name].specifier
        assert pin.operator == "==" and core[name].specifier.contains(pin.version), (core[name], pin)
        assert core[name].specifier.contains("2.4.0" if name == "torch" else "0.19.0")  # an older lab's torch
    assert re.search(r"pip install .*-c constraints\.txt -e '\.\[dev\]'", (REPO / "Makefile").read_text())
    assert "constraints.txt" in (REPO / "Makefile").read_text().split("$(STAMP):")[1].splitlines()[0]


def test_extras_for_the_optional_families_and_dev_holds_them_all():
    extras = PYPROJECT["optional-dependencies"]
    assert "transformers" in _requirements("plip") and "transformers" in _requirements("phikon")
    assert "psycopg" in _requirements("postgres")
    optional = {n for e, reqs in extras.items() if e not in ("dev", "all") for n in _requirements(e)}
    assert optional <= set(_requirements("all")) and optional <= set(_requirements("dev"))


def _imported_top_modules() -> dict[str, Path]:
    """Every top-level module imported anywhere in the shipped packages (absolute imports), with one file."""
    found: dict[str, Path] = {}
    for package in ("alkit", "strategies", "mlflow_setup"):
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], path)
    return found


def test_every_third_party_module_alkit_imports_is_declared():
    declared = set(_requirements())
    for extra in PYPROJECT["optional-dependencies"]:
        declared |= set(_requirements(extra))
    ours = {"alkit", "strategies", "mlflow_setup"}
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for module, path in _imported_top_modules().items():
        if module in ours or module in sys.stdlib_module_names or module in NOT_ON_PYPI or module == "__future__":
            continue
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        if not dists:
            pytest.fail(f"{path.relative_to(REPO)} imports {module!r}, which no installed distribution provides")
        if not dists & declared:
            undeclared[module] = (sorted(dists), str(path.relative_to(REPO)))
    assert not undeclared, f"imported but not in pyproject.toml's dependencies or extras: {undeclared}"
