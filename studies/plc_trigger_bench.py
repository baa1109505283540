"""PLC trigger benchmark (issue 17): N triggers over OPC UA and over Modbus TCP against one station pipeline.

    OMP_NUM_THREADS=1 .venv-runtime/bin/python studies/plc_trigger_bench.py [--triggers 1000] [--model M.onnx]

A PLC client on loopback (asyncua's client for OPC UA, pymodbus' client for Modbus) loops: wait for Ready,
trigger, poll until ResultReady (1 ms poll), read Seq, ack. The station is Pipeline + Handshake + the adapter,
fed by a generated live camera (--fps, 640x480 parts) and the demo-sized fixture model (S=256 difference
model from tests/runtime/fixture_models.py, built in a temporary folder) unless --model is given.
Checked per protocol: every trigger got exactly one result (verdicts.jsonl trigger_seq = 1..N once each,
the client saw the same Seq), and every judged frame was captured at or after its trigger. Printed per
protocol: p50/p99/max of trigger-to-result as the PLC client sees it (trigger sent -> ResultReady seen) and as
the station logs it (`trigger_ms`: trigger accepted -> verdict).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "runtime"))

from protospect.runtime.backends.ort import OrtBackend  # noqa: E402
from protospect.runtime.line.handshake import Handshake  # noqa: E402
from protospect.runtime.pipeline import Pipeline  # noqa: E402
from protospect.runtime.sinks import JsonlSink  # noqa: E402
from protospect.runtime.sources import ArraySource  # noqa: E402

FRAME = (640, 480)


class Camera(ArraySource):
    """A live camera at ``fps``: read() returns when the next frame is due (the capture stamp is then)."""

    live = True

    def __init__(self, frames, fps):
        super().__init__(frames, loop=True, bgr=True, name="generated")
        self.period, self._next = 1.0 / fps, time.monotonic()

    def read(self):
        self._next += self.period
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            self._next = time.monotonic()
        return super().read()


def demo_model(folder: Path) -> Path:
    from fixture_models import build_diff_model, calibrate_threshold, reference_rgb, render_part
    ref = reference_rgb(256, FRAME)
    rng = np.random.default_rng(1)
    tmp = build_diff_model(folder / "model.onnx", ref, threshold=1.0)
    thr = calibrate_threshold(tmp, [render_part(rng, FRAME) for _ in range(6)])
    return build_diff_model(folder / "model.onnx", ref, threshold=thr)


def plc_modbus(port: int, n: int) -> list[tuple[int, float]]:
    from pymodbus.client import ModbusTcpClient

    from protospect.runtime.line import modbus as mb
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=10)
    assert client.connect(), "cannot connect to the Modbus server"
    seen = []
    try:
        for _ in range(n):
            while not client.read_discrete_inputs(0, count=mb.N_DI).bits[mb.DI_READY]:
                time.sleep(0.001)
            t0 = time.perf_counter()
            client.write_coil(mb.COIL_TRIGGER, True)
            while True:
                bits = client.read_discrete_inputs(0, count=mb.N_DI).bits
                if bits[mb.DI_RESULT_READY] or bits[mb.DI_ERROR]:
                    break
                time.sleep(0.001)
            dt = (time.perf_counter() - t0) * 1e3
            assert bits[mb.DI_RESULT_READY], "error instead of a result"
            seen.append((client.read_input_registers(0, count=mb.N_IR).registers[mb.IR_SEQ], dt))
            client.write_coil(mb.COIL_ACK, True)
    finally:
        client.close()
    return seen


def plc_opcua(port: int, n: int) -> list[tuple[int, float]]:
    from asyncua import Client

    from protospect.runtime.line.opcua import NAMESPACE

    async def main():
        seen = []
        async with Client(f"opc.tcp://127.0.0.1:{port}", timeout=10) as client:
            idx = await client.get_namespace_index(NAMESPACE)
            st = await client.nodes.objects.get_child([f"{idx}:Station"])
            ready, rr, err, seq = [await st.get_child([f"{idx}:{name}"]) for name in ("Ready", "ResultReady", "Error", "Seq")]
            for _ in range(n):
                while not await ready.read_value():
                    await asyncio.sleep(0.001)
                t0 = time.perf_counter()
                assert await st.call_method(f"{idx}:Trigger") is True
                while True:
                    got_rr, got_err = await client.read_values([rr, err])
                    if got_rr or got_err:
                        break
                    await asyncio.sleep(0.001)
                dt = (time.perf_counter() - t0) * 1e3
                assert got_rr, "error instead of a result"
                seen.append((await seq.read_value(), dt))
                await st.call_method(f"{idx}:Ack")
        return seen

    return asyncio.run(main())


def run_protocol(name: str, model: Path, n: int, fps: float, threads: int, out: Path) -> dict:
    from protospect.runtime.line.modbus import ModbusAdapter
    from protospect.runtime.line.opcua import OpcUaAdapter
    from line_fixtures import free_port, recording
    hs = Handshake()
    accepted = recording(hs)
    port = free_port()
    adapter = (OpcUaAdapter if name == "opcua" else ModbusAdapter)(hs, "127.0.0.1", port).start()
    rng = np.random.default_rng(3)
    from fixture_models import render_part
    frames = [render_part(rng, FRAME, defect=i % 10 == 5) for i in range(20)]
    log_path = out / f"verdicts_{name}.jsonl"
    pipeline = Pipeline(OrtBackend(model, threads=threads), Camera(frames, fps), [JsonlSink(log_path)], trigger=hs)
    th = threading.Thread(target=pipeline.run, daemon=True)
    th.start()
    t0 = time.monotonic()
    try:
        seen = (plc_opcua if name == "opcua" else plc_modbus)(port, n)
    finally:
        pipeline.stop()
        th.join(30)
        adapter.stop()
    wall = time.monotonic() - t0
    recs = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [r["trigger_seq"] for r in recs] == list(range(1, n + 1)), "not exactly one result per trigger"
    assert [s for s, _ in seen] == [(i + 1) & 0xFFFF for i in range(n)], "the PLC saw another Seq"
    assert len(accepted) == n and all(r["t_capture_ns"] >= t.t_ns for r, t in zip(recs, accepted)), \
        "a judged frame was captured before its trigger"
    client_ms = np.array([dt for _, dt in seen])
    station_ms = np.array([r["trigger_ms"] for r in recs])
    pct = lambda a: {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}  # noqa: E731
    return {"protocol": name, "triggers": n, "results": len(recs), "wall_s": wall,
            "client_ms": pct(client_ms), "station_ms": pct(station_ms)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--triggers", type=int, default=1000)
    ap.add_argument("--model", type=Path, default=None, help="an ONNX model (default: the demo-sized fixture model)")
    ap.add_argument("--fps", type=float, default=60.0, help="the generated camera's frame rate (default 60)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    ap.add_argument("--protocols", default="opcua,modbus")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        model = args.model or demo_model(out)
        print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}; "
              f"model {'demo fixture S=256' if args.model is None else model}; camera {args.fps:g} fps {FRAME[0]}x{FRAME[1]}; "
              f"ORT threads {args.threads}")
        for name in args.protocols.split(","):
            r = run_protocol(name, model, args.triggers, args.fps, args.threads, out)
            c, s = r["client_ms"], r["station_ms"]
            print(f"{name:6s} {r['triggers']} triggers -> {r['results']} results, every frame captured after its trigger; "
                  f"trigger-to-result ms: PLC client p50 {c['p50']:.1f} p99 {c['p99']:.1f} max {c['max']:.1f} | "
                  f"station trigger_ms p50 {s['p50']:.1f} p99 {s['p99']:.1f} max {s['max']:.1f} | {r['wall_s']:.0f} s",
                  flush=True)


if __name__ == "__main__":
    main()
