"""No carriage-return progress bars in a redirected log (issue 20): train and eval with stderr to a file."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from protospect.progress import progress_enabled

REPO = Path(__file__).resolve().parents[1]


def test_progress_enabled_follows_the_terminal(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert progress_enabled(Tty()) and not progress_enabled(io.StringIO())
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not progress_enabled(Tty())


def test_quiet_when_redirected_turns_library_bars_off():
    """In a fresh interpreter, as the CLI does it: tqdm reads TQDM_DISABLE when it is first imported, so the
    call must come before any bar-drawing library is imported (this test must not share a process where
    tqdm was imported already)."""
    code = ("import io, os, sys\n"
            "sys.stderr = io.StringIO()\n"
            "os.environ.pop('TQDM_DISABLE', None)\n"
            "from protospect.progress import quiet_when_redirected\n"
            "quiet_when_redirected()\n"
            "assert os.environ['TQDM_DISABLE'] == '1'\n"
            "from tqdm import tqdm\n"
            "out = io.StringIO()\n"
            "for _ in tqdm(range(3), file=out):\n"
            "    pass\n"
            "print(repr(out.getvalue()))\n")
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "''"


@pytest.mark.torch
@pytest.mark.parametrize("command", ["train", "eval"])
def test_redirected_log_has_no_carriage_returns(tmp_path, command):
    pytest.importorskip("torch")
    sys.path.insert(0, str(REPO / "tests" / "training"))
    from mvtec_tiny import make_category

    cat = make_category(tmp_path / "data", "part", n_train=2, n_good=1, n_defect=1)
    shots = ["--shots", "2"] if command == "train" else ["--shots", "2", "--seeds", "0", "--no-plots"]
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    env["OMP_NUM_THREADS"] = "1"
    with open(tmp_path / "run.log", "w") as log:
        out = subprocess.run([sys.executable, "-m", "protospect.cli", command, "--data", str(cat), "--method", "pcsnet",
                              *shots, "--out", str(tmp_path / "o"), "--size", "64", "--set", "steps=12"],
                             stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=600)
    raw = (tmp_path / "run.log").read_bytes()  # bytes: read_text() would turn every \r into \n
    assert out.returncode == 0, raw.decode(errors="replace")
    assert b"\r" not in raw, raw[:400]
