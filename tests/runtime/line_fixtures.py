"""Shared by the PLC adapter tests (test_rt_modbus.py, test_rt_opcua.py) and studies/plc_trigger_bench.py:
a free loopback port, a Handshake whose accepted triggers are recorded, and a station pipeline fed by a
generated live camera; also a page's DOM from headless chromium (test_rt_multicam_line.py)."""
from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from fixture_models import render_part

from protospect.runtime.backends.ort import OrtBackend
from protospect.runtime.line.handshake import Handshake
from protospect.runtime.pipeline import Pipeline
from protospect.runtime.sinks import JsonlSink
from protospect.runtime.sources import ArraySource


class LiveGenerated(ArraySource):
    live = True

    def read(self):
        time.sleep(0.003)
        return super().read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recording(hs) -> list:
    """Wrap hs.trigger so that every accepted trigger is appended to the returned list."""
    accepted = []
    plain = hs.trigger

    def trigger():
        t = plain()
        if t is not None:
            accepted.append(t)
        return t

    hs.trigger = trigger
    return accepted


def run_pipeline(fx, tmp_path, hs):
    """Start the station pipeline (fixture model, generated live parts, JSONL log) in a thread."""
    rng = np.random.default_rng(8)
    frames = [render_part(rng, (160, 120), defect=i % 4 == 1) for i in range(8)]
    log_path = tmp_path / "verdicts.jsonl"
    pipeline = Pipeline(OrtBackend(fx.model), LiveGenerated(frames, loop=True, bgr=True), [JsonlSink(log_path)], trigger=hs)
    th = threading.Thread(target=pipeline.run, daemon=True)
    th.start()
    return pipeline, th, log_path


def start_line(fx, tmp_path, adapter_cls) -> SimpleNamespace:
    """A Handshake (accepted triggers recorded), ``adapter_cls`` on a free loopback port, the pipeline running."""
    hs = Handshake()
    accepted = recording(hs)
    port = free_port()
    adapter = adapter_cls(hs, "127.0.0.1", port).start()
    pipeline, th, log_path = run_pipeline(fx, tmp_path, hs)
    return SimpleNamespace(hs=hs, accepted=accepted, port=port, adapter=adapter, pipeline=pipeline, thread=th,
                           log_path=log_path)


def stop_line(line: SimpleNamespace) -> None:
    line.pipeline.stop()
    line.thread.join(20)
    line.adapter.stop()


def check_one_result_per_trigger(line: SimpleNamespace, plc: list, n: int, same_score) -> list[dict]:
    """Exactly one logged result per trigger, the PLC saw the same (seq, verdict, score: ``same_score(plc_score,
    logged_score)``), and every judged frame was captured after its trigger. -> the log's records."""
    recs = [json.loads(row) for row in line.log_path.read_text().splitlines()]
    assert [r["trigger_seq"] for r in recs] == list(range(1, n + 1))  # exactly one result per trigger
    assert [p[0] for p in plc] == list(range(1, n + 1))
    for t, r, (seq, verdict, score) in zip(line.accepted, recs, plc):
        assert t.seq == r["trigger_seq"] == seq
        assert r["t_capture_ns"] >= t.t_ns  # the judged frame was captured after its trigger
        assert verdict == r["verdict"] and same_score(score, r["score"])
    return recs


def port_in_use_error(adapter_cls) -> tuple[int, str]:
    """Start ``adapter_cls`` on a loopback port that is already bound -> (the port, its ConfigError's message)."""
    import pytest

    from protospect.errors import ConfigError
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError) as err:
            adapter_cls(Handshake(), "127.0.0.1", port).start()
    return port, str(err.value)


def page_dom(url: str, tmp_path: Path) -> str | None:
    """The station page's DOM after its scripts ran in headless chromium (None: no chromium here)."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        return None
    cmd = [str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=3000", "--dump-dom", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90).stdout
