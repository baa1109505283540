"""Soak test: replay a source for N frames and show that resident memory stays flat.

    protospect soak MODEL --source parts.avi --frames 100000
    python -m protospect.runtime.cli_soak MODEL ...     (the same without the CLI wrapper)

Prints RSS after the first frame, at --rss-every intervals, and at the end; the run is the
normal pipeline (JSON-lines sink included with --sink) with the source on loop.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from protospect.errors import ConfigError, ProtospectError
from protospect.runtime.cli_serve import add_source_arguments, check_common, open_backend
from protospect.runtime.pipeline import Pipeline
from protospect.runtime.report import exit_code, stop_on_signals, summary_text, write_json
from protospect.runtime.sinks import JsonlSink
from protospect.runtime.sources import ArraySource, open_source
from protospect.runtime.stats import rss_bytes

MIB = 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser, required=False)
    parser.add_argument("--frames", type=int, default=100_000, help="frames to process (default 100000)")
    parser.add_argument("--rss-every", type=int, default=None, help="print RSS every N frames (default frames/10)")
    parser.add_argument("--sink", type=Path, default=None, help="also write DIR/verdicts.jsonl (and DIR/soak.json)")


class RssProbe:
    """Samples RSS at frame 1 and every ``every`` frames (called from the pipeline loop)."""

    def __init__(self, every: int, echo: bool = True):
        self.every = max(1, every)
        self.samples: list[tuple[int, int]] = []
        self.echo = echo
        self.last_rss = 0
        self._n = 0

    def __call__(self, _result) -> None:
        self._n += 1
        self.last_rss = rss_bytes()  # one read of /proc/self/statm: cheap next to a frame
        if self._n == 1 or self._n % self.every == 0:
            self.samples.append((self._n, self.last_rss))
            if self.echo:
                print(f"frame {self._n:>8d}  RSS {self.last_rss / MIB:8.1f} MiB", flush=True)

    @property
    def frames(self) -> int:
        return self._n


def run(args: argparse.Namespace) -> int:
    check_common(args)
    if args.frames < 1:
        raise ConfigError(f"--frames {args.frames}: must be >= 1")
    if args.rss_every is not None and args.rss_every < 1:
        raise ConfigError(f"--rss-every {args.rss_every}: must be >= 1")
    backend, _ = open_backend(args)  # a station bundle: verified, then its graph
    probe = RssProbe(args.rss_every or max(1, args.frames // 10))
    with backend:
        if args.source is None:
            h, w = backend.info.input_hw
            frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
            source = ArraySource([frame], loop=True, bgr=False, name=f"host memory {w}x{h}")
        else:
            source = open_source(args.source, loop=True)
        sinks = [JsonlSink(args.sink / "verdicts.jsonl")] if args.sink else []
        pipeline = Pipeline(backend, source, sinks, queue_size=args.queue_size, max_frames=args.frames,
                            on_frame=probe, progress=False)
        with stop_on_signals(pipeline):
            report = pipeline.run()
    if not probe.samples or probe.samples[-1][0] != probe.frames:  # the last frame, if not on the grid
        probe.samples.append((probe.frames, probe.last_rss))
    after = rss_bytes()  # after shutdown and the percentile table: not part of the loop's footprint
    (n0, r0), (n1, r1) = probe.samples[0], probe.samples[-1]
    print(summary_text(report))
    print(f"SOAK RSS start (frame {n0}) {r0 / MIB:.1f} MiB, end (frame {n1}) {r1 / MIB:.1f} MiB, "
          f"growth {(r1 - r0) / MIB:+.1f} MiB, max {max(r for _, r in probe.samples) / MIB:.1f} MiB; "
          f"after shutdown {after / MIB:.1f} MiB")
    if args.sink:
        write_json(args.sink / "soak.json", {**report, "rss_samples": probe.samples, "rss_after_shutdown": after})
    return exit_code(report, "soak")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protospect.runtime.cli_soak", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except ProtospectError as err:  # a user error is one line, as with `protospect soak`
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
