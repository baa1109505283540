"""`protospect calibrate MODEL --source GOOD_PARTS --out line_threshold.json`: the OK/NG threshold from
good parts seen by the station's own camera (runtime/line_threshold.py says why and how).

Every frame of the source must show a good part. Prints the good frames' scores against the model's
shot-calibrated threshold and the new one, draws both on a score histogram (OUT.png), and writes the
threshold file that `serve` and `bench` take with ``--threshold FILE``. Nothing about the model changes.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from protospect.errors import ConfigError
from protospect.files import write_atomic
from protospect.runtime import line_threshold
from protospect.runtime.backends import select_backend
from protospect.runtime.cli_serve import add_source_arguments, check_common
from protospect.runtime.pipeline import Pipeline
from protospect.runtime.report import exit_code, stop_on_signals
from protospect.runtime.sources import open_source
from protospect.runtime.stats import draw_histogram


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser, required=True)
    parser.add_argument("--out", type=Path, required=True, help="threshold file to write (JSON; a PNG histogram beside it)")
    parser.add_argument("--margin", type=float, default=line_threshold.DEFAULT_MARGIN,
                        help="threshold = max + MARGIN x (max - median) of the good scores "
                             f"(default {line_threshold.DEFAULT_MARGIN})")
    parser.add_argument("--max-frames", type=int, default=None, help="use the first N frames (default: the whole source)")


class _Interrupt:
    """What stop_on_signals calls on Ctrl-C / SIGTERM: remember it, then stop the pipeline as usual."""

    def __init__(self):
        self.pipeline = None
        self.signalled = False

    def stop(self) -> None:
        self.signalled = True
        if self.pipeline is not None:
            self.pipeline.stop()


def _histogram_png(s: np.ndarray, title: str, markers) -> bytes:
    """The score histogram as PNG bytes (drawn in a scratch folder), so it can be saved atomically."""
    with tempfile.TemporaryDirectory(prefix="protospect-hist-") as tmp:
        path = Path(tmp) / "hist.png"
        draw_histogram(s, str(path), title, unit="image score", markers=markers)
        return path.read_bytes()


def run(args: argparse.Namespace) -> int:
    check_common(args)
    if args.loop:
        raise ConfigError("--loop: calibration reads each good frame once")
    line_threshold.check_margin(args.margin)  # before scoring, not after
    line_threshold.check_out(args.out)        # a run is never lost to an --out that cannot be written
    scores = []

    def keep(result) -> None:
        scores.append(result.score)

    backend = select_backend(args.model, args.backend, threads=args.threads)
    source = open_source(args.source, loop=False)
    if source.live and args.max_frames is None:
        raise ConfigError("a live source never ends: give --max-frames N (50 or more good parts)")
    interrupt = _Interrupt()
    with backend:
        info = backend.info
        pipeline = Pipeline(backend, source, [], queue_size=args.queue_size, max_frames=args.max_frames,
                            policy="block", progress=sys.stderr.isatty(), on_frame=keep)
        interrupt.pipeline = pipeline
        with stop_on_signals(interrupt):
            report = pipeline.run()
    if interrupt.signalled:  # the good parts seen so far are not the set the user meant to measure
        print(f"protospect calibrate: interrupted after {len(scores)} frames; nothing written "
              f"({args.out} left as it was)", file=sys.stderr)
        return 130
    code = exit_code(report, "calibrate")
    if code:  # scores from a source that broke off say nothing reliable: keep the file the line runs on
        print(f"protospect calibrate: {args.out} not written (left as it was)", file=sys.stderr)
        return code
    rejected = report["counters"]["rejected"]
    s = np.asarray(scores, dtype=np.float64)
    rec = line_threshold.record(s, args.margin, info, args.model, report["source"], rejected=rejected)
    png = args.out.with_suffix(".png")
    hist = _histogram_png(s, f"good-part scores, {s.size} frames: {Path(args.model).name}",
                          [("shots", info.threshold, (0, 0, 220)), ("line", rec["threshold"], (0, 160, 0))])
    line_threshold.save(args.out, rec)  # every check above passed: only now is the file replaced
    try:
        write_atomic(png, hist)
    except OSError as err:
        raise ConfigError(f"{args.out} written, but not the histogram {png}: {err.strerror or err}") from err
    q = rec["scores"]
    print(f"good frames: {s.size} scored, {rejected} rejected; score min {q['min']:.4g}, median {q['median']:.4g}, "
          f"p99 {q['p99']:.4g}, max {q['max']:.4g}")
    print(f"threshold from the shots (in the model): {info.threshold:.4g} -> "
          f"{rec['good_frames_over_shot_threshold']} of these good frames would be NG")
    print(f"line threshold: {rec['threshold']:.4g} ({rec['rule']})")
    print(f"wrote {args.out} and {png}; use it with: protospect serve {args.model} --source ... --threshold {args.out}")
    return 0
