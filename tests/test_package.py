"""Packaging contracts: one import name, a torch-free runtime, a CLI that exits cleanly.

Runs in both environments (the torch env and the torch-free .venv-runtime)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys
    class _NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch.") or name.startswith("torchvision"):
                raise ImportError("torch is blocked in this test: the runtime must not need it")
    sys.meta_path.insert(0, _NoTorch())
    """
)


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_rooms_live_under_one_import_name(tmp_path):
    code = "import protospect.runtime, protospect.training, protospect.export, protospect.calibration, protospect.cpp_ext\n" \
           "print(protospect.runtime.__name__)"
    r = _run(code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "protospect.runtime"


def test_no_generic_top_level_modules(tmp_path):
    # Outside the repo folder, 'runtime' or 'training' must not be importable as top-level names.
    for name in ("runtime", "training", "export", "calibration", "cpp_ext"):
        r = _run(f"import {name}", tmp_path)
        assert r.returncode != 0, f"'{name}' is importable as a top-level module"


def test_runtime_imports_without_torch(tmp_path):
    code = BLOCK_TORCH + textwrap.dedent(
        """
        import pkgutil, importlib, protospect.runtime as rt
        names = [m.name for m in pkgutil.walk_packages(rt.__path__, "protospect.runtime.")]
        for n in names:
            importlib.import_module(n)
        import protospect.imageio, protospect.synthetic_parts, protospect.cli
        assert "torch" not in sys.modules
        print(len(names))
        """
    )
    r = _run(code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.strip()) >= 1


def test_cli_version_and_unknown_command(tmp_path):
    r = subprocess.run([sys.executable, "-m", "protospect.cli", "--version"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("protospect ")
    r = subprocess.run([sys.executable, "-m", "protospect.cli"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr  # no command: a usage error (exit codes in protospect/cli.py)


def test_studies_and_scripts_are_not_installed(monkeypatch):
    """One-off studies and benchmarks live in studies/ (and dev scripts in scripts/), outside the installed
    package: setup.py's packages and package_dir name neither, and no room keeps a moved study."""
    import runpy

    import setuptools

    captured: dict = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch.chdir(REPO)  # setup.py walks the room folders from the repository root
    runpy.run_path(str(REPO / "setup.py"))
    names = list(captured["packages"]) + list(captured["package_dir"]) + list(captured["package_dir"].values())
    assert names and not [n for n in names if "studies" in n or "scripts" in n], names
    for moved in ("cpp_ext/bench.py", "export/bench_ort.py", "export/eval_graphs.py", "calibration/sensitivity.py",
                  "training/methods/prn/sanity.py"):
        assert not (REPO / moved).exists(), f"{moved} is a study: it belongs in studies/"
