"""`protospect calibrate MODEL --source GOOD_PARTS --out line_threshold.json`: the OK/NG threshold from
good parts seen by the station's own camera (runtime/line_threshold.py says why and how).

Every frame of the source must show a good part. Prints the good frames' scores against the model's
shot-calibrated threshold and the new one, draws both on a score histogram (OUT.png), and writes the
threshold file that `serve` and `bench` take with ``--threshold FILE``. Nothing about the model changes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from protospect.errors import ConfigError
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


def run(args: argparse.Namespace) -> int:
    check_common(args)
    if args.loop:
        raise ConfigError("--loop: calibration reads each good frame once")
    line_threshold.check_margin(args.margin)  # before scoring, not after
    scores = []

    def keep(result) -> None:
        scores.append(result.score)

    backend = select_backend(args.model, args.backend, threads=args.threads)
    source = open_source(args.source, loop=False)
    if source.live and args.max_frames is None:
        raise ConfigError("a live source never ends: give --max-frames N (50 or more good parts)")
    with backend:
        info = backend.info
        pipeline = Pipeline(backend, source, [], queue_size=args.queue_size, max_frames=args.max_frames,
                            policy="block", progress=sys.stderr.isatty(), on_frame=keep)
        with stop_on_signals(pipeline):
            report = pipeline.run()
    code = exit_code(report, "calibrate")
    if code:  # scores from a source that broke off say nothing reliable: keep the file the line runs on
        print(f"protospect calibrate: {args.out} not written (left as it was)", file=sys.stderr)
        return code
    rejected = report["counters"]["rejected"]
    s = np.asarray(scores, dtype=np.float64)
    rec = line_threshold.record(s, args.margin, info, args.model, report["source"], rejected=rejected)
    line_threshold.save(args.out, rec)
    png = args.out.with_suffix(".png")
    draw_histogram(s, str(png), f"good-part scores, {s.size} frames: {Path(args.model).name}", unit="image score",
                   markers=[("shots", info.threshold, (0, 0, 220)), ("line", rec["threshold"], (0, 160, 0))])
    q = rec["scores"]
    print(f"good frames: {s.size} scored, {rejected} rejected; score min {q['min']:.4g}, median {q['median']:.4g}, "
          f"p99 {q['p99']:.4g}, max {q['max']:.4g}")
    print(f"threshold from the shots (in the model): {info.threshold:.4g} -> "
          f"{rec['good_frames_over_shot_threshold']} of these good frames would be NG")
    print(f"line threshold: {rec['threshold']:.4g} ({rec['rule']})")
    print(f"wrote {args.out} and {png}; use it with: protospect serve {args.model} --source ... --threshold {args.out}")
    return 0
