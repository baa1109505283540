"""The live operator page: its JSON and JPEG endpoints, loopback only, and rendering in headless Chromium."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from protospect.errors import ConfigError
from protospect.runtime.backends.ort import OrtBackend
from protospect.runtime.operator_view import OperatorView, parse_view
from protospect.runtime.pipeline import Pipeline
from protospect.runtime.sources import ArraySource, open_source

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
def _dump_dom(cmd: list[str], marker: str, tries: int = 3) -> str:
    """Chromium's DOM once app.js has drawn ``marker``. The virtual-time budget runs out before a real fetch
    returns on a heavily loaded machine (seen in CI beside other jobs), so a dump without it is retried."""
    dom = ""
    for _ in range(tries):
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=90).stdout
        if marker in dom:
            break
    return dom


def test_page_renders_verdict_and_plots_in_headless_chromium(served, fx, tmp_path):
    view, _ = served
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", "--dump-dom", view.url]
    last = fx.n_frames - 1
    dom = _dump_dom(cmd, f'data-rendered="{last}"')
    assert f'data-rendered="{last}"' in dom, dom[:2000]           # app.js fetched state.json and drew
    assert f'data-points="{fx.n_frames}"' in dom                  # both plots got the full history
    assert '<div id="verdict" class="OK">OK</div>' in dom
    assert f'data-seq="{last}"' in dom and 'src="blob:' in dom  # the picture of exactly this frame
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
            dom = _dump_dom(cmd, f'data-rendered="{fx.n_frames - 1}"')
            assert f'data-rendered="{fx.n_frames - 1}"' in dom, dom[:2000]  # r.json() parsed, render() ran
            assert '<span id="score">nan</span>' in dom and '<div id="verdict" class="NG">NG</div>' in dom
    finally:
        view.stop()


class AlternatingSource(ArraySource):
    """A dark and a bright part in turn, about 500 frames/s: even seq dark, odd seq bright."""

    def __init__(self):
        dark, bright = np.full((120, 160, 3), 40, np.uint8), np.full((120, 160, 3), 200, np.uint8)
        super().__init__([dark, bright], loop=True, bgr=True, name="alternating")

    def read(self):
        time.sleep(0.002)  # fast next to any browser, yet leaves the server threads some CPU
        return super().read()


def _get_frame(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), b""


@pytest.fixture()
def fast_line(fx):
    """The page over a pipeline that is still running on the alternating source."""
    view = OperatorView(port=0, threshold=fx.threshold, map_range=(0.0, 0.3), backend="ort").start()
    pipeline = Pipeline(OrtBackend(fx.model), AlternatingSource(), [view])
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    try:
        t0 = time.monotonic()
        while json.loads(_get(view.url + "state.json"))["seq"] is None and time.monotonic() - t0 < 30:
            time.sleep(0.05)
        yield view
    finally:
        pipeline.stop()
        runner.join(timeout=30)
        view.stop()


def test_frame_jpg_serves_exactly_the_requested_seq_under_a_fast_alternating_source(fast_line):
    view = fast_line
    means = {0: [], 1: []}
    for i in range(60):
        state = json.loads(_get(view.url + "state.json"))
        seq = state["seq"]
        if i % 2:
            time.sleep(0.02)  # the line moves on by about 10 frames before the page asks for the picture
        status, headers, body = _get_frame(view.url + f"frame.jpg?seq={seq}")
        assert status == 200, (seq, status)  # the frame state.json reported is kept for the page
        assert headers.get("X-Frame-Seq") == str(seq)
        img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_GRAYSCALE)
        means[seq % 2].append(float(img.mean()))
    assert means[0] and means[1], means
    assert max(means[0]) < min(means[1]), means  # every dark part's seq got the dark picture, every bright one bright
    latest = json.loads(_get(view.url + "state.json"))["seq"]
    time.sleep(0.2)
    assert _get_frame(view.url + "frame.jpg?seq=1")[0] == 404  # long gone: no picture rather than another one
    assert _get_frame(view.url + "frame.jpg?seq=abc")[0] == 400
    status, headers, _ = _get_frame(view.url + "frame.jpg")  # no seq: the newest, and it says which
    assert status == 200 and int(headers["X-Frame-Seq"]) > latest


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium absent (apt-get install -y chromium)")
def test_browser_shows_the_picture_of_the_verdicts_seq_under_a_fast_source(fast_line, tmp_path):
    view = fast_line
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", "--dump-dom", view.url]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=90).stdout
    shown = re.search(r'data-rendered="(\d+)"', dom)
    assert shown, dom[:2000]
    seq = shown.group(1)
    assert f'<span id="seq">{seq}</span>' in dom and f'data-seq="{seq}"' in dom, dom[:2000]


def test_serve_view_keeps_the_page_up_after_a_finite_source_until_ctrl_c(fx, tmp_path):
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    cmd = [sys.executable, "-m", "protospect.cli", "serve", str(fx.model), "--source", str(fx.video),
           "--view", "127.0.0.1:0", "--sink", str(tmp_path / "sink")]
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, cwd=Path(__file__).resolve().parents[2])
    try:
        t0 = time.monotonic()
        while "stays up" not in out.read_text():
            assert proc.poll() is None, f"serve exited when the source ended: {err.read_text()}"
            assert time.monotonic() - t0 < 60, out.read_text()
            time.sleep(0.1)
        text = out.read_text()
        assert f"frames: processed {fx.n_frames}" in text  # the stats come first, as without --view
        url = re.search(r"stays up at (http://127\.0\.0\.1:\d+/)", text).group(1)
        time.sleep(0.5)
        state = json.loads(_get(url + "state.json"))
        assert state["seq"] == fx.n_frames - 1 and state["running"] is False
        status, headers, _ = _get_frame(url + f"frame.jpg?seq={fx.n_frames - 1}")
        assert status == 200 and headers["X-Frame-Seq"] == str(fx.n_frames - 1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in err.read_text()
    with pytest.raises(OSError):
        _get(url + "state.json")  # and then it is gone
