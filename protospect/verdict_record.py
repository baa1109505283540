"""The verdict record: one JSON line per frame (and one per event), the keys every sink, the live page,
MQTT and the PLC adapters read (docs/contracts.md 11). Defined here once; only the standard library.

Frame record (``verdicts.jsonl``, one object per line):

  seq            int     frame sequence number (never reused in a run, also across reconnects)
  t_capture_ns   int     monotonic capture time, ns (latencies)
  t_wall         float   wall-clock capture time, s (people)
  verdict        str     one of VERDICTS
  score          float   the model's raw image score (null when not a number; then score_not_finite)
  p_value        float   conformal p-value of the score against the good calibration scores,
                         (1 + #{good >= score}) / (N + 1); only when the thresholds come from a
                         conformal file (calibrate, station bundle)
  ms             dict    stage -> milliseconds
  backend        str     which backend judged it
  origin         str     file name of the frame (replayed folders/videos), when known
  reason         str     REJECTED only: why the frame could not be judged
  trigger_seq    int     trigger modes only (serve --trigger plc | hardware): the trigger (1, 2, ...) this
                         frame answers; plc: the frame was the first one captured after that trigger;
                         hardware: the n-th frame the camera delivered (one per pulse)
  trigger_ms     float   trigger modes only, ms (before the sinks): plc: trigger accepted -> verdict;
                         hardware: frame arrived on the host -> verdict (the pulse is not seen by the host)
  score_not_finite, ng_image, ng_image_error: see docs/runtime.md (Sinks)

Event record: ``{"event": EVENT_DRIFT, "seq": ..., "t_wall": ..., ...}`` -- a line with an ``event`` key
is not a frame; readers that count frames skip it.
"""
from __future__ import annotations

OK, REVIEW, NG, REJECTED = "OK", "REVIEW", "NG", "REJECTED"
VERDICTS = (OK, REVIEW, NG, REJECTED)

# keys of a judged frame's record, in the order they are written
FRAME_KEYS = ("seq", "t_capture_ns", "t_wall", "score", "verdict", "p_value", "ms", "backend")
OPTIONAL_KEYS = ("score_not_finite", "origin", "reason", "trigger_seq", "trigger_ms", "ng_image", "ng_image_error")

EVENT = "event"          # present only on event lines
EVENT_DRIFT = "drift"    # the drift watch fired (runtime/verdict/drift.py)
EVENT_DRIFT_CLEARED = "drift_cleared"
DRIFT_KEYS = ("event", "seq", "t_wall", "window", "above", "reference", "expected_rate", "p_value", "alpha")


def is_event(record: dict) -> bool:
    return EVENT in record
