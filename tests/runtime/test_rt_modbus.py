"""The Modbus TCP adapter over loopback with pymodbus' own client: N triggers -> N results, each judged frame
captured after its trigger; trigger while busy refused, ack without result ignored; port in use -> one line."""
from __future__ import annotations

import time

import pytest
from line_fixtures import check_one_result_per_trigger, port_in_use_error, start_line, stop_line

pytest.importorskip("pymodbus", reason="pymodbus not installed (pip install 'protospect[line]')")

from pymodbus.client import ModbusTcpClient  # noqa: E402

from protospect.errors import ConfigError  # noqa: E402
from protospect.runtime.line import modbus  # noqa: E402


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
