"""The bad-input suite's matrix machinery (issue 20): a Case, the per-module case lists, the station command line
and the runner every case goes through (test_badinput_files.py: image files, masks, artifacts and settings;
test_badinput_station.py: models, sources, thresholds, targets, ports, SIGINT and usage errors).

Every case asserts

* the exit code of the documented scheme (0 ok, 1 user error, 2 usage error; 3 would be a bug),
* on failure exactly one line on stderr naming the problem (blank lines and the INFO progress log of the
  station commands aside; a usage error's usage block aside), and no "Traceback" anywhere,
* every file that existed before is byte-identical afterwards, or, where the case allows it, replaced whole
  (JSON parses, every log line parses); no *.part / *.tmp file is left behind,
* the shared artifact, graph and data (one per session) are never changed.

Torch commands run in .venv, station commands in the torch-free .venv-runtime, as a user would.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from fsfaults import can_mount
from kit import Kit, Result, env, run, snapshot

MOUNT_PROBLEM = can_mount()


@dataclass
class Case:
    id: str
    cli: Path
    build: Callable  # (work, kit, ctx) -> argv
    code: int
    needle: str | None = None          # in the one error line (or, for code 0, in stdout+stderr)
    may_change: tuple = ()             # paths (relative to work) a successful run may replace whole
    check: Callable | None = None      # (work, result) -> None: more assertions
    interrupt: Callable | None = None  # (work) -> bool: send SIGINT once true
    mounts: bool = False               # needs a tmpfs (skipped with the reason where mounting is not allowed)
    marks: list = field(default_factory=list)


CASES: list[Case] = []

def registry(cases: list) -> Callable:
    """A case(...) function appending Case(...) to ``cases`` (each test module keeps its own list)."""
    def case(*args, **kw):
        cases.append(Case(*args, **kw))
    return case


def station(cmd: str, model, source, work: Path, *extra) -> list:
    """The station command with the options it needs to run at all."""
    tail = {"serve": ["--sink", work / "sink"], "bench": ["--frames", "2", "--warmup", "1", "--out", work / "bench"],
            "soak": ["--frames", "2"], "calibrate": ["--out", work / "line.json", "--allow-uncertified"]}[cmd]
    return [cmd, model, "--source", source, *tail, *extra]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]

# ---- the runner ------------------------------------------------------------------------------------

def _problem_lines(res: Result) -> list[str]:
    """stderr lines a user reads as the answer: the station's INFO log and its per-frame "frame N rejected" warnings
    (each rejected frame is logged by design, docs/runtime.md) aside."""
    return [line for line in res.lines if not line.startswith("INFO ")
            and not (line.startswith("WARNING protospect.runtime.pipeline: frame ") and " rejected: " in line)]


def _run_interrupted(c: Case, argv, work: Path) -> Result:
    # Ctrl-C reaches a foreground command; a test run started in the background (nohup, `&` without job
    # control) has SIGINT ignored, which children inherit, and Python then installs no KeyboardInterrupt.
    proc = subprocess.Popen([str(c.cli), *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(), cwd=work, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not c.interrupt(work):
        time.sleep(0.2)
    assert proc.poll() is None, f"ended before the signal: {proc.communicate()}"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return Result(proc.returncode, out, err)


def _whole(path: Path) -> None:
    """A file a successful run replaced: whole, i.e. it parses."""
    if path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".jsonl":
        for line in path.read_text().splitlines():
            json.loads(line)


def check_case(c: Case, kit: Kit, work: Path) -> None:
    """Run one case and assert what every case asserts (the module docstring of test_badinput_files.py)."""
    if c.mounts and MOUNT_PROBLEM:
        pytest.skip(f"needs a small tmpfs for a read-only/full target: {MOUNT_PROBLEM}")
    import contextlib

    with contextlib.ExitStack() as stack:
        ctx = {"enter": stack.enter_context, "keep": []}
        argv = c.build(work, kit, ctx)
        shared_before = snapshot(kit.root)
        before = snapshot(work)
        res = _run_interrupted(c, argv, work) if c.interrupt else run(c.cli, *argv, cwd=work)
        for s in ctx["keep"]:
            s.close()
        after = snapshot(work)
        assert snapshot(kit.root) == shared_before, "the shared artifact/graph/data changed"
    text = res.out + res.err
    assert "Traceback" not in text, text
    assert res.code == c.code, f"exit {res.code}, expected {c.code}\nstdout: {res.out[-1500:]}\nstderr: {res.err[-1500:]}"
    if c.code == 2:
        errors = [line for line in res.lines if ": error: " in line]
        assert len(errors) == 1 and res.lines[0].startswith("usage:"), res.err
    elif c.code != 0:
        lines = _problem_lines(res)
        assert len(lines) == 1, "expected one line on stderr:\n" + res.err
        assert lines[0].startswith(f"protospect {argv[0]}: "), lines[0]
        if c.needle:
            assert c.needle in lines[0], lines[0]
    elif c.needle:
        assert c.needle in text, text
    for path, digest in before.items():
        rel = str(path.relative_to(work))
        if c.code == 0 and rel in c.may_change:
            assert path.exists(), rel
            _whole(path)
        else:
            assert after.get(path) == digest, f"{rel} changed or vanished"
    leftovers = [str(p.relative_to(work)) for p in after if p.name.endswith((".part", ".tmp")) or ".part" in p.name]
    assert not leftovers, leftovers
    if c.check:
        c.check(work, res)
