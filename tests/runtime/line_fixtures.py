"""Shared by the PLC adapter tests (test_rt_modbus.py, test_rt_opcua.py) and studies/plc_trigger_bench.py:
a free loopback port, a Handshake whose accepted triggers are recorded, and a station pipeline fed by a
generated live camera."""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
from fixture_models import render_part

from protospect.runtime.backends.ort import OrtBackend
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
