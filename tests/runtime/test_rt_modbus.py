"""The Modbus TCP adapter over loopback with pymodbus' own client: N triggers -> N results, each judged frame
captured after its trigger; trigger while busy refused, ack without result ignored; a client killed mid-handshake
(no ack) is counted and the next client recovers with ack then trigger; a failing request is counted and answered
with a Modbus exception; port in use -> one line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from line_fixtures import check_one_result_per_trigger, port_in_use_error, start_line, stop_line

pytest.importorskip("pymodbus", reason="pymodbus not installed (pip install 'protospect[line]')")

from pymodbus.client import ModbusTcpClient  # noqa: E402

from protospect.errors import ConfigError  # noqa: E402
from protospect.runtime.line import modbus  # noqa: E402
from protospect.runtime.line.status import LineStatus  # noqa: E402


def poll(client, bit, timeout=10.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        bits = client.read_discrete_inputs(0, count=modbus.N_DI).bits
        if any(bits[b] for b in (bit if isinstance(bit, tuple) else (bit,))):
            return bits
        time.sleep(0.002)
    raise AssertionError(f"discrete input {bit} never set")


def test_plc_over_modbus_n_triggers_n_results_each_frame_after_its_trigger(fx, tmp_path):
    n = 12
    line = start_line(fx, tmp_path, modbus.ModbusAdapter)
    client = ModbusTcpClient("127.0.0.1", port=line.port, timeout=5)
    plc = []
    try:
        assert client.connect()
        assert not client.write_coil(modbus.COIL_ACK, True).isError()  # ack with nothing to ack: ignored
        for _ in range(n):
            poll(client, modbus.DI_READY)
            time.sleep(0.02)  # stale frames queue up meanwhile
            assert not client.write_coil(modbus.COIL_TRIGGER, True).isError()
            client.write_coil(modbus.COIL_TRIGGER, True)  # while busy (or already done): refused, counted
            bits = poll(client, (modbus.DI_RESULT_READY, modbus.DI_ERROR))
            assert bits[modbus.DI_RESULT_READY] and not bits[modbus.DI_ERROR] and not bits[modbus.DI_BUSY]
            assert sum(bits[b] for b in (modbus.DI_OK, modbus.DI_REVIEW, modbus.DI_NG)) == 1
            regs = client.read_input_registers(0, count=modbus.N_IR).registers
            verdict = "OK" if bits[modbus.DI_OK] else "REVIEW" if bits[modbus.DI_REVIEW] else "NG"
            plc.append((regs[modbus.IR_SEQ], verdict, regs[modbus.IR_SCORE]))
            assert client.read_coils(0, count=2).bits[:2] == [False, False]  # self-clearing coils
            client.write_coil(modbus.COIL_ACK, True)
            poll(client, modbus.DI_READY)
        regs = client.read_input_registers(0, count=modbus.N_IR).registers
        assert regs[modbus.IR_TRIGGER_COUNT] == n and regs[modbus.IR_REFUSED] == n
        assert regs[modbus.IR_IGNORED_ACKS] == 1 and regs[modbus.IR_ERROR_CODE] == 0
    finally:
        client.close()
        stop_line(line)
    recs = check_one_result_per_trigger(line, plc, n, lambda plc_score, score: plc_score == modbus.score_register(score))
    assert {r["verdict"] for r in recs} >= {"OK"}


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


def test_client_killed_mid_handshake_next_client_recovers_and_it_is_counted(fx, tmp_path):
    line = start_line(fx, tmp_path, modbus.ModbusAdapter)
    status = LineStatus(line.hs)
    status.add("modbus", line.adapter)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, str(line.port)], stdout=subprocess.PIPE, text=True)
    client = ModbusTcpClient("127.0.0.1", port=line.port, timeout=5)
    try:
        assert proc.stdout.readline().split() == ["triggered", "True"]
        poll_state = time.monotonic()
        while line.hs.state not in ("BUSY", "RESULT_READY"):  # the trigger was taken before the kill
            assert time.monotonic() - poll_state < 10
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert client.connect()
        bits = poll(client, modbus.DI_RESULT_READY)  # the killed client's result is still shown, nobody acked it
        assert not bits[modbus.DI_READY]
        client.write_coil(modbus.COIL_TRIGGER, True)  # refused until acked (the documented rule), counted
        client.write_coil(modbus.COIL_ACK, True)
        poll(client, modbus.DI_READY)
        client.write_coil(modbus.COIL_TRIGGER, True)
        bits = poll(client, (modbus.DI_RESULT_READY, modbus.DI_ERROR))
        assert bits[modbus.DI_RESULT_READY] and not bits[modbus.DI_ERROR]
        assert client.read_input_registers(0, count=modbus.N_IR).registers[modbus.IR_SEQ] == 2
        client.write_coil(modbus.COIL_ACK, True)
        poll(client, modbus.DI_READY)
        t0 = time.monotonic()
        while line.adapter.disconnects < 1 and time.monotonic() - t0 < 10:
            time.sleep(0.01)
        counted = status.snapshot()
    finally:
        proc.kill()
        client.close()
        stop_line(line)
    assert counted["modbus"]["disconnects_mid_handshake"] == 1 and counted["modbus"]["disconnects"] == 1
    assert counted["modbus"]["clients"] == 2 and counted["modbus"]["errors"] == 0
    assert counted["triggers"] == 2 and counted["triggers_refused"] == 1 and counted["acks_without_result"] == 0
    recs = [json.loads(row) for row in line.log_path.read_text().splitlines()]
    assert [r["trigger_seq"] for r in recs] == [1, 2] and len(line.accepted) == 2  # exactly one result per trigger
    assert all(r["t_capture_ns"] >= t.t_ns for r, t in zip(recs, line.accepted))


def test_a_failing_request_is_counted_answered_with_an_exception_and_the_server_goes_on(fx, tmp_path, caplog):
    line = start_line(fx, tmp_path, modbus.ModbusAdapter)
    client = ModbusTcpClient("127.0.0.1", port=line.port, timeout=5)
    plain = line.hs.trigger

    def broken():
        raise RuntimeError("handshake broke")

    try:
        assert client.connect()
        poll(client, modbus.DI_READY)
        line.hs.trigger = broken
        reply = client.write_coil(modbus.COIL_TRIGGER, True)
        assert reply.isError() and reply.exception_code == 4  # device failure, for that request only
        line.hs.trigger = plain
        assert not client.write_coil(modbus.COIL_TRIGGER, True).isError()  # the same server, the next request
        poll(client, modbus.DI_RESULT_READY)
        client.write_coil(modbus.COIL_ACK, True)
    finally:
        client.close()
        stop_line(line)
    assert line.adapter.stats()["errors"] == 1
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "Modbus" in r.getMessage()]
    assert len(errors) == 1 and "handshake broke" in errors[0].getMessage() and errors[0].exc_info is None
    assert [json.loads(row)["trigger_seq"] for row in line.log_path.read_text().splitlines()] == [1]


def test_port_in_use_is_one_line_error():
    port, msg = port_in_use_error(modbus.ModbusAdapter)
    assert "\n" not in msg and f"127.0.0.1:{port}" in msg and "in use" in msg


def test_parse_and_register_encoding():
    assert modbus.parse_modbus(":5020") == ("127.0.0.1", 5020)
    assert modbus.parse_modbus("0.0.0.0:502") == ("0.0.0.0", 502)
    for bad in ("5020", "host:", "host:99999", "host:x"):
        with pytest.raises(ConfigError, match="--modbus"):
            modbus.parse_modbus(bad)
    assert modbus.score_register(0.1234) == 123 and modbus.score_register(float("nan")) == modbus.NO_SCORE
    assert modbus.score_register(None) == modbus.NO_SCORE and modbus.score_register(1e9) == modbus.NO_SCORE - 1
    assert modbus.score_register(-1.0) == 0
