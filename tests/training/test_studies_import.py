"""Every study script in studies/ imports: the scripts import one another (select_auto / select_aspect read
acceptance_table's helpers, select_v11 reads select_640's), and one session overwrote a module that two others
imported without any test noticing."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

STUDIES = Path(__file__).resolve().parents[2] / "studies"
SCRIPTS = sorted(p.stem for p in STUDIES.glob("*.py"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_study_script_imports(name, monkeypatch):
    monkeypatch.syspath_prepend(str(STUDIES))
    monkeypatch.setattr(sys, "argv", [name])  # importing must not read the command line
    module = importlib.import_module(name)
    assert module.__doc__, f"studies/{name}.py says nothing about what it measures"


@pytest.mark.parametrize("name", SCRIPTS)
def test_names_used_from_other_study_scripts_exist(name, monkeypatch):
    """`import acceptance_table as at` succeeds even when at.OLD is gone; the names a script reads from another
    study script through such an alias must exist there."""
    import ast

    monkeypatch.syspath_prepend(str(STUDIES))
    monkeypatch.setattr(sys, "argv", [name])
    tree = ast.parse((STUDIES / f"{name}.py").read_text())
    aliases = {a.asname or a.name: a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for a in node.names if a.name in SCRIPTS}
    used = {(aliases[n.value.id], n.attr) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases}
    missing = [f"{mod}.{attr}" for mod, attr in sorted(used) if not hasattr(importlib.import_module(mod), attr)]
    assert not missing, f"studies/{name}.py reads names its sibling scripts lack: {missing}"
