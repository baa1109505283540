"""The PLC handshake state machine (runtime/line/handshake.py): the normal cycle, the refusal rules, timing."""
from __future__ import annotations

import threading

from protospect.runtime.line.handshake import (BUSY, ERR_REJECTED, ERR_STOPPED, ERROR, OFFLINE, READY, RESULT_READY,
                                               Handshake)


class Clock:
    def __init__(self):
        self.ns = 1_000_000_000

    def __call__(self):
        return self.ns


def test_full_cycle_with_seq_and_trigger_to_result_ms():
    clock = Clock()
    hs = Handshake(clock)
    assert hs.state == OFFLINE and hs.trigger() is None  # not running yet: refused
    hs.online()
    for n in (1, 2, 3):
        t = hs.trigger()
        assert t.seq == n and t.t_ns == clock.ns and hs.state == BUSY
        assert hs.pending() == t
        clock.ns += 25_000_000
        assert hs.result("NG", 0.5, frame_seq=10 * n)
        snap = hs.snapshot()
        assert snap.state == RESULT_READY and snap.result_ready and not snap.busy and not snap.ready
        assert (snap.trigger_seq, snap.verdict, snap.score, snap.frame_seq) == (n, "NG", 0.5, 10 * n)
        assert snap.trigger_to_result_ms == 25.0
        assert hs.pending() is None
        assert hs.ack() and hs.state == READY
    snap = hs.snapshot()
    assert (snap.trigger_count, snap.refused_triggers, snap.ignored_acks, snap.stray_results) == (3, 1, 0, 0)
    assert snap.verdict == "NG"  # the last result stays readable after the ack


def test_trigger_while_busy_or_unacked_is_refused_and_counted():
    hs = Handshake(Clock())
    hs.online()
    first = hs.trigger()
    assert hs.trigger() is None and hs.state == BUSY and hs.pending() == first  # nothing queued
    hs.result("OK", 0.1, 0)
    assert hs.trigger() is None and hs.state == RESULT_READY  # the PLC must ack first
    snap = hs.snapshot()
    assert snap.refused_triggers == 2 and snap.trigger_count == 1 and snap.trigger_seq == 1
    hs.ack()
    assert hs.trigger().seq == 2


def test_ack_without_a_result_is_ignored_and_counted():
    hs = Handshake(Clock())
    assert not hs.ack()  # offline
    hs.online()
    assert not hs.ack() and hs.state == READY
    hs.trigger()
    assert not hs.ack() and hs.state == BUSY  # an ack cannot cancel a running inspection
    assert hs.snapshot().ignored_acks == 3


def test_result_without_trigger_is_stray_and_failure_shows_error_until_ack():
    clock = Clock()
    hs = Handshake(clock)
    hs.online()
    assert not hs.result("OK", 0.1, 5) and not hs.fail(ERR_REJECTED, "x")
    assert hs.snapshot().stray_results == 2 and hs.state == READY
    hs.trigger()
    clock.ns += 1_000_000
    assert hs.fail(ERR_REJECTED, "frame rejected: empty")
    snap = hs.snapshot()
    assert snap.error and snap.state == ERROR and snap.verdict == "ERROR"
    assert (snap.error_code, snap.error_text, snap.trigger_to_result_ms) == (ERR_REJECTED, "frame rejected: empty", 1.0)
    assert hs.trigger() is None  # refused in ERROR
    assert hs.ack() and hs.state == READY and hs.snapshot().error_code == 0


def test_offline_fails_a_waiting_trigger_and_listeners_see_every_change():
    hs = Handshake(Clock())
    seen = []
    hs.subscribe(lambda s: seen.append(s.state))
    hs.online()
    hs.trigger()
    hs.offline()
    assert seen == [OFFLINE, READY, BUSY, OFFLINE]
    assert hs.snapshot().error_code == ERR_STOPPED and hs.pending() is None
    assert hs.trigger() is None


def test_wait_pending_wakes_on_trigger_from_another_thread():
    hs = Handshake()
    hs.online()
    assert hs.wait_pending(0.01) is None
    threading.Timer(0.05, hs.trigger).start()
    t = hs.wait_pending(5)
    assert t is not None and t.seq == 1


def test_concurrent_triggers_accept_exactly_one():
    hs = Handshake()
    hs.online()
    got = []
    threads = [threading.Thread(target=lambda: got.append(hs.trigger())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(g is not None for g in got) == 1 and hs.snapshot().refused_triggers == 7
