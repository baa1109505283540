"""The OPC UA adapter over loopback with asyncua's own client: N triggers -> N results (Trigger() and
TriggerRequest), each judged frame captured after its trigger; a client killed mid-handshake (no Ack) does
not stop the station, is counted, and the next client recovers with Ack then Trigger; port in use -> one line;
anonymous only on loopback, a users file elsewhere."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from line_fixtures import check_one_result_per_trigger, port_in_use_error, free_port, start_line, stop_line

pytest.importorskip("asyncua", reason="asyncua not installed (pip install 'protospect[line]')")

from asyncua import Client, ua  # noqa: E402

from protospect.errors import ConfigError  # noqa: E402
from protospect.runtime.line import opcua  # noqa: E402
from protospect.runtime.line.handshake import Handshake  # noqa: E402
from protospect.runtime.line.status import LineStatus  # noqa: E402


class Station:
    """The Station object's nodes as a client sees them."""

    def __init__(self, client):
        self.client = client

    async def open(self):
        self.idx = await self.client.get_namespace_index(opcua.NAMESPACE)
        self.obj = await self.client.nodes.objects.get_child([f"{self.idx}:Station"])
        self.nodes = {}
        for name in [v[0] for v in opcua.VARIABLES] + ["TriggerRequest"]:
            self.nodes[name] = await self.obj.get_child([f"{self.idx}:{name}"])
        return self

    async def read(self, *names):
        values = await self.client.read_values([self.nodes[n] for n in names])
        return dict(zip(names, values))

    async def call(self, name):
        return await self.obj.call_method(f"{self.idx}:{name}")

    async def wait(self, *names, timeout=10.0):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            values = await self.read(*names)
            if any(values.values()):
                return values
            await asyncio.sleep(0.002)
        raise AssertionError(f"{names} never set")


def test_plc_over_opcua_n_triggers_n_results_each_frame_after_its_trigger(fx, tmp_path):
    n = 10
    line = start_line(fx, tmp_path, opcua.OpcUaAdapter)
    plc = []

    async def plc_side():
        async with Client(f"opc.tcp://127.0.0.1:{line.port}", timeout=10) as client:
            st = await Station(client).open()
            assert await st.call("Ack") is False  # nothing to ack: ignored, counted
            for i in range(n):
                await st.wait("Ready")
                await asyncio.sleep(0.02)  # stale frames queue up meanwhile
                if i % 2:
                    await st.nodes["TriggerRequest"].write_value(ua.Variant(True, ua.VariantType.Boolean))
                    assert (await st.read("TriggerRequest"))["TriggerRequest"] is False  # written back
                else:
                    assert await st.call("Trigger") is True
                assert await st.call("Trigger") is False  # while busy (or done, not acked): refused
                v = await st.wait("ResultReady", "Error")
                assert v["ResultReady"] and not v["Error"]
                r = await st.read("Busy", "Ready", "Verdict", "Score", "Seq", "ErrorCode")
                assert not r["Busy"] and not r["Ready"] and r["ErrorCode"] == 0
                plc.append((r["Seq"], r["Verdict"], r["Score"]))
                assert await st.call("Ack") is True
            await st.wait("Ready")
            return await st.read("TriggerCount", "RefusedTriggers", "IgnoredAcks")

    try:
        counters = asyncio.run(asyncio.wait_for(plc_side(), 120))
    finally:
        stop_line(line)
    assert counters == {"TriggerCount": n, "RefusedTriggers": n, "IgnoredAcks": 1}
    check_one_result_per_trigger(line, plc, n, lambda plc_score, score: plc_score == pytest.approx(score, abs=1e-6))


KILLED_CLIENT = """
import asyncio, sys, time
from asyncua import Client
async def main():
    c = Client(sys.argv[1], timeout=10)
    await c.connect()
    idx = await c.get_namespace_index("urn:protospect:station")
    st = await c.nodes.objects.get_child([f"{idx}:Station"])
    print("accepted", await st.call_method(f"{idx}:Trigger"), flush=True)
    time.sleep(60)  # killed here: no Ack, no clean disconnect
asyncio.run(main())
"""


def test_client_killed_mid_handshake_next_client_recovers(fx, tmp_path):
    line = start_line(fx, tmp_path, opcua.OpcUaAdapter)
    url = f"opc.tcp://127.0.0.1:{line.port}"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, url], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().split() == ["accepted", "True"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

        async def next_client():
            async with Client(url, timeout=10) as client:
                st = await Station(client).open()
                await st.wait("ResultReady")  # the killed client's result is still shown, nobody acked it
                assert await st.call("Trigger") is False  # refused until acked (the documented rule)
                assert await st.call("Ack") is True
                assert await st.call("Trigger") is True
                await st.wait("ResultReady")
                r = await st.read("Seq", "Verdict")
                assert await st.call("Ack") is True
                return r

        r = asyncio.run(asyncio.wait_for(next_client(), 60))
        t0 = time.monotonic()
        while line.adapter.disconnects < 2 and time.monotonic() - t0 < 10:
            time.sleep(0.01)
        status = LineStatus(line.hs)
        status.add("opcua", line.adapter)
        counted = status.snapshot()
    finally:
        proc.kill()
        stop_line(line)
    assert r["Seq"] == 2 and r["Verdict"] in ("OK", "REVIEW", "NG")
    # the killed client left with its result unacked: counted; the next one left after its ack: not mid-handshake
    assert counted["opcua"]["disconnects_mid_handshake"] == 1 and counted["opcua"]["disconnects"] == 2
    assert counted["opcua"]["clients"] == 2 and counted["opcua"]["errors"] == 0
    assert counted["triggers"] == 2 and counted["triggers_refused"] == 1 and counted["acks_without_result"] == 0
    recs = [json.loads(row) for row in line.log_path.read_text().splitlines()]
    assert [r["trigger_seq"] for r in recs] == [1, 2] and len(line.accepted) == 2
    assert all(r["t_capture_ns"] >= t.t_ns for r, t in zip(recs, line.accepted))


def test_port_in_use_is_one_line_error():
    port, msg = port_in_use_error(opcua.OpcUaAdapter)
    assert "\n" not in msg and f"opc.tcp://127.0.0.1:{port}" in msg and "in use" in msg


def test_anonymous_only_on_loopback_users_file_elsewhere(tmp_path):
    with pytest.raises(ConfigError, match="anonymous OPC UA is allowed on 127.0.0.1 only"):
        opcua.OpcUaAdapter(Handshake(), "127.0.0.2", 4840)
    users = tmp_path / "users.txt"
    users.write_text("# plant PLC\nplc1:s3cret\n")
    port = free_port()
    hs = Handshake()
    hs.online()
    adapter = opcua.OpcUaAdapter(hs, "127.0.0.2", port, users=opcua.read_users(users)).start()  # another loopback address

    async def attempt(user=None, password=None):
        client = Client(f"opc.tcp://127.0.0.2:{port}", timeout=5)
        if user is not None:
            client.set_user(user)
            client.set_password(password)
        try:
            await client.connect()
        except Exception as err:  # noqa: BLE001 - refused: the session is not activated
            return type(err).__name__
        try:
            st = await Station(client).open()
            return await st.call("Trigger")
        finally:
            await client.disconnect()

    try:
        assert asyncio.run(attempt()) is not True                      # anonymous: refused
        assert asyncio.run(attempt("plc1", "wrong")) is not True       # wrong password: refused
        assert asyncio.run(attempt("plc1", "s3cret")) is True          # listed user: triggers
    finally:
        adapter.stop()
    assert hs.trigger_count == 1


def test_parse_and_users_file(tmp_path):
    assert opcua.parse_opcua("opc.tcp://127.0.0.1:4840") == ("127.0.0.1", 4840)
    assert opcua.parse_opcua("opc.tcp://plc-net.local:4841/") == ("plc-net.local", 4841)
    for bad in ("127.0.0.1:4840", "opc.tcp://127.0.0.1", "opc.tcp://h:99999", "opc.tcp://h:x", "http://h:1"):
        with pytest.raises(ConfigError, match="--opcua"):
            opcua.parse_opcua(bad)
    f = tmp_path / "u"
    f.write_text("a:b:c\n\n# x\nd:e\n")
    assert opcua.read_users(f) == {"a": "b:c", "d": "e"}
    for text, needle in (("nocolon\n", "line 1"), ("# only\n", "no username"), (":pw\n", "line 1")):
        f.write_text(text)
        with pytest.raises(ConfigError, match=needle):
            opcua.read_users(f)
    with pytest.raises(ConfigError, match="cannot read"):
        opcua.read_users(tmp_path / "missing")


def test_a_failing_call_is_counted_answered_bad_and_the_server_goes_on(fx, tmp_path, caplog):
    line = start_line(fx, tmp_path, opcua.OpcUaAdapter)
    plain = line.hs.trigger

    def broken():
        raise RuntimeError("handshake broke")

    async def plc():
        async with Client(f"opc.tcp://127.0.0.1:{line.port}", timeout=10) as client:
            st = await Station(client).open()
            await st.wait("Ready")
            line.hs.trigger = broken
            with pytest.raises(ua.UaStatusCodeError) as err:
                await st.call("Trigger")
            line.hs.trigger = plain
            assert await st.call("Trigger") is True  # the same server, the next call
            await st.wait("ResultReady")
            assert await st.call("Ack") is True
            return err.value.code

    try:
        code = asyncio.run(asyncio.wait_for(plc(), 60))
    finally:
        stop_line(line)
    assert code == ua.StatusCodes.BadInternalError
    assert line.adapter.stats()["errors"] == 1
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "OPC UA" in r.getMessage()]
    assert len(errors) == 1 and "handshake broke" in errors[0].getMessage() and errors[0].exc_info is None
    assert [json.loads(row)["trigger_seq"] for row in line.log_path.read_text().splitlines()] == [1]
