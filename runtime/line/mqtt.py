"""MQTT verdict feed (``serve --mqtt mqtt://HOST:PORT/PREFIX``, paho-mqtt): every verdict line as JSON on
``PREFIX/<station>/verdict`` at QoS 1, events (drift) on ``PREFIX/<station>/event``, the station status
retained on ``PREFIX/<station>/status`` ("online"; last will "offline", retained).

Nothing is lost while the broker is away: each record is appended, as one whole line, to a bounded
on-disk spool (``mqtt_spool.jsonl`` in the sink folder); a publisher thread sends the spool in order
and forgets a line only when the broker acknowledged it (QoS 1 PUBACK), so after an outage the waiting
lines go out in order once the connection is back, and lines left at exit go out at the next start
with the same folder. Delivery is at least once (a line may arrive twice around a reconnect). When
the spool is full (``max_spool_bytes``), new lines are not spooled: counted in ``overflow`` and logged
(the first, then every 1000th); verdicts.jsonl still has them. No MQTT failure stops the inspection.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path

from protospect._optional import require
from protospect.errors import ConfigError
from protospect.runtime.sinks import Result, Sink, json_text
from protospect.verdict_record import is_event

log = logging.getLogger(__name__)

SPOOL_NAME = "mqtt_spool.jsonl"
DEFAULT_SPOOL_BYTES = 64 << 20
_URL = re.compile(r"mqtt://(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\])(?::(?P<port>\d{1,5}))?/(?P<prefix>[^#+\s]+)$")
_NAME = re.compile(r"[^#+/\s]+$")


def parse_mqtt(spec: str) -> tuple[str, int, str]:
    """"mqtt://HOST[:PORT]/PREFIX" -> (host, port (default 1883), prefix without trailing "/")."""
    m = _URL.match(str(spec))
    if not m or not m.group("prefix").strip("/") or not 0 < int(m.group("port") or 1883) <= 65535:
        raise ConfigError(f"--mqtt {spec}: expected mqtt://HOST[:PORT]/PREFIX, e.g. mqtt://127.0.0.1:1883/plant/line1 "
                          "(PREFIX without + or #)")
    return m.group("host").strip("[]"), int(m.group("port") or 1883), m.group("prefix").strip("/")


class MqttSink(Sink):
    name = "MQTT"

    def __init__(self, url: str, spool_dir: str | Path, *, station: str | None = None,
                 max_spool_bytes: int = DEFAULT_SPOOL_BYTES, batch: int = 50, ack_timeout_s: float = 5.0,
                 reconnect_max_s: float = 2.0):
        self.host, self.port, self.prefix = parse_mqtt(url)
        self.station = station or socket.gethostname() or "station"
        if not _NAME.match(self.station):
            raise ConfigError(f"--station {self.station!r}: a topic level without /, + or # or spaces")
        base = f"{self.prefix}/{self.station}"
        self.topics = {"verdict": f"{base}/verdict", "event": f"{base}/event", "status": f"{base}/status"}
        self.max_spool_bytes, self.batch, self.ack_timeout_s = max_spool_bytes, batch, ack_timeout_s
        self.published = self.overflow = self.spool_failures = self.connects = self.refused = 0
        self.spooled = self.publish_failures = self.disconnects = self.connect_failures = 0
        self.failures = 0
        mqtt = require("paho.mqtt.client", "line")
        spool_dir = Path(spool_dir)
        spool_dir.mkdir(parents=True, exist_ok=True)
        self.spool_path = spool_dir / SPOOL_NAME
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._fd = os.open(self.spool_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = _trim_torn(self._fd)
        self._sent_off = 0  # spool bytes before this offset are acknowledged
        self._connected = False
        self._epoch = 0     # +1 per connection: an ack wait across a reconnect starts the batch again
        self._stop = threading.Event()
        self._closing = False
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"protospect-{self.station}-{os.getpid()}")
        self.client.will_set(self.topics["status"], "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=reconnect_max_s)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.connect_async(self.host, self.port, keepalive=10)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._publisher, name="mqtt-publisher", daemon=True)
        self._thread.start()
        pending = self._size
        log.info("MQTT: verdicts to mqtt://%s:%d/%s (status, event), spool %s%s", self.host, self.port, base,
                 self.spool_path, f" ({pending} bytes waiting from before)" if pending else "")

    # -- paho callbacks (its network thread) --------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if getattr(reason_code, "is_failure", False):
            self.refused += 1
            if self.refused == 1 or self.refused % 100 == 0:
                log.warning("MQTT broker %s:%d refused the connection: %s (%d times); verdicts wait in %s",
                            self.host, self.port, reason_code, self.refused, self.spool_path)
            return
        client.publish(self.topics["status"], "online", qos=1, retain=True)
        with self._wake:
            self.connects += 1
            self._connected = True
            self._epoch += 1
            self._wake.notify_all()
        if self.connects > 1:
            log.info("MQTT: connected again to %s:%d; sending the spool", self.host, self.port)

    def _on_connect_fail(self, client, userdata):
        """No TCP connection to the broker (nothing listens, host unreachable): counted, retried."""
        self.connect_failures += 1
        if self.connect_failures == 1 or self.connect_failures % 100 == 0:
            log.warning("MQTT: cannot reach the broker %s:%d (%d tries); verdicts wait in %s", self.host, self.port,
                        self.connect_failures, self.spool_path)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        with self._wake:
            was, self._connected = self._connected, False
            self._epoch += 1
            self._wake.notify_all()
        if was and not self._closing:
            self.disconnects += 1
            log.warning("MQTT: lost the broker %s:%d (%s); verdicts go to the spool %s until it is back",
                        self.host, self.port, reason_code, self.spool_path)

    # -- the pipeline side (never blocks on the network, never raises) ------------------------------
    def write(self, result: Result) -> None:
        self._spool(result.record())

    def reject(self, record: dict) -> None:
        self._spool(record)

    def event(self, record: dict) -> None:
        self._spool(record)

    def _spool(self, record: dict) -> None:
        data = (json_text(record, separators=(",", ":")) + "\n").encode("utf-8")
        with self._wake:
            if self._size + len(data) > self.max_spool_bytes:
                self.overflow += 1
                self.failures += 1
                if self.overflow == 1 or self.overflow % 1000 == 0:
                    log.error("MQTT spool %s full (%d bytes): line of seq %s not spooled; %d lines overflowed so far "
                              "(verdicts.jsonl has them all)", self.spool_path, self.max_spool_bytes,
                              record.get("seq"), self.overflow)
                return
            try:
                done = os.write(self._fd, data)
                while done < len(data):
                    done += os.write(self._fd, data[done:])
            except OSError as err:
                self.spool_failures += 1
                self.failures += 1
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
                if self.spool_failures == 1:
                    log.error("cannot write the MQTT spool %s: %s; the inspection goes on (counted)", self.spool_path, err)
                return
            self._size += len(data)
            self.spooled += 1
            self._wake.notify_all()

    @property
    def pending_bytes(self) -> int:
        with self._lock:
            return self._size - self._sent_off

    # -- the publisher thread ----------------------------------------------------------------------
    def _next_batch(self) -> tuple[int, list[bytes], int] | None:
        """(start, lines, epoch) to send, or None after waiting a little (nothing to send / not connected)."""
        with self._wake:
            if not (self._connected and self._sent_off < self._size):
                self._wake.wait(0.1)
                return None
            start, end, epoch = self._sent_off, self._size, self._epoch
        chunk = os.pread(self._fd, min(end - start, 1 << 20), start)
        lines = chunk.split(b"\n")[:-1][: self.batch]  # whole lines only
        if not lines:  # a single line longer than the read: read it whole
            chunk = os.pread(self._fd, end - start, start)
            lines = chunk.split(b"\n")[:1]
        return start, lines, epoch

    def _publisher(self) -> None:
        while not self._stop.is_set():
            try:
                got = self._next_batch()
                if got is None:
                    continue
                start, lines, epoch = got
                infos = []
                for line in lines:
                    topic = self.topics["event"] if is_event(json.loads(line)) else self.topics["verdict"]
                    infos.append(self.client.publish(topic, line, qos=1))
                deadline = time.monotonic() + self.ack_timeout_s
                while not all(_acknowledged(i) for i in infos):
                    if (self._epoch != epoch or time.monotonic() > deadline or self._stop.is_set()
                            or any(_refused(i) for i in infos)):
                        break
                    time.sleep(0.002)
                else:
                    self._acked(start, sum(len(line) + 1 for line in lines), len(lines))
                    continue
                self._not_acked(sum(not _acknowledged(i) for i in infos))
            except Exception:  # never let the feed die silently; the spool keeps the lines
                log.exception("MQTT publisher")
                time.sleep(0.5)

    def _not_acked(self, n: int) -> None:
        """A batch not acknowledged (broker lost, no PUBACK in time): its lines stay spooled and go again. Counted
        per message; logged the first time, then every 100th."""
        if self._stop.is_set() or not n:
            return
        self.publish_failures += n
        if self.publish_failures == n or self.publish_failures // 100 != (self.publish_failures - n) // 100:
            log.warning("MQTT: %d message(s) not acknowledged by %s:%d (%d so far); they stay in the spool and go again",
                        n, self.host, self.port, self.publish_failures)

    def _acked(self, start: int, nbytes: int, n: int) -> None:
        with self._wake:
            if self._sent_off != start:
                return
            self.published += n
            self._sent_off = start + nbytes
            if self._sent_off == self._size:  # all sent: the spool starts empty again
                os.ftruncate(self._fd, 0)
                self._sent_off = self._size = 0
            self._wake.notify_all()

    def close(self, drain_s: float = 5.0) -> None:
        """Send what the spool holds (waiting up to drain_s, also for a reconnect), say "offline", stop. Lines not
        sent stay in the spool for the next run."""
        if self._stop.is_set():
            return
        deadline = time.monotonic() + drain_s
        while self.pending_bytes and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        self._thread.join(5)
        self._closing = True
        with contextlib.suppress(Exception):
            if self._connected:
                self.client.publish(self.topics["status"], "offline", qos=1, retain=True).wait_for_publish(2)
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()
        # drop what was acknowledged, keep the rest in order for the next run
        with self._lock:
            with contextlib.suppress(OSError):
                if self._sent_off:
                    rest = os.pread(self._fd, self._size - self._sent_off, self._sent_off)
                    os.ftruncate(self._fd, 0)
                    os.write(self._fd, rest)
                os.fsync(self._fd)
            os.close(self._fd)
            left = self._size - self._sent_off
            self._size, self._sent_off = left, 0
        if left:
            log.warning("MQTT: %d bytes of verdicts not sent stay in %s for the next run", left, self.spool_path)

    def stats(self) -> dict:
        """Counters for summary.json / the page (runtime/line/status.py): lines spooled and published (acknowledged),
        messages not acknowledged (publish_failures: sent again), connections, reconnects (after the first), broker
        losses (disconnects), failed tries to reach it (connect_failures), refusals by it (refused: CONNACK with an
        error, e.g. not authorised), spool overflow and write failures, bytes waiting."""
        return {"published": self.published, "spooled": self.spooled, "publish_failures": self.publish_failures,
                "connects": self.connects, "reconnects": max(self.connects - 1, 0), "disconnects": self.disconnects,
                "connect_failures": self.connect_failures, "refused": self.refused, "overflow": self.overflow,
                "spool_failures": self.spool_failures,
                "pending_bytes": self._size - self._sent_off}


def _acknowledged(info) -> bool:
    """PUBACK received. paho's is_published() raises when publish() itself failed (e.g. called while the broker
    was just lost: "not currently connected"); such a message is not acknowledged and goes again from the spool."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return False


def _refused(info) -> bool:
    """publish() failed at once (not connected, queue full): waiting for its PUBACK would only wait out the timeout."""
    try:
        info.is_published()
    except (RuntimeError, ValueError):
        return True
    return False


def _trim_torn(fd: int) -> int:
    """The spool's size after cutting a torn last line (a killed run); lines before it are kept."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    data = os.pread(fd, size, 0)
    keep = data.rfind(b"\n") + 1
    if keep != size:
        os.ftruncate(fd, keep)
    return keep
