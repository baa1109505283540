"""`protospect bench MODEL [--source SRC] --frames N [--warmup W]`: per-stage latency of the full runtime.

Without --source a frame held in host memory is fed repeatedly: that is the headline
host-to-host figure (frame in host memory -> verdict on host), EfficientAD's protocol of warm-up
frames first, then N timed frames, batch 1. With --source the capture path is included and, for
live sources, dropped frames are counted. GPU-only time (CUDA events around the engine) is
printed where the backend measures it. Writes OUT/latency_hist.png and OUT/bench.json.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np

from protospect.errors import ConfigError
from protospect.runtime.backends.ort import available_cores
from protospect.runtime.cli_serve import add_source_arguments, add_threshold_argument, check_common, open_backend, use_threshold
from protospect.runtime.pipeline import Pipeline
from protospect.runtime.report import exit_code, stop_on_signals, summary_text, write_json
from protospect.runtime.sources import ArraySource, open_source
from protospect.runtime.stats import draw_histogram


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser, required=False)
    add_threshold_argument(parser)
    parser.add_argument("--frames", type=int, required=True, help="timed frames")
    parser.add_argument("--warmup", type=int, default=50, help="untimed frames first (default 50)")
    parser.add_argument("--frame-size", default=None, metavar="WxH", type=frame_size,
                        help="size of the in-memory frame without --source (default: the model's input size)")
    parser.add_argument("--out", type=Path, default=Path("bench_out"), help="folder for latency_hist.png and bench.json")


def frame_size(spec: str) -> tuple[int, int]:
    """argparse type for --frame-size: "1280x720" -> (1280, 720); anything else is a usage error (exit 2)."""
    try:
        w, h = (int(v) for v in spec.lower().split("x"))
    except ValueError:
        w = h = 0
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"{spec}: expected WxH with W and H >= 1, e.g. 1280x720")
    return w, h


def run(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.warmup < 0:
        raise ConfigError("--frames must be >= 1 and --warmup >= 0")
    check_common(args)
    if args.out.exists() and not args.out.is_dir():  # found now, not after the run with the figures lost
        raise ConfigError(f"--out {args.out}: not a folder (an existing file); bench writes bench.json and "
                          "latency_hist.png into a folder")
    backend, station = open_backend(args)
    with backend:
        use_threshold(backend, args.threshold, station)
        if args.source is None:
            mh, mw = backend.info.input_hw
            w, h = args.frame_size or (mw, mh)
            frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
            source = ArraySource([frame], loop=True, bgr=False, name=f"host memory {w}x{h}")
        else:
            source = open_source(args.source, loop=True)
        pipeline = Pipeline(backend, source, [], queue_size=args.queue_size, max_frames=args.warmup + args.frames,
                            warmup=args.warmup, progress=sys.stderr.isatty())
        with stop_on_signals(pipeline):
            report = pipeline.run()
    counters = report["counters"]
    if not counters["processed"] and counters["rejected"] and not report.get("sink_error"):
        reasons = "; ".join(f"{n} x {r}" for r, n in counters["rejected_reasons"].items())
        raise ConfigError(f"every frame from {report['source']} was rejected ({reasons}): nothing was measured, "
                          "nothing written")
    stages = report["stages"]
    h2h = stages.get("host_to_host")
    print(f"backend: {report['backend']}")
    print(f"source: {report['source']}; {args.warmup} warm-up + {report['counters']['processed'] - min(args.warmup, report['counters']['processed'])} timed frames; "
          f"machine: {platform.machine()} {platform.processor() or ''} ({available_cores()} cores)")
    print(summary_text(report))
    if h2h:
        print(f"HEADLINE host-to-host latency: p50 {h2h['p50']:.2f} ms, p99 {h2h['p99']:.2f} ms, mean {h2h['mean']:.2f} ms; "
              f"{report['counters']['fps']:.1f} frames/s")
    dev = stages.get("device")
    print(f"GPU-only time: p50 {dev['p50']:.3f} ms, p99 {dev['p99']:.3f} ms" if dev else
          "GPU-only time: n/a (this backend does not run on a GPU)")
    args.out.mkdir(parents=True, exist_ok=True)
    hist = args.out / "latency_hist.png"
    draw_histogram(pipeline.times.values("host_to_host"), str(hist),
                   f"host-to-host latency, {report['backend']['backend']}, n={h2h['n'] if h2h else 0}")
    write_json(args.out / "bench.json", {**report, "command": " ".join(sys.argv), "warmup": args.warmup, "frames": args.frames})
    print(f"histogram: {hist}  figures: {args.out / 'bench.json'}")
    return exit_code(report, "bench")  # figures from a source that failed are written, but not a success
