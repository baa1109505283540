"""What serve, bench and soak print at the end, and the SIGINT/SIGTERM hook they share."""
from __future__ import annotations

import contextlib
import json
import signal
import sys
from pathlib import Path

from protospect.files import write_atomic
from protospect.runtime.pipeline import STAGE_ORDER
from protospect.runtime.sinks import finite
from protospect.runtime.line.status import line_text
from protospect.runtime.stats import format_table


@contextlib.contextmanager
def stop_on_signals(pipeline):
    """SIGINT/SIGTERM ask the pipeline to stop after the current frame; sinks are then flushed normally."""
    previous = {}

    def handler(signum, _frame):
        pipeline.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (embedded use): the caller stops the pipeline itself
            pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stage_order(summary: dict) -> list[str]:
    infer_parts = sorted(s for s in summary if s.startswith("infer."))
    order = []
    for s in STAGE_ORDER:
        order.append(s)
        if s == "infer":
            order += infer_parts
    return order


def summary_text(report: dict) -> str:
    c = report["counters"]
    lines = [format_table(report["stages"], stage_order(report["stages"])),
             f"frames: processed {c['processed']} (OK {c['ok']}, REVIEW {c.get('review', 0)}, NG {c['ng']}), "
             f"rejected {c['rejected']}, "
             f"dropped {c['dropped']}, reconnects {c['reconnects']}, {c['fps']:.1f} frames/s"]
    if c["rejected_reasons"]:
        lines.append("rejected: " + "; ".join(f"{n} x {r}" for r, n in c["rejected_reasons"].items()))
    if c.get("drift_events"):
        lines.append(f"drift: the watch fired {c['drift_events']} time(s) (see the \"drift\" lines in the log); "
                     "thresholds unchanged")
    if report.get("capture_ended"):
        lines.append(f"source {report['source']}: {report['capture_ended']}")
    for name, n in report.get("sink_failures", {}).items():
        lines.append(f"{name}: {n} not saved (the reason is in each frame's verdict line)")
    if report.get("line"):
        lines.append(line_text(report["line"]))
    if report.get("sink_error"):
        lines.append(f"run stopped: {report['sink_error']}")
    return "\n".join(lines)


def write_json(path: Path, data: dict) -> None:
    """Via a temporary name: a full disk leaves the previous file, never half of a new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(finite(data), indent=2, default=str, allow_nan=False) + "\n").encode())


def exit_code(report: dict, command: str) -> int:
    """1 (and why, one line on stderr) when the verdict log could not be written, or the source stopped
    on an error or gave up reconnecting; else 0."""
    if report.get("sink_error"):
        print(f"protospect {command}: error: {report['sink_error']} (the run stopped there)", file=sys.stderr)
        return 1
    ended = report["capture_ended"]
    if ended.startswith(("error", "gave up")):
        print(f"protospect {command}: source stopped: {ended}", file=sys.stderr)
        return 1
    return 0
