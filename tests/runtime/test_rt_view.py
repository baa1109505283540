"""The live operator page: its JSON and JPEG endpoints, loopback only, and rendering in headless Chromium."""
from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from protospect.errors import ConfigError
from protospect.runtime.backends.ort import OrtBackend
from protospect.runtime.operator_view import OperatorView, parse_view
from protospect.runtime.pipeline import Pipeline
from protospect.runtime.sources import open_source

CHROMIUM = Path("/usr/bin/chromium")


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


@pytest.fixture()
def served(fx):
    """A finished run of the fixture video with the page still up (as after `serve` ends)."""
    view = OperatorView(port=0, threshold=fx.threshold, map_range=(0.0, 0.3), backend="ort").start()
    try:
        report = Pipeline(OrtBackend(fx.model), open_source(str(fx.video)), [view]).run()
        yield view, report
    finally:
        view.stop()


def test_view_endpoints(served, fx):
    view, report = served
    state = json.loads(_get(view.url + "state.json"))
    assert state["seq"] == fx.n_frames - 1 and state["verdict"] == "OK" and state["running"] is False
    assert state["history"]["seq"] == list(range(fx.n_frames))
    assert {s for s, v in zip(state["history"]["seq"], state["history"]["verdict"]) if v == "NG"} == fx.defect_frames
    assert state["counters"]["processed"] == fx.n_frames and state["threshold"] == pytest.approx(fx.threshold)
    jpeg = cv2.imdecode(np.frombuffer(_get(view.url + "frame.jpg"), np.uint8), cv2.IMREAD_COLOR)
    assert jpeg.shape == (120, 160, 3)
    page = _get(view.url).decode()
    assert 'id="verdict"' in page and "/app.js" in page
    assert b"fetch(\"/state.json\"" in _get(view.url + "app.js")
    with pytest.raises(urllib.error.HTTPError):
        _get(view.url + "../etc/passwd")


def test_view_serves_loopback_only():
    assert parse_view(":8080") == ("127.0.0.1", 8080)
    assert parse_view("localhost:9000") == ("127.0.0.1", 9000)
    with pytest.raises(ConfigError, match="127.0.0.1 only"):
        parse_view("0.0.0.0:8080")
    with pytest.raises(ConfigError, match="expected"):
        parse_view(":http")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium absent (apt-get install -y chromium)")
def test_page_renders_verdict_and_plots_in_headless_chromium(served, fx, tmp_path):
    view, _ = served
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", "--dump-dom", view.url]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=90).stdout
    last = fx.n_frames - 1
    assert f'data-rendered="{last}"' in dom, dom[:2000]           # app.js fetched state.json and drew
    assert f'data-points="{fx.n_frames}"' in dom                  # both plots got the full history
    assert '<div id="verdict" class="OK">OK</div>' in dom
    assert f'src="/frame.jpg?seq={last}"' in dom
    assert "run finished" in dom
    shot = tmp_path / "page.png"
    subprocess.run(cmd[:-2] + [f"--screenshot={shot}", "--window-size=1200,700", view.url],
                   capture_output=True, timeout=90)
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (700, 1200)
    # the verdict box is drawn in the OK green somewhere in the header
    green = (np.abs(img[:80].astype(int) - np.array([0x3a, 0x7a, 0x1f])).sum(axis=2) < 30)
    assert green.sum() > 200


def test_nan_score_keeps_state_json_strict_and_the_page_rendering(fx, tmp_path):
    from test_rt_sinks import NanBackend, _strict

    view = OperatorView(port=0, threshold=fx.threshold, map_range=(0.0, 0.3), backend="nan").start()
    try:
        # 24 frames, every third NaN: the last one (seq 23) is a NaN
        Pipeline(NanBackend(OrtBackend(fx.model)), open_source(str(fx.video)), [view]).run()
        state = _strict(_get(view.url + "state.json").decode())
        assert state["seq"] == fx.n_frames - 1 and state["verdict"] == "NG"
        assert state["score"] is None and state["score_not_finite"] == "nan"
        assert [s is None for s in state["history"]["score"]] == [i % 3 == 2 for i in range(fx.n_frames)]
        assert cv2.imdecode(np.frombuffer(_get(view.url + "frame.jpg"), np.uint8), cv2.IMREAD_COLOR) is not None
        if CHROMIUM.exists():
            cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                   "--disable-component-update", "--disable-sync", "--no-first-run",
                   f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", view.url]
            dom = subprocess.run(cmd, capture_output=True, text=True, timeout=90).stdout
            assert f'data-rendered="{fx.n_frames - 1}"' in dom, dom[:2000]  # r.json() parsed, render() ran
            assert '<span id="score">nan</span>' in dom and '<div id="verdict" class="NG">NG</div>' in dom
    finally:
        view.stop()
