"""The PLC trigger/result handshake: one state machine, pure Python, no I/O; every adapter (Modbus TCP,
later OPC UA) only maps its bits onto this object.

States and moves (the PLC drives trigger/ack, the pipeline drives result/fail):

    OFFLINE --online()--> READY --trigger()--> BUSY --result()--> RESULT_READY --ack()--> READY
                                                 \\--fail()----> ERROR --------ack()--> READY
    any state --fail()--> ERROR;  any state --offline()--> OFFLINE (the run ended)

Rules for the moves that do not fit (documented in docs/integration.md):
  * a trigger while not READY (BUSY, RESULT_READY not yet acked, ERROR, OFFLINE) is refused: nothing is
    queued, ``refused_triggers`` counts it and the state is unchanged. The PLC must wait for READY.
  * an ack while no result or error is shown (READY, BUSY, OFFLINE) is ignored and counted in
    ``ignored_acks``.
  * a result or failure that arrives while not BUSY (no trigger is waiting for it) is ignored and
    counted in ``stray_results``; fail() with ``busy_only=False`` (the run stopped) always applies.

Every accepted trigger gets the next ``trigger_seq`` (1, 2, ...) and its time; the result carries the
verdict, score and frame seq, and ``trigger_to_result_ms`` (trigger -> result() call). Thread-safe:
adapters call trigger()/ack() from their own threads, the pipeline calls result() from its loop.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

log = logging.getLogger(__name__)

OFFLINE, READY, BUSY, RESULT_READY, ERROR = "OFFLINE", "READY", "BUSY", "RESULT_READY", "ERROR"
STATES = (OFFLINE, READY, BUSY, RESULT_READY, ERROR)

# last error codes (Modbus input register "last error code"; 0 = none)
ERR_NONE = 0
ERR_REJECTED = 1   # the triggered frame could not be judged (preprocess rejected it)
ERR_STOPPED = 2    # the inspection stopped (source ended, verdict log failed, Ctrl-C) while a trigger waited
ERR_INTERNAL = 3   # anything else


@dataclass(frozen=True)
class Trigger:
    """An accepted trigger: the frame judged for it must be captured at or after ``t_ns``."""

    seq: int    # trigger_seq, 1-based, never reused in a run
    t_ns: int   # clock() when it was accepted (time.monotonic_ns: comparable to Frame.t_capture_ns)


@dataclass(frozen=True)
class Snapshot:
    """What an adapter shows: the state, its bits, the last result and the counters."""

    state: str
    trigger_seq: int          # of the trigger the current result / busy state belongs to (0: none yet)
    verdict: str              # of the last result ("" none; "ERROR" after fail())
    score: float | None
    frame_seq: int | None     # the judged frame's seq in verdicts.jsonl
    trigger_to_result_ms: float | None
    trigger_count: int        # accepted triggers
    refused_triggers: int
    ignored_acks: int
    stray_results: int
    error_code: int
    error_text: str

    @property
    def ready(self) -> bool:
        return self.state == READY

    @property
    def busy(self) -> bool:
        return self.state == BUSY

    @property
    def result_ready(self) -> bool:
        return self.state == RESULT_READY

    @property
    def error(self) -> bool:
        return self.state == ERROR

    def as_dict(self) -> dict:
        return asdict(self)


class Handshake:
    def __init__(self, clock: Callable[[], int] = time.monotonic_ns):
        self._clock = clock
        self._cond = threading.Condition()
        self._notify = threading.RLock()  # listeners see the changes in order: the last call shows the newest state
        self._listeners: list[Callable[[Snapshot], None]] = []
        self._state = OFFLINE
        self._pending: Trigger | None = None
        self._trigger_seq = 0
        self._verdict, self._score, self._frame_seq, self._t2r = "", None, None, None
        self.trigger_count = 0
        self.refused_triggers = 0
        self.ignored_acks = 0
        self.stray_results = 0
        self._error_code, self._error_text = ERR_NONE, ""

    # -- observers --------------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[Snapshot], None]) -> None:
        """``listener(snapshot)`` after every change (in the caller's thread, one call at a time)."""
        self._listeners.append(listener)
        listener(self.snapshot())

    def _changed(self) -> None:
        with self._notify:
            snap = self.snapshot()
            for listener in list(self._listeners):
                listener(snap)

    @property
    def state(self) -> str:
        return self._state

    def snapshot(self) -> Snapshot:
        with self._cond:
            return Snapshot(self._state, self._trigger_seq, self._verdict, self._score, self._frame_seq, self._t2r,
                            self.trigger_count, self.refused_triggers, self.ignored_acks, self.stray_results,
                            self._error_code, self._error_text)

    # -- the PLC side ---------------------------------------------------------------------------
    def trigger(self) -> Trigger | None:
        """Accept a trigger (READY only): BUSY, the next trigger_seq. None: refused and counted."""
        with self._cond:
            if self._state != READY:
                self.refused_triggers += 1
                accepted = None
            else:
                self._trigger_seq += 1
                self.trigger_count += 1
                accepted = self._pending = Trigger(self._trigger_seq, self._clock())
                self._state = BUSY
                self._verdict, self._score, self._frame_seq, self._t2r = "", None, None, None
                self._cond.notify_all()
        self._changed()
        return accepted

    def ack(self) -> bool:
        """The PLC took the result (or saw the error): back to READY. False: nothing to ack, counted."""
        with self._cond:
            if self._state in (RESULT_READY, ERROR):
                self._state = READY
                self._error_code, self._error_text = ERR_NONE, ""
                done = True
            else:
                self.ignored_acks += 1
                done = False
        self._changed()
        return done

    # -- the station side -------------------------------------------------------------------------
    def online(self) -> None:
        """The inspection runs: READY (from OFFLINE only)."""
        with self._cond:
            if self._state == OFFLINE:
                self._state = READY
        self._changed()

    def offline(self) -> None:
        """The run ended: a waiting trigger fails (ERR_STOPPED) and the station shows neither READY nor BUSY."""
        with self._cond:
            if self._pending is not None:
                self._error_code, self._error_text = ERR_STOPPED, "inspection stopped"
            self._pending = None
            self._state = OFFLINE
            self._cond.notify_all()
        self._changed()

    def pending(self) -> Trigger | None:
        """The trigger waiting for its frame (None: not BUSY)."""
        with self._cond:
            return self._pending

    def wait_pending(self, timeout: float | None = None) -> Trigger | None:
        with self._cond:
            self._cond.wait_for(lambda: self._pending is not None, timeout)
            return self._pending

    def result(self, verdict: str, score: float | None, frame_seq: int) -> bool:
        """The triggered frame's verdict: BUSY -> RESULT_READY. False: no trigger waited (stray, counted)."""
        with self._cond:
            if self._state != BUSY or self._pending is None:
                self.stray_results += 1
                return False
            self._t2r = (self._clock() - self._pending.t_ns) / 1e6
            self._verdict, self._score, self._frame_seq = verdict, score, frame_seq
            self._pending = None
            self._state = RESULT_READY
        self._changed()
        return True

    def fail(self, code: int, text: str, *, busy_only: bool = True) -> bool:
        """The triggered frame could not be judged (busy_only) or the station failed: ERROR until acked."""
        with self._cond:
            if busy_only and self._state != BUSY:
                self.stray_results += 1
                return False
            if self._pending is not None:
                self._t2r = (self._clock() - self._pending.t_ns) / 1e6
            self._pending = None
            self._verdict, self._score = "ERROR", None
            self._error_code, self._error_text = code, text
            self._state = ERROR
        self._changed()
        return True


class ClientCounting:
    """What the PLC adapters (Modbus, OPC UA) count about their clients, and the one rule for a client that
    leaves between its trigger and its ack: counted and logged; the station goes on, the next client acks."""

    protocol = "PLC"
    handshake: Handshake
    clients = disconnects = disconnects_mid_handshake = errors = 0

    def _connection(self, connected: bool) -> None:
        """A client's connection opened (True) or closed (False)."""
        if connected:
            self.clients += 1
            return
        self.disconnects += 1
        state = self.handshake.state
        if state in (BUSY, RESULT_READY, ERROR):  # the PLC left between its trigger and its ack
            self.disconnects_mid_handshake += 1
            log.warning("%s: a client disconnected while the handshake was %s (%d times); the station goes on, "
                        "the next client acks and triggers", self.protocol, state, self.disconnects_mid_handshake)
