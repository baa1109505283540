"""serve --config with line I/O per camera (issues 18 + 17): each PLC-triggered camera has its own handshake on its
own Modbus / OPC UA server (real pymodbus and asyncua clients over loopback): every trigger gets exactly one result
on its own camera, judged from a frame captured after the trigger, while a free-running camera on the same batched
model keeps going; a PLC client killed on one camera does not disturb the other; trigger = "hardware" with the fake
GenICam camera of the single-camera tests; per-camera counters in summary.json and on the tiles; bind errors."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from fixture_models import build_diff_model, render_part
from line_fixtures import free_port, page_dom, recording
from test_rt_multicam import log_of, serve, station_file

from protospect.runtime import multicam, multicam_line
from protospect.runtime.sources import ArraySource

pytest.importorskip("pymodbus", reason="pymodbus not installed (pip install 'protospect[line]')")
pytest.importorskip("asyncua", reason="asyncua not installed (pip install 'protospect[line]')")

from asyncua import Client  # noqa: E402
from pymodbus.client import ModbusTcpClient  # noqa: E402

from protospect.runtime.line import modbus  # noqa: E402


class Paced(ArraySource):
    """A live camera (stale frames are dropped, not queued) at about 50 frames/s."""

    live = True

    def read(self):
        time.sleep(0.02)
        return super().read()


@pytest.fixture(scope="module")
def dyn(fx, tmp_path_factory):
    """The fixture model with a dynamic batch: every camera of the station shares it (one batched loop)."""
    root = tmp_path_factory.mktemp("multicam_line")
    return build_diff_model(root / "dyn.onnx", fx.ref, threshold=fx.threshold, map_range=(0.0, 0.3), batch="dynamic")


@pytest.fixture
def live_cameras(monkeypatch):
    """Sources named live:<name> are generated live cameras (parts, every 4th defective)."""
    rng = np.random.default_rng(11)
    frames = [render_part(rng, (160, 120), defect=i % 4 == 1) for i in range(8)]
    real = multicam.open_source
    monkeypatch.setattr(multicam, "open_source", lambda spec, loop=False: Paced(frames, loop=True, bgr=True, name=spec)
                        if str(spec).startswith("live:") else real(spec, loop=loop))


def start_station(cfg: Path, sink: Path, view=None, window_ms: float = 10.0):
    """load, open the PLC servers, build and run in a thread -> (station, lines, close())."""
    args = argparse.Namespace(sink=sink, loop=False, queue_size=2, max_frames=None, drift_window=0, fsync_every=100,
                              batch_window_ms=window_ms)
    conf = multicam.load_station(cfg)
    models = multicam.load_models(conf)
    for backend, _ in models.values():
        backend.__enter__()
    lines = multicam_line.open_lines(conf)
    station = multicam.build(conf, models, args, view, lines)
    runner = threading.Thread(target=station.run, daemon=True)
    runner.start()

    def close():
        station.stop()
        runner.join(30)
        multicam_line.close_lines(lines)
        for backend, _ in models.values():
            backend.__exit__(None, None, None)
        assert not runner.is_alive()
    return station, lines, close


def connect_modbus(port: int) -> ModbusTcpClient:
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
    t0 = time.monotonic()
    while not client.connect():
        assert time.monotonic() - t0 < 20
        time.sleep(0.05)
    return client


def poll(client, *bits, timeout=20.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        got = client.read_discrete_inputs(0, count=modbus.N_DI).bits
        if any(got[b] for b in bits):
            return got
        time.sleep(0.003)
    raise AssertionError(f"discrete inputs {bits} never set")


def modbus_cycle(client) -> tuple[int, str, int]:
    """One PLC handshake: wait Ready, trigger, wait for the result, read it, ack -> (seq, verdict, score register)."""
    poll(client, modbus.DI_READY)
    time.sleep(0.03)  # stale frames come in meanwhile
    assert not client.write_coil(modbus.COIL_TRIGGER, True).isError()
    bits = poll(client, modbus.DI_RESULT_READY, modbus.DI_ERROR)
    assert bits[modbus.DI_RESULT_READY] and not bits[modbus.DI_ERROR]
    regs = client.read_input_registers(0, count=modbus.N_IR).registers
    verdict = "OK" if bits[modbus.DI_OK] else "REVIEW" if bits[modbus.DI_REVIEW] else "NG"
    assert not client.write_coil(modbus.COIL_ACK, True).isError()
    return regs[modbus.IR_SEQ], verdict, regs[modbus.IR_SCORE]


async def opcua_plc(port: int, n: int) -> list[tuple[int, str, float]]:
    """n handshakes over OPC UA (Trigger() / Ack())."""
    t0 = time.monotonic()
    while True:
        client = Client(f"opc.tcp://127.0.0.1:{port}", timeout=10)
        try:
            await client.connect()
            break
        except OSError:
            assert time.monotonic() - t0 < 30
            await asyncio.sleep(0.2)
    got = []
    try:
        idx = await client.get_namespace_index("urn:protospect:station")
        st = await client.nodes.objects.get_child([f"{idx}:Station"])
        nodes = {k: await st.get_child([f"{idx}:{k}"]) for k in ("Ready", "ResultReady", "Error", "Seq", "Verdict", "Score")}

        async def wait(*names):
            t1 = time.monotonic()
            while not any([await nodes[k].read_value() for k in names]):
                assert time.monotonic() - t1 < 20
                await asyncio.sleep(0.003)

        for _ in range(n):
            await wait("Ready")
            await asyncio.sleep(0.03)
            assert await st.call_method(f"{idx}:Trigger") is True
            await wait("ResultReady", "Error")
            assert not await nodes["Error"].read_value()
            got.append((await nodes["Seq"].read_value(), await nodes["Verdict"].read_value(),
                        await nodes["Score"].read_value()))
            assert await st.call_method(f"{idx}:Ack") is True
    finally:
        await client.disconnect()
    return got


def check_camera(log: list[dict], accepted: list, plc: list, same_score) -> None:
    """Exactly one logged result per trigger of this camera, the PLC saw it, each frame captured after its trigger."""
    n = len(plc)
    assert [r["trigger_seq"] for r in log] == list(range(1, n + 1)) and len(accepted) == n
    for t, r, (seq, verdict, score) in zip(accepted, log, plc):
        assert t.seq == r["trigger_seq"] == seq
        assert r["t_capture_ns"] >= t.t_ns  # the judged frame was captured after its trigger
        assert verdict == r["verdict"] and same_score(score, r["score"])


def test_two_plc_cameras_modbus_and_opcua_and_a_free_camera_on_one_batched_model(fx, dyn, live_cameras, tmp_path):
    from protospect.runtime.station_view import StationView

    mb, ua_port = free_port(), free_port()
    cfg = station_file(tmp_path / "station.toml", [
        {"name": "press", "source": "live:press", "model": dyn, "trigger": "plc", "modbus": f"127.0.0.1:{mb}"},
        {"name": "weld", "source": "live:weld", "model": dyn, "trigger": "plc", "opcua": f"opc.tcp://127.0.0.1:{ua_port}"},
        {"name": "belt", "source": "live:belt", "model": dyn}])
    view = StationView(port=0)
    # a batch closes only when every camera it waits for has a frame (the window is a minute): a PLC camera that
    # were waited for between its triggers would stall the free camera and the other PLC's results
    station, lines, close = start_station(cfg, tmp_path / "root", view, window_ms=60000)
    view.lanes = station.lanes
    view.start()
    press, weld, belt = station.lanes
    accepted = {name: recording(lines[name].handshake) for name in ("press", "weld")}
    n_press, n_weld = 6, 5
    opc = {}
    opc_thread = threading.Thread(target=lambda: opc.setdefault("plc", asyncio.run(asyncio.wait_for(
        opcua_plc(ua_port, n_weld), 120))), daemon=True)
    try:
        client = connect_modbus(mb)
        try:
            poll(client, modbus.DI_READY)
            belt_before = belt.pipeline.counters.processed
            opc_thread.start()  # the two PLCs trigger their cameras at the same time
            plc_press = [modbus_cycle(client) for _ in range(n_press)]
        finally:
            client.close()
        opc_thread.join(120)
        belt_after = belt.pipeline.counters.processed
        tiles = {c["name"]: c for c in json.loads(urllib.request.urlopen(view.url + "station.json", timeout=10).read())
                 ["cameras"]}
        reports = {lane.name: lane.report() for lane in station.lanes}
        dom = page_dom(view.url, tmp_path)
    finally:
        close()
        view.stop()
    assert "plc" in opc, "the OPC UA PLC did not finish"
    check_camera(log_of(tmp_path / "root/press"), accepted["press"], plc_press,
                 lambda reg, score: reg == modbus.score_register(score))
    check_camera(log_of(tmp_path / "root/weld"), accepted["weld"], opc["plc"],
                 lambda value, score: value == pytest.approx(score, abs=1e-6))
    # the PLC cameras judged only their triggered frames; their other frames were skipped, never logged
    assert press.pipeline.untriggered > 0 and weld.pipeline.untriggered > 0
    # the free-running camera went on while both PLCs worked, every frame of it judged without a trigger
    assert belt_after > belt_before
    belt_log = log_of(tmp_path / "root/belt")
    assert len(belt_log) >= belt_after and all("trigger_seq" not in r for r in belt_log)
    # each camera's own counters: summary and tile
    p, w = reports["press"]["line"], reports["weld"]["line"]
    assert (p["triggers"], w["triggers"]) == (n_press, n_weld)
    assert "modbus" in p and "opcua" not in p and "opcua" in w and "modbus" not in w
    assert p["modbus"]["clients"] == 1 and p["modbus"]["errors"] == 0 and w["opcua"]["calls"] >= 2 * n_weld
    assert "line" not in reports["belt"] and reports["press"]["trigger"]["trigger_count"] == n_press
    assert tiles["press"]["state"]["line"]["triggers"] == n_press and tiles["weld"]["state"]["line"]["state"] == "READY"
    assert tiles["belt"]["state"]["line"] == {}
    if dom is not None:  # the tiles as a browser draws them (station.html)
        assert 'data-rendered="3"' in dom, dom[:2000]
        assert f'<div class="plc k">PLC READY \u00b7 triggers {n_press} \u00b7 refused 0' in dom
        assert '<div class="plc k"></div>' in dom  # the free camera: no line I/O


KILLED_CLIENT = """
import sys, time
from pymodbus.client import ModbusTcpClient
c = ModbusTcpClient("127.0.0.1", port=int(sys.argv[1]), timeout=5)
assert c.connect()
while not c.read_discrete_inputs(0, count=7).bits[0]:  # ready
    time.sleep(0.005)
print("triggered", not c.write_coil(0, True).isError(), flush=True)
time.sleep(60)  # killed here: no ack, no clean close
"""


def test_a_killed_plc_client_on_one_camera_does_not_disturb_the_other(fx, dyn, live_cameras, tmp_path):
    port_a, port_b = free_port(), free_port()
    cfg = station_file(tmp_path / "station.toml", [
        {"name": "a", "source": "live:a", "model": dyn, "trigger": "plc", "modbus": f"127.0.0.1:{port_a}"},
        {"name": "b", "source": "live:b", "model": dyn, "trigger": "plc", "modbus": f"127.0.0.1:{port_b}"}])
    station, lines, close = start_station(cfg, tmp_path / "root")
    accepted_b = recording(lines["b"].handshake)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, str(port_a)], stdout=subprocess.PIPE, text=True)
    try:
        client_b = connect_modbus(port_b)
        try:
            plc_b = [modbus_cycle(client_b)]
            assert proc.stdout.readline().split() == ["triggered", "True"]
            os.kill(proc.pid, signal.SIGKILL)  # camera a's PLC dies between its trigger and its ack
            proc.wait(10)
            plc_b += [modbus_cycle(client_b) for _ in range(4)]  # camera b's PLC goes on undisturbed
        finally:
            client_b.close()
        client_a = connect_modbus(port_a)  # a's next client: the unacked result is still shown; ack, trigger again
        try:
            assert poll(client_a, modbus.DI_RESULT_READY)[modbus.DI_RESULT_READY]
            client_a.write_coil(modbus.COIL_ACK, True)
            seq, _, _ = modbus_cycle(client_a)
        finally:
            client_a.close()
        t0 = time.monotonic()
        while lines["a"].status.snapshot()["modbus"]["disconnects"] < 2 and time.monotonic() - t0 < 10:
            time.sleep(0.01)
        a, b = lines["a"].status.snapshot(), lines["b"].status.snapshot()
    finally:
        proc.kill()
        proc.wait(10)
        close()
    assert seq == 2 and [r["trigger_seq"] for r in log_of(tmp_path / "root/a")] == [1, 2]
    check_camera(log_of(tmp_path / "root/b"), accepted_b, plc_b, lambda reg, score: reg == modbus.score_register(score))
    assert a["modbus"]["disconnects_mid_handshake"] == 1 and a["modbus"]["clients"] == 2
    # b: one client, closed by the test after its last ack (a clean disconnect, not mid-handshake)
    assert b["modbus"]["disconnects_mid_handshake"] == 0 and b["modbus"]["clients"] == 1 and b["modbus"]["errors"] == 0
    assert (a["triggers"], b["triggers"]) == (2, 5) and b["triggers_refused"] == 0


def test_serve_config_plc_end_to_end_summary_per_camera(fx, dyn, tmp_path, capsys):
    """Through the CLI: two replayed cameras, each answering its own Modbus PLC; --max-frames ends each after 2."""
    ports = {"left": free_port(), "right": free_port()}
    cfg = station_file(tmp_path / "station.toml", [
        {"name": n, "source": fx.video, "model": dyn, "trigger": "plc", "modbus": f"127.0.0.1:{p}"} for n, p in ports.items()])
    out = {}
    argv = ["--config", cfg, "--sink", tmp_path / "root", "--loop", "--max-frames", 2, "--drift-window", 0]
    th = threading.Thread(target=lambda: out.setdefault("code", serve(*argv)), daemon=True)
    th.start()
    clients = {n: connect_modbus(p) for n, p in ports.items()}
    try:
        for name in ("right", "left"):
            assert modbus_cycle(clients[name])[0] == 1
        for name, c in clients.items():  # the 2nd trigger: the camera stops after its verdict
            poll(c, modbus.DI_READY)
            c.write_coil(modbus.COIL_TRIGGER, True)
    finally:
        th.join(60)
        for c in clients.values():
            c.close()
    assert out.get("code") == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert printed.count("line I/O: no failures counted") == 2
    for name in ports:
        assert [r["trigger_seq"] for r in log_of(tmp_path / "root" / name)] == [1, 2]
        summary = json.loads((tmp_path / "root" / name / "summary.json").read_text())
        assert summary["line"]["triggers"] == 2 and summary["line"]["modbus"]["clients"] == 1
        assert summary["trigger"]["trigger_count"] == 2 and summary["trigger"]["state"] == "OFFLINE"


def test_a_busy_port_is_one_line_naming_the_camera_and_nothing_keeps_listening(fx, dyn, tmp_path, capsys):
    free = free_port()
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        cfg = station_file(tmp_path / "station.toml", [
            {"name": "first", "source": fx.video, "model": dyn, "trigger": "plc", "modbus": f"127.0.0.1:{free}"},
            {"name": "second", "source": fx.video, "model": dyn, "trigger": "plc", "modbus": f"127.0.0.1:{port}"}])
        assert serve("--config", cfg, "--sink", tmp_path / "root") == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and f"[[camera]] 'second' key 'modbus': 127.0.0.1:{port}: cannot listen" in err[0], err
    assert "in use" in err[0] and not (tmp_path / "root").exists()
    with socket.create_server(("127.0.0.1", free)):  # the first camera's server was stopped again
        pass


def test_hardware_trigger_camera_beside_a_free_one(fx, dyn, tmp_path, monkeypatch, capsys):
    from test_rt_pixel_formats import RGB, FakeAcquirer, fake_harvesters

    cti = tmp_path / "vendor.cti"
    cti.write_bytes(b"producer")
    n = 5
    script = []
    for _ in range(n):  # pulses on the line: a frame, then quiet until the next part
        script += [RGB.copy(), "wait", "wait"]
    acquirer = FakeAcquirer(script, "RGB8")
    fake_harvesters(monkeypatch, acquirer, [])
    cfg = station_file(tmp_path / "station.toml", [
        {"name": "hw", "source": f"genicam:{cti}", "model": dyn, "trigger": "hardware", "trigger_source": "Line1"},
        {"name": "free", "source": fx.video, "model": dyn}])
    assert serve("--config", cfg, "--sink", tmp_path / "root", "--max-frames", n, "--queue-size", 1,
                 "--drift-window", 0) == 0, capsys.readouterr().err
    assert ("TriggerMode", "On") in acquirer.log and ("TriggerSource", "Line1") in acquirer.log
    hw = log_of(tmp_path / "root/hw")
    assert [r["seq"] for r in hw] == list(range(n))  # every delivered frame judged, none dropped
    assert [r["trigger_seq"] for r in hw] == list(range(1, n + 1))  # each answers one pulse
    summary = json.loads((tmp_path / "root/hw/summary.json").read_text())
    assert summary["trigger"] == {"mode": "hardware", "trigger_count": n} and summary["counters"]["dropped"] == 0
    assert all("trigger_seq" not in r for r in log_of(tmp_path / "root/free"))


def test_line_table_mqtt_feeds_each_camera_on_its_own_topics(fx, dyn, tmp_path):
    from test_rt_mqtt import MOSQUITTO, Broker

    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed (test.sh: apt-get install mosquitto)")
    import paho.mqtt.client as mqtt

    port = free_port()
    broker = Broker(tmp_path, port).start()
    got: dict[str, set] = {}
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="protospect-test-station-sub")
    sub.on_connect = lambda c, u, f, rc, p=None: c.subscribe("plant/st7/+/verdict", qos=1)
    sub.on_message = lambda c, u, msg: got.setdefault(msg.topic, set()).add(json.loads(msg.payload)["seq"])
    sub.connect("127.0.0.1", port, keepalive=10)
    sub.loop_start()
    try:
        t0 = time.monotonic()
        while not sub.is_connected() and time.monotonic() - t0 < 10:
            time.sleep(0.02)
        time.sleep(0.3)  # subscribed before the run
        cfg = station_file(tmp_path / "station.toml", [{"name": n, "source": fx.video, "model": dyn} for n in ("a", "b")])
        cfg.write_text(f'[line]\nmqtt = "mqtt://127.0.0.1:{port}/plant"\nstation = "st7"\n' + cfg.read_text())
        assert serve("--config", cfg, "--sink", tmp_path / "root") == 0
        want = {f"plant/st7/{n}/verdict": {r["seq"] for r in log_of(tmp_path / "root" / n)} for n in ("a", "b")}
        t0 = time.monotonic()
        while got != want and time.monotonic() - t0 < 20:
            time.sleep(0.05)
        summary = json.loads((tmp_path / "root/a/summary.json").read_text())
    finally:
        sub.disconnect()
        sub.loop_stop()
        broker.stop()
    assert got == want and all(len(seqs) == fx.n_frames for seqs in want.values())  # each on its own topic, all
    assert summary["line"]["mqtt"]["published"] == fx.n_frames and summary["line"]["mqtt"]["overflow"] == 0
    assert (tmp_path / "root/a/mqtt_spool.jsonl").exists() and (tmp_path / "root/b/mqtt_spool.jsonl").exists()


def test_line_table_mqtt_without_a_sink_folder_is_one_line(fx, dyn, tmp_path, capsys):
    cfg = station_file(tmp_path / "station.toml", [{"name": "a", "source": fx.video, "model": dyn}])
    cfg.write_text('[line]\nmqtt = "mqtt://127.0.0.1:1/plant"\n' + cfg.read_text())
    assert serve("--config", cfg) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "[[camera]] 'a' key 'sink': [line] mqtt needs a sink folder per camera" in err[0], err
