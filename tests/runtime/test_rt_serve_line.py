"""serve's line flags: bad combinations, a malformed MQTT URL and a Modbus port in use are one-line errors
before anything runs; serve --trigger plc --modbus answers triggers end to end (pymodbus' client); a station
bundle's line settings are used by `serve STATION_DIR` unless a flag overrides them."""
from __future__ import annotations

import json
import shutil
import socket
import threading
import time

import pytest
import numpy as np
from line_fixtures import free_port

from protospect.cli import main


def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _serve_plc(fx, tmp_path, line_flags, max_frames):
    """serve --trigger plc with ``line_flags`` (the adapter's) in a thread -> (thread, {"code": exit code})."""
    out = {}
    argv = ["serve", str(fx.model), "--source", str(fx.video), "--loop", "--sink", str(tmp_path), "--trigger", "plc",
            *line_flags, "--max-frames", str(max_frames), "--drift-window", "0"]
    th = threading.Thread(target=lambda: out.setdefault("code", main(argv)), daemon=True)
    th.start()
    return th, out


def _trigger_seqs(tmp_path):
    return [json.loads(line)["trigger_seq"] for line in (tmp_path / "verdicts.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("extra, needle", [
    (["--trigger", "plc"], "--trigger plc needs"),
    (["--modbus", ":5020"], "add --trigger plc"),
    (["--trigger", "plc", "--modbus", "nope"], "--modbus nope"),
    (["--mqtt", "mqtt://h:1883/p"], "--mqtt needs --sink"),
    (["--opcua", "opc.tcp://127.0.0.1:4840"], "add --trigger plc"),
    (["--trigger", "plc", "--opcua", "127.0.0.1:4840"], "--opcua 127.0.0.1:4840"),
    (["--trigger", "plc", "--opcua", "opc.tcp://0.0.0.0:4840"], "anonymous OPC UA is allowed on 127.0.0.1 only"),
    (["--trigger", "plc", "--opcua", "opc.tcp://0.0.0.0:4840", "--opcua-user", "X/none"], "--opcua-user"),
    (["--opcua-user", "X"], "add --opcua"),
    (["--mqtt", "mqtt://h:1883/#", "--sink", "X"], "--mqtt mqtt://h:1883/#"),
])
def test_bad_line_flags_are_one_line_errors(fx, capsys, tmp_path, extra, needle):
    extra = [a.replace("X", str(tmp_path)) if a.startswith("X") else a for a in extra]
    code, err = _err(capsys, ["serve", str(fx.model), "--source", str(fx.video), *extra])
    assert code != 0 and len(err) == 1 and needle in err[0], err


def test_modbus_port_in_use_is_one_line(fx, capsys, tmp_path):
    pytest.importorskip("pymodbus", reason="pymodbus not installed (pip install 'protospect[line]')")
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        code, err = _err(capsys, ["serve", str(fx.model), "--source", str(fx.video), "--sink", str(tmp_path),
                                  "--trigger", "plc", "--modbus", f"127.0.0.1:{port}"])
    assert code != 0 and [line for line in err if "error" in line] == [err[-1]] and "in use" in err[-1]


def test_serve_plc_over_modbus_end_to_end(fx, tmp_path):
    pytest.importorskip("pymodbus", reason="pymodbus not installed (pip install 'protospect[line]')")
    from pymodbus.client import ModbusTcpClient

    from protospect.runtime.line import modbus

    port = free_port()
    th, out = _serve_plc(fx, tmp_path, ["--modbus", f"127.0.0.1:{port}"], 4)
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
    t0 = time.monotonic()
    while not client.connect() and time.monotonic() - t0 < 20:
        time.sleep(0.1)
    try:
        for seq in (1, 2, 3):
            t0 = time.monotonic()
            while not client.read_discrete_inputs(0, count=modbus.N_DI).bits[modbus.DI_READY]:
                assert time.monotonic() - t0 < 20
                time.sleep(0.005)
            if seq == 1:
                client.write_coil(modbus.COIL_ACK, True)  # nothing to ack: ignored, counted
            client.write_coil(modbus.COIL_TRIGGER, True)
            if seq == 1:
                client.write_coil(modbus.COIL_TRIGGER, True)  # while busy (or done, not acked): refused, counted
            t0 = time.monotonic()
            while not client.read_discrete_inputs(0, count=modbus.N_DI).bits[modbus.DI_RESULT_READY]:
                assert time.monotonic() - t0 < 20
                time.sleep(0.005)
            assert client.read_input_registers(0, count=modbus.N_IR).registers[modbus.IR_SEQ] == seq
            client.write_coil(modbus.COIL_ACK, True)
        client.write_coil(modbus.COIL_TRIGGER, True)  # the 4th: serve stops after its verdict (--max-frames 4)
    finally:
        client.close()
        th.join(30)
    assert out.get("code") == 0
    assert _trigger_seqs(tmp_path) == [1, 2, 3, 4]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["trigger"]["trigger_count"] == 4
    line = summary["line"]  # the adapters' counters (runtime/line/status.py)
    assert line["triggers"] == 4 and line["triggers_refused"] == 1 and line["acks_without_result"] == 1
    assert line["modbus"]["clients"] == 1 and line["modbus"]["errors"] == 0 and line["modbus"]["requests"] > 8


def test_serve_plc_over_opcua_end_to_end(fx, tmp_path):
    pytest.importorskip("asyncua", reason="asyncua not installed (pip install 'protospect[line]')")
    import asyncio

    from asyncua import Client

    port = free_port()
    th, out = _serve_plc(fx, tmp_path, ["--opcua", f"opc.tcp://127.0.0.1:{port}"], 3)

    async def plc():
        t0 = time.monotonic()
        while True:
            client = Client(f"opc.tcp://127.0.0.1:{port}", timeout=5)
            try:
                await client.connect()
                break
            except OSError:
                assert time.monotonic() - t0 < 30
                await asyncio.sleep(0.2)
        try:
            idx = await client.get_namespace_index("urn:protospect:station")
            st = await client.nodes.objects.get_child([f"{idx}:Station"])
            ready, result_ready, seq = [await st.get_child([f"{idx}:{n}"]) for n in ("Ready", "ResultReady", "Seq")]
            for want in (1, 2):
                while not await ready.read_value():
                    await asyncio.sleep(0.005)
                assert await st.call_method(f"{idx}:Trigger") is True
                while not await result_ready.read_value():
                    await asyncio.sleep(0.005)
                assert await seq.read_value() == want
                assert await st.call_method(f"{idx}:Ack") is True
            await st.call_method(f"{idx}:Trigger")  # the 3rd: serve stops after its verdict (--max-frames 3)
        finally:
            await client.disconnect()

    asyncio.run(asyncio.wait_for(plc(), 90))
    th.join(30)
    assert out.get("code") == 0
    assert _trigger_seqs(tmp_path) == [1, 2, 3]


def _bundle(fx, folder, line):
    """A sealed station bundle around the fixture model whose station.json carries ``line``."""
    from protospect import station
    from protospect.conformal import operating_point

    folder.mkdir()
    shutil.copy(fx.model, folder / station.MODEL)
    op = operating_point(np.linspace(0.0, fx.threshold * 0.9, 99))
    rec = {k: None for k in station.KEYS}
    rec.update(format=station.FORMAT, format_version=station.FORMAT_VERSION, operating_point=op.to_dict(),
               model=station.MODEL, files=station.hash_files(folder), line=line)
    (folder / station.STATION_JSON).write_text(json.dumps(station.seal(rec)))
    return folder


def _settings(bundle, *flags):
    """serve's parsed flags for ``serve BUNDLE --source x *flags`` after the bundle's line settings."""
    import argparse

    from protospect.runtime import cli_serve, station_bundle

    parser = argparse.ArgumentParser()
    cli_serve.add_arguments(parser)
    args = parser.parse_args([str(bundle), "--source", "x", *flags])
    station_bundle.apply_line_settings(args)
    return args


def test_bundle_line_settings_apply_unless_a_flag_overrides_them(fx, tmp_path):
    line = {"trigger": "plc", "modbus": "127.0.0.1:5020", "mqtt": "mqtt://broker:1883/plant", "station": "st7"}
    bundle = _bundle(fx, tmp_path / "station", line)
    a = _settings(bundle)
    assert (a.trigger, a.modbus, a.opcua, a.mqtt, a.station) == ("plc", "127.0.0.1:5020", None, "mqtt://broker:1883/plant",
                                                                 "st7")
    a = _settings(bundle, "--modbus", ":5021", "--station", "st8")  # a flag wins over the bundle
    assert (a.trigger, a.modbus, a.station, a.mqtt) == ("plc", ":5021", "st8", "mqtt://broker:1883/plant")
    a = _settings(bundle, "--trigger", "free")  # free on the command line: the bundle's PLC endpoints are not taken
    assert (a.trigger, a.modbus, a.mqtt) == ("free", None, "mqtt://broker:1883/plant")
    a = _settings(fx.model)  # not a bundle: serve's defaults
    assert (a.trigger, a.modbus, a.mqtt) == ("free", None, None)


@pytest.mark.parametrize("line, needle", [
    ({"trigger": "sometimes"}, "is not one of free, plc, hardware"),
    ({"modbus": 5020}, '"line".modbus must be a non-empty string'),
    ({"speed": "fast"}, "unknown key 'speed'"),
])
def test_bad_bundle_line_settings_are_one_line_errors(fx, tmp_path, capsys, line, needle):
    bundle = _bundle(fx, tmp_path / "station", line)
    code, err = _err(capsys, ["serve", str(bundle), "--source", str(fx.video), "--sink", str(tmp_path / "out")])
    assert code != 0 and len(err) == 1 and needle in err[0], err


def test_serve_station_dir_talks_modbus_from_its_bundle(fx, tmp_path):
    pytest.importorskip("pymodbus", reason="pymodbus not installed (pip install 'protospect[line]')")
    from pymodbus.client import ModbusTcpClient

    from protospect.runtime.line import modbus

    port = free_port()
    bundle = _bundle(fx, tmp_path / "station", {"trigger": "plc", "modbus": f"127.0.0.1:{port}"})
    sink = tmp_path / "out"
    out = {}
    argv = ["serve", str(bundle), "--source", str(fx.video), "--loop", "--sink", str(sink), "--max-frames", "2",
            "--drift-window", "0"]  # no line flag: the bundle's
    th = threading.Thread(target=lambda: out.setdefault("code", main(argv)), daemon=True)
    th.start()
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
    t0 = time.monotonic()
    while not client.connect():
        assert time.monotonic() - t0 < 30 and th.is_alive()
        time.sleep(0.1)
    try:
        for seq in (1, 2):
            t0 = time.monotonic()
            while not client.read_discrete_inputs(0, count=modbus.N_DI).bits[modbus.DI_READY]:
                assert time.monotonic() - t0 < 20
                time.sleep(0.005)
            client.write_coil(modbus.COIL_TRIGGER, True)
            if seq == 2:
                break  # serve stops after its verdict (--max-frames 2)
            while not client.read_discrete_inputs(0, count=modbus.N_DI).bits[modbus.DI_RESULT_READY]:
                assert time.monotonic() - t0 < 20
                time.sleep(0.005)
            client.write_coil(modbus.COIL_ACK, True)
    finally:
        client.close()
        th.join(30)
    assert out.get("code") == 0
    assert [json.loads(row)["trigger_seq"] for row in (sink / "verdicts.jsonl").read_text().splitlines()] == [1, 2]
