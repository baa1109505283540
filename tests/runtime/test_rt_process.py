"""The runtime as a process: torch-free imports, kill -9 keeps the log parseable, SIGTERM flushes
and prints final stats, and the serve/bench/soak commands end to end."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import pytest
from fixture_models import decode_video

from protospect.cli import main as cli_main
from protospect.runtime.sources import ArraySource

REPO = Path(__file__).resolve().parents[2]

BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = ("torch", "torchvision", "timm", "protospect.training", "protospect.export")
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name in BLOCKED or name.startswith(tuple(b + "." for b in BLOCKED)):
                raise ImportError(f"blocked in the torch-free runtime: {name}")
            return None
    sys.meta_path.insert(0, Block())
""")


def _run_py(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_every_runtime_module_imports_with_torch_blocked_and_heavy_deps_stay_lazy():
    code = BLOCK_TORCH + textwrap.dedent("""
        import pkgutil, importlib
        import protospect.runtime as rt
        names = sorted(m.name for m in pkgutil.walk_packages(rt.__path__, "protospect.runtime."))
        for n in names:
            importlib.import_module(n)
        import protospect.cli
        protospect.cli.build_parser(only="serve"); protospect.cli.build_parser(only="bench")
        lazy = sorted(m for m in ("onnxruntime", "onnx", "tensorrt", "cuda", "harvesters", "torch", "matplotlib")
                      if m in sys.modules)
        print("IMPORTED", len(names), "LAZY_LOADED", lazy)
    """)
    out = _run_py(code)
    assert out.returncode == 0, out.stderr
    n = int(out.stdout.split("IMPORTED")[1].split()[0])
    assert n >= 15, out.stdout  # every module of the package, not just __init__
    assert "LAZY_LOADED []" in out.stdout


def _serve_cmd(fx, sink: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "protospect.cli", "serve", str(fx.model), "--source", str(fx.video), "--loop",
            "--sink", str(sink), *extra]


def _wait_lines(path: Path, n: int, proc, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.is_file() and path.read_text().count("\n") >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {n} lines in {timeout} s")


def test_kill_9_keeps_every_written_line_parseable(fx, tmp_path):
    proc = subprocess.Popen(_serve_cmd(fx, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        _wait_lines(tmp_path / "verdicts.jsonl", 40, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = (tmp_path / "verdicts.jsonl").read_text()
    assert text.endswith("\n")  # no half-written line
    recs = [json.loads(line) for line in text.splitlines()]
    assert len(recs) >= 40
    assert [r["seq"] for r in recs] == list(range(len(recs)))
    # looped replay: frame i of the video is record i mod n_frames; NG exactly on the planted ones
    assert {r["seq"] for r in recs if r["verdict"] == "NG"} == {s for s in range(len(recs)) if s % fx.n_frames in fx.defect_frames}


def test_sigterm_flushes_sinks_and_prints_final_stats(fx, tmp_path):
    proc = subprocess.Popen(_serve_cmd(fx, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        _wait_lines(tmp_path / "verdicts.jsonl", 10, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "host_to_host" in out and "frames: processed" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    lines = (tmp_path / "verdicts.jsonl").read_text().splitlines()
    assert len(lines) == summary["counters"]["processed"] + summary["counters"]["rejected"]
    assert summary["capture_ended"] == "stopped"


def test_serve_command_in_process(fx, tmp_path, capsys):
    assert cli_main(["serve", str(fx.model), "--source", str(fx.video), "--sink", str(tmp_path), "--max-frames", "15"]) == 0
    out = capsys.readouterr().out
    assert "frames: processed 15" in out
    assert len((tmp_path / "verdicts.jsonl").read_text().splitlines()) == 15
    assert {p.name for p in (tmp_path / "ng").glob("*.png")} == {f"ng_{s:08d}.png" for s in fx.defect_frames if s < 15}


def test_serve_with_operator_page_and_refused_public_bind(fx, capsys, caplog):
    caplog.set_level("INFO")
    assert cli_main(["serve", str(fx.model), "--source", str(fx.video), "--view", "127.0.0.1:0", "--max-frames", "3"]) == 0
    assert "operator page: http://127.0.0.1:" in caplog.text
    assert cli_main(["serve", str(fx.model), "--source", str(fx.video), "--view", "0.0.0.0:8080"]) == 1
    assert "127.0.0.1 only" in capsys.readouterr().err


def test_serve_reports_a_missing_source_as_one_line_error(fx, tmp_path, capsys):
    assert cli_main(["serve", str(fx.model), "--source", str(tmp_path / "nope.avi")]) == 1
    err = capsys.readouterr().err
    assert "error: source not found" in err and "Traceback" not in err
    assert cli_main(["serve", str(fx.model), "--source", str(fx.video), "--queue-size", "0"]) == 1
    assert "--queue-size 0: must be >= 1" in capsys.readouterr().err


def test_bench_prints_table_headline_and_writes_histogram(fx, tmp_path, capsys):
    assert cli_main(["bench", str(fx.model), "--frames", "40", "--warmup", "5", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for word in ("p50", "p90", "p99", "max", "host_to_host", "HEADLINE host-to-host latency", "frames/s",
                 "dropped 0", "GPU-only time: n/a"):
        assert word in out
    hist = cv2.imread(str(tmp_path / "latency_hist.png"))
    assert hist is not None and hist.shape == (420, 800, 3) and (hist < 250).any()
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["stages"]["host_to_host"]["n"] == 40 and bench["counters"]["processed"] == 45
    assert cli_main(["bench", str(fx.model), "--source", str(fx.video), "--frames", "10", "--warmup", "2",
                     "--out", str(tmp_path / "b2")]) == 0
    assert json.loads((tmp_path / "b2" / "bench.json").read_text())["stages"]["host_to_host"]["n"] == 10


def test_serve_and_bench_report_the_split_paths_prototype_count(fx, tmp_path):
    """summary.json / bench.json carry what only the open backend knows (SplitOrtBackend's bank size):
    the report is taken before the backend closes, and Pipeline.run does not close serve's backend."""
    import numpy as np
    from fixture_models import build_split_model, reference_rgb

    bank = np.random.default_rng(0).uniform(0, 1, (40, 3)).astype(np.float32)
    folder = build_split_model(tmp_path / "split", reference_rgb(64), k=3, cell=8, threshold=0.1, bank=bank)
    assert cli_main(["serve", str(folder), "--source", str(fx.video), "--sink", str(tmp_path / "s"),
                     "--max-frames", "4"]) == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["backend"]["backend"] == "split-ort" and summary["backend"]["prototypes"] == 40
    assert summary["counters"]["processed"] == 4
    assert cli_main(["bench", str(folder), "--frames", "3", "--warmup", "1", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["backend"]["prototypes"] == 40


def test_soak_prints_start_and_end_rss(fx, tmp_path):
    out = subprocess.run([sys.executable, "-m", "protospect.runtime.cli_soak", str(fx.model), "--source", str(fx.video),
                          "--frames", "300", "--rss-every", "100", "--sink", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "SOAK RSS start (frame 1)" in out.stdout and "end (frame 300)" in out.stdout
    soak = json.loads((tmp_path / "soak.json").read_text())
    assert [n for n, _ in soak["rss_samples"]] == [1, 100, 200, 300] and soak["rss_after_shutdown"] > 0
    assert "after shutdown" in out.stdout
    assert len((tmp_path / "verdicts.jsonl").read_text().splitlines()) == 300


@pytest.mark.skipif(not hasattr(os, "fork"), reason="signals as used here are POSIX")
def test_signal_handlers_are_restored_after_a_run(fx, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    assert cli_main(["serve", str(fx.model), "--source", str(fx.video), "--max-frames", "3"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


class BrokenSource(ArraySource):
    """The fixture video's frames, then a failure (a decoder or driver error) after ``n`` of them."""

    def __init__(self, fx, n):
        super().__init__(decode_video(fx.video), bgr=True, name="broken")
        self.n = n

    def read(self):
        if self._next >= self.n:
            raise RuntimeError("decoder crashed")
        return super().read()


def test_bench_and_soak_exit_1_when_the_source_failed(fx, tmp_path, monkeypatch, capsys):
    from protospect.runtime import cli_bench, cli_soak as soak

    monkeypatch.setattr(cli_bench, "open_source", lambda spec, loop: BrokenSource(fx, 5))
    assert cli_main(["bench", str(fx.model), "--source", "x", "--frames", "20", "--warmup", "2",
                     "--out", str(tmp_path / "b")]) == 1
    assert "source stopped: error: decoder crashed" in capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["counters"]["processed"] == 5  # figures kept
    monkeypatch.setattr(soak, "open_source", lambda spec, loop: BrokenSource(fx, 5))
    assert soak.main([str(fx.model), "--source", "x", "--frames", "20", "--sink", str(tmp_path / "s")]) == 1
    assert "source stopped: error: decoder crashed" in capsys.readouterr().err


def test_calibrate_on_a_failed_source_leaves_the_old_threshold_file(fx, tmp_path, monkeypatch, capsys):
    from protospect.runtime import cli_calibrate

    out = tmp_path / "line_threshold.json"
    out.write_text('{"threshold": 0.5}\n')
    monkeypatch.setattr(cli_calibrate, "open_source", lambda spec, loop: BrokenSource(fx, 15))
    assert cli_main(["calibrate", str(fx.model), "--source", "x", "--out", str(out)]) == 1
    assert out.read_text() == '{"threshold": 0.5}\n' and not out.with_suffix(".png").exists()
    err = capsys.readouterr().err
    assert "source stopped: error: decoder crashed" in err and "not written" in err
