"""OK / REVIEW / NG on the line and the drift watch while serving: `serve --threshold FILE` (a conformal file
from `calibrate`) on a generated line whose good parts score higher after frame 150. The log gets a
`drift` event, summary.json counts it, thresholds never move; the operator page shows REVIEW in amber,
counts it and puts up the drift banner (headless Chromium)."""
from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import FRAME
from fixture_models import build_diff_model, render_part
from wrapped_backend import WrappedBackend

from protospect.cli import main as cli_main
from protospect.runtime import cli_calibrate, cli_serve
from protospect.runtime.backends.base import BackendBase
from protospect.runtime.backends.ort import OrtBackend
from protospect.runtime.operator_view import OperatorView
from protospect.runtime.sinks import Result

CHROMIUM = Path("/usr/bin/chromium")
N_CALIB, N_STEADY, N_DRIFT = 120, 150, 250
DEFECTS = {10, 35, 170}
WINDOW = 100


class ScriptedScores(WrappedBackend):
    """The fixture model's maps with generated scores, in frame order: a line whose score distribution we
    choose (the fixture model's own scores are quantised and tightly bunched)."""

    name = "scripted"

    def __init__(self, inner, scores):
        super().__init__(inner)
        self.scores = iter(scores)
        self.depth = 0

    def __enter__(self):  # serve enters once to set the thresholds, the pipeline again: keep them
        self.depth += 1
        if self.depth == 1:
            super().__enter__()
        return self

    def __exit__(self, *exc):
        self.depth -= 1
        if self.depth == 0:
            super().__exit__(*exc)

    def infer(self, img):
        amap, _ = self.inner.infer(img)
        return amap, float(next(self.scores))

    def describe(self):
        return BackendBase.describe(self)


def _write(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:05d}.png"), render_part(rng, FRAME))
    return folder


@pytest.fixture(scope="module")
def line(fx, tmp_path_factory):
    """Good calibration parts score N(0.30, 0.05); on the line the good parts do too for 150 frames, then
    the lighting changes and they score N(0.37, 0.05) (still mostly OK / REVIEW); three defects score 0.95."""
    root = tmp_path_factory.mktemp("drift")
    model = build_diff_model(root / "model.onnx", fx.ref, threshold=10.0, map_range=(0.0, 0.3))
    rng = np.random.default_rng(21)
    calib_scores = rng.normal(0.30, 0.05, N_CALIB)
    line_scores = np.concatenate([rng.normal(0.30, 0.05, N_STEADY), rng.normal(0.37, 0.05, N_DRIFT)])
    line_scores[sorted(DEFECTS)] = 0.95
    calib, src = _write(root / "good", N_CALIB), _write(root / "line", N_STEADY + N_DRIFT)
    thr = root / "thr.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_calibrate, "select_backend", lambda *a, **k: ScriptedScores(OrtBackend(model), calib_scores))
        assert cli_main(["calibrate", str(model), "--source", str(calib), "--out", str(thr),
                         "--frr", "0.01", "--review-frr", "0.1"]) == 0
    return model, src, thr, line_scores


def _serve(monkeypatch, model, scores, argv) -> int:
    monkeypatch.setattr(cli_serve, "select_backend", lambda *a, **k: ScriptedScores(OrtBackend(model), scores))
    return cli_main(argv)


def _lines(sink: Path) -> list[dict]:
    return [json.loads(x) for x in (sink / "verdicts.jsonl").read_text().splitlines()]


def test_serve_judges_ok_review_ng_and_logs_a_drift_event_when_the_line_drifts(line, tmp_path, capsys, monkeypatch):
    model, src, thr, scores = line
    rec = json.loads(thr.read_text())
    sink = tmp_path / "out"
    assert _serve(monkeypatch, model, scores, ["serve", str(model), "--source", str(src), "--sink", str(sink),
                                               "--threshold", str(thr), "--drift-window", str(WINDOW)]) == 0
    out = capsys.readouterr().out
    lines = _lines(sink)
    frames = [r for r in lines if "event" not in r]
    events = [r for r in lines if "event" in r]
    assert len(frames) == N_STEADY + N_DRIFT
    by_seq = {r["seq"]: r for r in frames}
    assert all(by_seq[s]["verdict"] == "NG" for s in DEFECTS)
    assert any(r["verdict"] == "REVIEW" for r in frames) and all("p_value" in r for r in frames)
    # the drift fires after the change, never on the steady part, once (it stays on while drifting)
    assert len(events) == 1 and events[0]["event"] == "drift", events
    e = events[0]
    assert N_STEADY <= e["seq"] < N_STEADY + N_DRIFT
    assert e["p_value"] < 0.001 and e["window"] == WINDOW and e["above"] > 2 * e["expected_rate"] * WINDOW
    q95 = rec["operating_point"]["scores"][int(np.ceil(0.95 * (N_CALIB + 1))) - 1]
    assert e["reference"] == pytest.approx(q95)
    summary = json.loads((sink / "summary.json").read_text())
    c = summary["counters"]
    assert c["drift_events"] == 1 and summary["drift"]["active"] is True
    assert c["review"] == sum(r["verdict"] == "REVIEW" for r in frames)
    assert c["ok"] + c["review"] + c["ng"] == len(frames)
    # thresholds never change silently: every verdict, before and after the drift, at the file's thresholds
    for r in frames:
        assert r["verdict"] == ("NG" if r["score"] >= rec["threshold"] else
                                "REVIEW" if r["score"] >= rec["review_threshold"] else "OK")
    assert summary["backend"]["threshold"] == rec["threshold"] and "drift: the watch fired 1 time" in out


def test_no_drift_watch_without_calibration_scores_and_none_on_a_steady_line(line, tmp_path, monkeypatch):
    model, src, thr, scores = line
    sink = tmp_path / "plain"
    assert _serve(monkeypatch, model, scores, ["serve", str(model), "--source", str(src), "--sink", str(sink),
                                               "--threshold", "0.5"]) == 0
    assert not any("event" in r for r in _lines(sink))  # a bare number: no calibration scores to compare with
    assert "drift" not in json.loads((sink / "summary.json").read_text())
    sink = tmp_path / "steady"
    assert _serve(monkeypatch, model, scores, ["serve", str(model), "--source", str(src), "--sink", str(sink),
                                               "--threshold", str(thr), "--drift-window", str(WINDOW),
                                               "--max-frames", str(N_STEADY)]) == 0
    assert not any("event" in r for r in _lines(sink))
    summary = json.loads((sink / "summary.json").read_text())
    assert summary["counters"]["drift_events"] == 0 and summary["drift"]["seen"] == WINDOW  # it was testing
    assert cli_main(["serve", str(model), "--source", str(src), "--drift-window", "-1"]) == 1


def _result(seq: int, verdict: str, score: float, counters: dict) -> Result:
    rgb = np.full((120, 160, 3), 120, np.uint8)
    return Result(seq=seq, t_capture_ns=0, t_wall=0.0, score=score, verdict=verdict, ms={"host_to_host": 1.0},
                  backend="ort", rgb_fn=lambda: rgb, anomaly_map=np.zeros((64, 64), np.float32), counters=counters,
                  p_value=0.04)


def test_page_shows_review_in_amber_counts_it_and_raises_the_drift_banner(tmp_path):
    view = OperatorView(port=0, threshold=0.5, review_threshold=0.3, map_range=(0.0, 1.0), backend="ort").start()
    try:
        counters = {"processed": 3, "ok": 1, "review": 1, "ng": 1, "rejected": 0, "drift_events": 1}
        for seq, (v, s) in enumerate((("OK", 0.1), ("NG", 0.7), ("REVIEW", 0.4))):
            view.write(_result(seq, v, s, counters))
        view.event({"event": "drift", "seq": 2, "window": 200, "above": 41, "expected_rate": 0.05, "p_value": 1e-5,
                    "reference": 0.3})
        with urllib.request.urlopen(view.url + "state.json", timeout=10) as r:
            state = json.loads(r.read())
        assert state["verdict"] == "REVIEW" and state["review_threshold"] == 0.3 and state["p_value"] == 0.04
        assert state["drift"]["above"] == 41 and state["drift_events"] == 1
        view.event({"event": "drift_cleared", "seq": 5})
        with urllib.request.urlopen(view.url + "state.json", timeout=10) as r:
            assert json.loads(r.read())["drift"] is None
        view.event({"event": "drift", "seq": 2, "window": 200, "above": 41, "expected_rate": 0.05, "p_value": 1e-5,
                    "reference": 0.3})
        if not CHROMIUM.exists():
            pytest.skip("/usr/bin/chromium absent: the page itself is not rendered")
        cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}",
               "--virtual-time-budget=5000", "--dump-dom", view.url]
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=90).stdout
        assert '<div id="verdict" class="REVIEW">REVIEW</div>' in dom, dom[:2000]
        assert '<td class="k">REVIEW</td><td>1</td>' in dom and '<td class="k">drift alarms</td><td>1</td>' in dom
        assert '<div id="drift" role="alert" class="on">DRIFT since frame 2: 41 of the last 200' in dom
        shot = tmp_path / "page.png"
        subprocess.run(cmd[:-2] + [f"--screenshot={shot}", "--window-size=1200,700", view.url],
                       capture_output=True, timeout=90)
        img = cv2.imread(str(shot))
        amber = (np.abs(img[:80].astype(int) - np.array([0x30, 0xa0, 0xe0])).sum(axis=2) < 30)  # BGR of #e0a030
        assert amber.sum() > 200  # the REVIEW box in the header (the drift banner is below it)
    finally:
        view.stop()
