"""`protospect calibrate MODEL --source GOOD_PARTS --out line_threshold.json [--frr A] [--review-frr B]`: the
NG and REVIEW thresholds from good parts seen by the station's own camera, by split conformal prediction
(runtime/line_threshold.py says why, protospect/conformal.py how).

Every frame of the source must show a good part. Prints the certified false-reject rates in words and
the good frames' scores against the model's shot-calibrated threshold, draws the thresholds on a score
histogram (OUT.png), and writes the threshold file that `serve` and `bench` take with ``--threshold FILE``.
Too few good parts for A is refused, naming the N needed (``--allow-uncertified``: the largest good score,
and the rate it can state). Nothing about the model changes.
"""
from __future__ import annotations

import argparse
import sys
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
from protospect.runtime.stats import histogram_png
from protospect import conformal


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser, required=True)
    parser.add_argument("--out", type=Path, required=True, help="threshold file to write (JSON; a PNG histogram beside it)")
    add_rate_arguments(parser)
    parser.add_argument("--max-frames", type=int, default=None, help="use the first N frames (default: the whole source)")


def add_rate_arguments(parser: argparse.ArgumentParser) -> None:
    """--frr / --review-frr / --allow-uncertified: shared with `protospect register`."""
    parser.add_argument("--frr", type=float, default=conformal.DEFAULT_FRR, metavar="A",
                        help=f"false-reject rate the NG threshold certifies (default {conformal.DEFAULT_FRR}; "
                             "needs N >= 1/A - 1 good parts)")
    parser.add_argument("--review-frr", type=float, default=conformal.DEFAULT_REVIEW_FRR, metavar="B",
                        help=f"rate of good parts sent to REVIEW or NG (default {conformal.DEFAULT_REVIEW_FRR}; B >= A; "
                             "B = A: no REVIEW band)")
    parser.add_argument("--allow-uncertified", action="store_true",
                        help="with too few good parts for A: use the largest good score and say what rate it can state")


def check_rates(args: argparse.Namespace, n_planned: int | None = None) -> None:
    """Rates checked before any frame is scored; with a known frame count, too few parts refused now too."""
    conformal.check_rates(args.frr, args.review_frr)
    if n_planned is not None and not args.allow_uncertified and n_planned < conformal.n_needed(args.frr):
        raise ConfigError(f"{n_planned} good parts cannot certify a false-reject rate of {100 * args.frr:g} %: split "
                          f"conformal needs N >= 1/A - 1 = {conformal.n_needed(args.frr)} good parts "
                          "(or --allow-uncertified)")


class _Interrupt:
    """What stop_on_signals calls on Ctrl-C / SIGTERM: remember it, then stop the pipeline as usual."""

    def __init__(self):
        self.pipeline = None
        self.signalled = False

    def stop(self) -> None:
        self.signalled = True
        if self.pipeline is not None:
            self.pipeline.stop()


def run(args: argparse.Namespace) -> int:
    check_common(args)
    if args.loop:
        raise ConfigError("--loop: calibration reads each good frame once")
    check_rates(args, args.max_frames)        # before scoring, not after
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
    op = conformal.operating_point(s, args.frr, args.review_frr, allow_uncertified=args.allow_uncertified)
    rec = line_threshold.record(op, info, args.model, report["source"], rejected=rejected)
    png = args.out.with_suffix(".png")
    markers = [("shots", info.threshold, (0, 0, 220)), ("NG", op.ng_threshold, (0, 0, 160))]
    if op.review_threshold is not None:
        markers.append(("REVIEW", op.review_threshold, (0, 150, 230)))
    hist = histogram_png(s, f"good-part scores, {s.size} frames: {Path(args.model).name}", unit="image score",
                         markers=markers)
    line_threshold.save(args.out, rec)  # every check above passed: only now is the file replaced
    try:
        write_atomic(png, hist)
    except OSError as err:
        raise ConfigError(f"{args.out} written, but not the histogram {png}: {err.strerror or err}") from err
    q = rec["scores"]
    print(f"good frames: {s.size} scored, {rejected} rejected; score min {q['min']:.4g}, median {q['median']:.4g}, "
          f"p95 {q['p95']:.4g}, max {q['max']:.4g}")
    print(f"threshold from the shots (in the model): {info.threshold:.4g} -> "
          f"{rec['good_frames_over_shot_threshold']} of these good frames would be NG")
    for line in op.describe():
        print(line)
    print(f"wrote {args.out} and {png}; use it with: protospect serve {args.model} --source ... --threshold {args.out}")
    return 0
