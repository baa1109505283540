"""serve's line flags: bad combinations, a malformed MQTT URL and a Modbus port in use are one-line errors
before anything runs; serve --trigger plc --modbus answers triggers end to end (pymodbus' client)."""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest
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
