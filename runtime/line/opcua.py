"""OPC UA adapter for the PLC handshake (``serve --trigger plc --opcua opc.tcp://HOST:PORT``): an asyncua server
whose ``Station`` object shows the one Handshake (handshake.py) and whose methods / TriggerRequest drive it.

Address space (namespace ``urn:protospect:station``, see ``ns=`` in the client; browse path Objects/Station):

  variables (read only unless said)
    Ready, Busy, ResultReady   Boolean  the handshake state (at most one is true; none while ERROR / OFFLINE)
    Error                      Boolean  the triggered frame could not be judged or the run stopped; Ack clears it
    Verdict                    String   OK / REVIEW / NG of the last result, ERROR after a failure, "" none yet
    Score                      Double   the last result's score (NaN: none)
    Seq                        UInt32   trigger_seq the current result / busy state belongs to (0: none yet)
    TriggerCount               UInt32   accepted triggers
    RefusedTriggers, IgnoredAcks UInt32 the handshake's counters (docs/integration.md: rules)
    ErrorCode                  UInt32   0 none, 1 frame rejected, 2 inspection stopped, 3 internal
    ErrorText                  String   the last error in words ("" none)
    TriggerRequest             Boolean  WRITABLE: write true to trigger (the station writes it back to false)
  methods
    Trigger() -> Accepted (Boolean)   accepted only while Ready; else refused and counted
    Ack()     -> Done (Boolean)       back to Ready after a result / error; else ignored and counted

Security (docs/integration.md): the endpoint has no message security (SecurityPolicy None: nothing is signed
or encrypted). Anonymous sessions are allowed only when the server binds 127.0.0.1 / localhost. Binding any
other address needs a users file (``--opcua-user FILE``, ``username:password`` lines): then anonymous
sessions are refused and a session needs a listed user, but the password crosses the wire unencrypted.

Counted (stats(): summary.json "line"."opcua" and the live page): clients connected, disconnects, disconnects while
the handshake was BUSY or showed an unacknowledged result / error, method calls, and errors (the adapter could not
show the handshake or serve a call); none of them stops the inspection.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

from protospect._optional import require
from protospect.errors import ConfigError
from protospect.runtime.line.handshake import ClientCounting, Handshake, Snapshot
from protospect.runtime.line.loop_thread import start_loop_thread

log = logging.getLogger(__name__)

NAMESPACE = "urn:protospect:station"
LOOPBACK = ("127.0.0.1", "localhost")
# (browse name, OPC UA type name, value from a snapshot)
VARIABLES = (
    ("Verdict", "String", lambda s: s.verdict),
    ("Score", "Double", lambda s: float("nan") if s.score is None or not math.isfinite(s.score) else float(s.score)),
    ("Seq", "UInt32", lambda s: s.trigger_seq & 0xFFFFFFFF),
    ("TriggerCount", "UInt32", lambda s: s.trigger_count & 0xFFFFFFFF),
    ("RefusedTriggers", "UInt32", lambda s: s.refused_triggers & 0xFFFFFFFF),
    ("IgnoredAcks", "UInt32", lambda s: s.ignored_acks & 0xFFFFFFFF),
    ("ErrorCode", "UInt32", lambda s: s.error_code),
    ("ErrorText", "String", lambda s: s.error_text),
    # the state bits last: a client that sees ResultReady already finds Verdict / Score / Seq of that result
    ("Error", "Boolean", lambda s: s.error),
    ("Busy", "Boolean", lambda s: s.busy),
    ("ResultReady", "Boolean", lambda s: s.result_ready),
    ("Ready", "Boolean", lambda s: s.ready),
)


def parse_opcua(spec: str) -> tuple[str, int]:
    """--opcua opc.tcp://HOST:PORT -> (host, port)."""
    try:
        parts = urlsplit(str(spec))
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not str(spec).startswith("opc.tcp://") or not host or port is None or not 0 < port <= 65535 \
            or parts.path not in ("", "/"):
        raise ConfigError(f"--opcua {spec}: expected opc.tcp://HOST:PORT, e.g. --opcua opc.tcp://127.0.0.1:4840")
    return host, port


def read_users(path: str | Path) -> dict[str, str]:
    """--opcua-user FILE: ``username:password`` lines (blank lines and # comments skipped) -> {user: password}."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--opcua-user {path}: cannot read: {getattr(err, 'strerror', None) or err}") from None
    users = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep or not name or not password:
            raise ConfigError(f"--opcua-user {path}: line {n}: expected username:password")
        users[name] = password
    if not users:
        raise ConfigError(f"--opcua-user {path}: no username:password line")
    return users


def check_security(host: str, users: dict | None) -> None:
    if host not in LOOPBACK and users is None:
        raise ConfigError(f"--opcua on {host}: anonymous OPC UA is allowed on 127.0.0.1 only; give --opcua-user FILE "
                          "(username:password lines) to bind another address")


class _Users:
    """asyncua user manager: the users file's names and passwords (constant-time compare), nobody else."""

    def __init__(self, users: dict[str, str]):
        self.users = users

    def get_user(self, iserver, username=None, password=None, certificate=None):
        from asyncua.crypto.permission_rules import User, UserRole
        expected = self.users.get(username or "")
        if expected is None or password is None:
            return None
        given = password if isinstance(password, str) else bytes(password).decode("utf-8", "replace")
        return User(role=UserRole.User, name=username) if hmac.compare_digest(given, expected) else None


class OpcUaAdapter(ClientCounting):
    """An asyncua server on its own thread (asyncio loop) showing the handshake. start() raises ConfigError with
    one line when the address cannot be bound (port in use, not an address of this machine)."""

    protocol = "OPC UA"

    def __init__(self, handshake: Handshake, host: str = "127.0.0.1", port: int = 4840, users: dict | None = None):
        check_security(host, users)
        self.handshake, self.host, self.port, self.users = handshake, host, port, users
        self.calls = self.clients = self.disconnects = self.disconnects_mid_handshake = self.errors = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._nodes: dict = {}
        self._lock: asyncio.Lock | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}"

    # -- counters -----------------------------------------------------------------------------------
    def stats(self) -> dict:
        """Counters for summary.json / the page (runtime/line/status.py)."""
        return {"clients": self.clients, "disconnects": self.disconnects,
                "disconnects_mid_handshake": self.disconnects_mid_handshake, "errors": self.errors, "calls": self.calls}

    def _error(self, what: str, err: BaseException) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 100 == 0:
            log.error("OPC UA: %s failed: %s: %s (%d errors; counted, the station goes on)", what, type(err).__name__,
                      err, self.errors)

    # -- showing the handshake ------------------------------------------------------------------
    async def _apply(self) -> None:
        """Write the handshake's current state (read now, not when scheduled: a late update never shows an old one).
        A failed write is counted; the next change writes every variable again."""
        ua = require("asyncua", "line").ua
        try:
            async with self._lock:
                snap: Snapshot = self.handshake.snapshot()
                for name, vtype, value in VARIABLES:
                    await self._nodes[name].write_value(ua.Variant(value(snap), getattr(ua.VariantType, vtype)))
        except Exception as err:  # noqa: BLE001 - a PLC-side failure never reaches the inspection
            self._error("showing the handshake", err)

    def _changed(self, _snap: Snapshot) -> None:
        """Handshake listener (any thread, also the pipeline's): schedule an update on the server's loop; never raises."""
        loop = self._loop
        if loop is None or loop.is_closed() or self._lock is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._apply(), loop)
        except RuntimeError:  # the loop is closing
            pass
        except Exception as err:  # noqa: BLE001
            self._error("scheduling an update", err)

    # -- the PLC side ---------------------------------------------------------------------------
    async def _call(self, name: str, move):
        """A method call: ``move()`` on the handshake -> [Boolean]; a failure is counted and answered with
        BadInternalError (one log line, no traceback); the server goes on."""
        ua = require("asyncua", "line").ua
        self.calls += 1
        try:
            done = move()
        except Exception as err:  # noqa: BLE001
            self._error(f"{name}()", err)
            return ua.StatusCode(ua.StatusCodes.BadInternalError)
        await self._apply()  # the caller sees Busy / Ready when the call returns
        return [ua.Variant(done, ua.VariantType.Boolean)]

    async def _trigger(self, parent):
        return await self._call("Trigger", lambda: self.handshake.trigger() is not None)

    async def _ack(self, parent):
        return await self._call("Ack", self.handshake.ack)

    async def _trigger_request(self, handle, value) -> None:
        ua = require("asyncua", "line").ua
        if value.Value is None or value.Value.Value is not True:
            return
        self.calls += 1
        try:
            self.handshake.trigger()
        except Exception as err:  # noqa: BLE001
            self._error("TriggerRequest", err)
        await self._nodes["TriggerRequest"].write_value(ua.Variant(False, ua.VariantType.Boolean))
        await self._apply()

    async def _build(self):
        asyncua = require("asyncua", "line")
        ua = asyncua.ua
        server = asyncua.Server(user_manager=_Users(self.users) if self.users is not None else None)
        await server.init()
        server.set_endpoint(f"opc.tcp://{self.host}:{self.port}/")
        server.set_server_name("protospect station")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens([ua.AnonymousIdentityToken] if self.users is None else [ua.UserNameIdentityToken])
        idx = await server.register_namespace(NAMESPACE)
        station = await server.nodes.objects.add_object(idx, "Station")
        snap = self.handshake.snapshot()
        for name, vtype, value in VARIABLES:
            self._nodes[name] = await station.add_variable(idx, name, value(snap), getattr(ua.VariantType, vtype))
        self._nodes["TriggerRequest"] = req = await station.add_variable(idx, "TriggerRequest", False,
                                                                           ua.VariantType.Boolean)
        await req.set_writable()
        await station.add_method(idx, "Trigger", self._trigger, [], [ua.VariantType.Boolean])
        await station.add_method(idx, "Ack", self._ack, [], [ua.VariantType.Boolean])
        server.iserver.aspace.add_datachange_callback(req.nodeid, ua.AttributeIds.Value, self._trigger_request)
        return server

    def start(self) -> OpcUaAdapter:
        try:  # asyncua logs a traceback of its own when it cannot bind: say it in one line first
            socket.create_server((self.host, self.port)).close()
        except OSError as err:
            raise ConfigError(f"--opcua {self.endpoint}: cannot listen: {err.strerror or err}") from None
        started: dict = {}
        ready = threading.Event()

        async def main():
            try:
                self._server = await self._build()
                self._lock, self._stop = asyncio.Lock(), asyncio.Event()
                await self._server.start()
            except (OSError, RuntimeError) as err:
                started["error"] = err
                ready.set()
                return
            ready.set()
            _count_clients(self)
            await self._apply()
            try:
                await self._stop.wait()
            finally:
                with contextlib.suppress(Exception):
                    await self._server.stop()

        if not start_loop_thread(self, main, f"opcua[{self.host}:{self.port}]", ready, started, 20):
            raise ConfigError(f"--opcua {self.endpoint}: cannot listen: {_bind_error(self.host, self.port, started)}")
        self.handshake.subscribe(self._changed)
        log.info("OPC UA: PLC handshake on %s (object Station: Trigger()/Ack(); %s; docs/integration.md)", self.endpoint,
                 "anonymous, loopback only" if self.users is None else f"{len(self.users)} user(s), no encryption")
        return self

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
            self._thread.join(10)


class _CountingClients(list):
    """asyncua's BinaryServer.clients: each connection appends itself when made and removes itself when lost."""

    def __init__(self, on_change):
        super().__init__()
        self._on_change = on_change

    def append(self, item) -> None:
        super().append(item)
        self._on_change(True)

    def remove(self, item) -> None:
        super().remove(item)
        self._on_change(False)


def _count_clients(adapter: OpcUaAdapter) -> None:
    """Count client connections through the server's client list (asyncua 1.1 - 2.x: Server.bserver.clients,
    filled by OPCUAProtocol.connection_made / connection_lost). Another asyncua: not counted, said once."""
    bserver = getattr(adapter._server, "bserver", None)
    if bserver is None or not isinstance(getattr(bserver, "clients", None), list):
        log.info("OPC UA: this asyncua does not show its client list; clients and disconnects are not counted")
        return
    counting = _CountingClients(adapter._connection)
    counting.extend(bserver.clients)
    bserver.clients = counting


def _bind_error(host: str, port: int, started: dict) -> str:
    err = started.get("error")
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    try:
        with socket.create_server((host, port)):
            return str(err) if err else "the OPC UA server did not start"
    except OSError as bind_err:
        return bind_err.strerror or str(bind_err)
