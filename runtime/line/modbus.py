"""Modbus TCP adapter for the PLC handshake (``serve --trigger plc --modbus HOST:PORT``): a pymodbus server
whose registers are read from, and whose coil writes go to, the one Handshake (handshake.py).

Register map (device id: any; 0-based protocol addresses):

  coils (write 1 to act; the station clears the coil back to 0, so each write of 1 is one request)
    0  trigger      inspect the next frame (accepted only while READY; else refused and counted)
    1  ack          the PLC took the result / saw the error: back to READY (else ignored and counted)
  discrete inputs (read only)
    0  ready        1: a trigger will be accepted
    1  busy         1: a trigger waits for its frame / verdict
    2  result_ready 1: ok/review/ng and the input registers hold the result of trigger `seq`
    3  ok           the last result's verdict (cleared by the next trigger)
    4  review
    5  ng
    6  error        1: the triggered frame could not be judged or the run stopped; ack clears it
  input registers (read only, uint16)
    0  seq              trigger_seq of the current result / busy trigger (mod 65536)
    1  score x 1000     the last result's score, rounded, clamped to 0..65534; 65535: no score / not a number
    2  trigger count    accepted triggers (mod 65536)
    3  last error code  0 none, 1 frame rejected, 2 inspection stopped, 3 internal
    4  refused triggers (mod 65536)
    5  ignored acks     (mod 65536)

Nothing here is secured: Modbus TCP has no authentication. The default host is 127.0.0.1; bind the
plant-network address only on a segmented control network.

Counted (stats(): summary.json "line"."modbus" and the live page): clients connected, disconnects, disconnects
while the handshake was BUSY or showed an unacknowledged result / error (the PLC left mid-handshake), requests,
and errors (a request the adapter could not serve: answered with Modbus exception 4).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import threading

from protospect._optional import require
from protospect.errors import ConfigError
from protospect.runtime.line.handshake import ClientCounting, Handshake, Snapshot
from protospect.runtime.line.loop_thread import start_loop_thread

log = logging.getLogger(__name__)

COIL_TRIGGER, COIL_ACK = 0, 1
DI_READY, DI_BUSY, DI_RESULT_READY, DI_OK, DI_REVIEW, DI_NG, DI_ERROR = range(7)
IR_SEQ, IR_SCORE, IR_TRIGGER_COUNT, IR_ERROR_CODE, IR_REFUSED, IR_IGNORED_ACKS = range(6)
N_COILS, N_DI, N_IR = 2, 7, 6
NO_SCORE = 0xFFFF
FC_READ_COILS, FC_WRITE_COIL, FC_WRITE_COILS = 1, 5, 15
FC_READ_DI, FC_READ_IR = 2, 4


def parse_modbus(spec: str) -> tuple[str, int]:
    """--modbus ":5020" or "HOST:PORT" -> (host, port); the host defaults to 127.0.0.1."""
    host, sep, port = str(spec).rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(f"--modbus {spec}: expected [HOST]:PORT, e.g. --modbus 127.0.0.1:5020")
    return host or "127.0.0.1", int(port)


def discrete_inputs(s: Snapshot) -> list[bool]:
    bits = [False] * N_DI
    bits[DI_READY], bits[DI_BUSY], bits[DI_RESULT_READY], bits[DI_ERROR] = s.ready, s.busy, s.result_ready, s.error
    bits[DI_OK], bits[DI_REVIEW], bits[DI_NG] = s.verdict == "OK", s.verdict == "REVIEW", s.verdict == "NG"
    return bits


def score_register(score: float | None) -> int:
    if score is None or not math.isfinite(score):
        return NO_SCORE
    return min(max(int(round(score * 1000)), 0), NO_SCORE - 1)


def input_registers(s: Snapshot) -> list[int]:
    regs = [0] * N_IR
    regs[IR_SEQ] = s.trigger_seq & 0xFFFF
    regs[IR_SCORE] = score_register(s.score)
    regs[IR_TRIGGER_COUNT] = s.trigger_count & 0xFFFF
    regs[IR_ERROR_CODE] = s.error_code
    regs[IR_REFUSED] = s.refused_triggers & 0xFFFF
    regs[IR_IGNORED_ACKS] = s.ignored_acks & 0xFFFF
    return regs


def _pack_bits(bits: list[bool]) -> int:
    return sum(1 << i for i, b in enumerate(bits) if b)


class ModbusAdapter(ClientCounting):
    """A Modbus TCP server on its own thread (asyncio loop), mapping the handshake. start() raises ConfigError
    with one line when the address cannot be bound (port in use, not an address of this machine)."""

    protocol = "Modbus"

    def __init__(self, handshake: Handshake, host: str = "127.0.0.1", port: int = 5020):
        self.handshake, self.host, self.port = handshake, host, port
        self.requests = self.clients = self.disconnects = self.disconnects_mid_handshake = self.errors = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None

    def stats(self) -> dict:
        """Counters for summary.json / the page (runtime/line/status.py)."""
        return {"clients": self.clients, "disconnects": self.disconnects,
                "disconnects_mid_handshake": self.disconnects_mid_handshake, "errors": self.errors,
                "requests": self.requests}

    async def _action(self, func_code, start_address, address, count, registers, values):
        """pymodbus calls this before each access. A failure is counted, logged in one line (the first, then
        every 100th) and answered as Modbus exception 4 (device failure) to that request; the station goes on."""
        self.requests += 1
        try:
            self._access(func_code, address, registers, values)
        except Exception as err:  # noqa: BLE001 - the PLC gets an exception response, never a dead server
            self.errors += 1
            if self.errors == 1 or self.errors % 100 == 0:
                log.error("Modbus: request (function %s, address %s) failed: %s: %s (%d errors; counted, the station "
                          "goes on)", func_code, address, type(err).__name__, err, self.errors)
            return require("pymodbus.constants", "line").ExcCodes.DEVICE_FAILURE
        return None

    def _access(self, func_code, address, registers, values) -> None:
        """Reads get the handshake's state, coil writes drive it."""
        snap = self.handshake.snapshot()
        if func_code == FC_READ_DI:
            registers[0] = _pack_bits(discrete_inputs(snap))
        elif func_code == FC_READ_IR:
            registers[:N_IR] = input_registers(snap)
        elif func_code in (FC_WRITE_COIL, FC_WRITE_COILS) and values is not None:
            for i, value in enumerate(values):
                if not value:
                    continue
                coil = address + i
                if coil == COIL_TRIGGER:
                    self.handshake.trigger()
                elif coil == COIL_ACK:
                    self.handshake.ack()
                values[i] = False  # self-clearing: the next write of 1 is the next request

    def _device(self):
        sim = require("pymodbus.simulator", "line")
        bits, regs = sim.DataType.BITS, sim.DataType.REGISTERS
        return sim.SimDevice(0, simdata=([sim.SimData(0, count=N_COILS, datatype=bits)],
                                         [sim.SimData(0, count=N_DI, datatype=bits)],
                                         [sim.SimData(0, count=1, datatype=regs)],
                                         [sim.SimData(0, count=N_IR, datatype=regs)]), action=self._action)

    def start(self) -> ModbusAdapter:
        server_mod = require("pymodbus.server", "line")
        device = self._device()
        started: dict = {}
        ready = threading.Event()

        async def main():
            self._server = server_mod.ModbusTcpServer(device, address=(self.host, self.port),
                                                          trace_connect=self._connection)
            try:
                await self._server.serve_forever(background=True)
            except RuntimeError as err:
                started["error"] = err
                ready.set()
                return
            ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._server.serving

        if not start_loop_thread(self, main, f"modbus[{self.host}:{self.port}]", ready, started, 10):
            raise ConfigError(f"--modbus {self.host}:{self.port}: cannot listen: {_bind_error(self.host, self.port)}")
        log.info("Modbus TCP: PLC handshake on %s:%d (coil 0 trigger, coil 1 ack; docs/integration.md)", self.host, self.port)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None and self._thread is not None and self._thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(5)
            self._thread.join(5)


def _bind_error(host: str, port: int) -> str:
    """Why (host, port) cannot be bound, in the OS's words (pymodbus only says that listen failed)."""
    try:
        with socket.create_server((host, port)):
            return "the Modbus server did not start"
    except OSError as err:
        return err.strerror or str(err)
