"""ONNX Runtime CPU latency of exported graphs, batch 1, in one run (so they share the machine state).

    python studies/bench_ort.py model.onnx model.int8.onnx [--runs 200] [--warmup 20] [--threads 2]

Runs the graphs round-robin in blocks of 10 so a load change on a shared machine hits all of them
alike, and prints the median (and p10/p90) of >= --runs timed runs per graph after --warmup runs.
INT8 graphs run ORT's own INT8 kernels here (the fast path); their accuracy on x86 without VNNI
is not TensorRT's (see ort_session.cpu_session).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from protospect.export.ort_session import cpu_session, graph_precision

BLOCK = 10


def bench(paths: list[Path], runs: int = 200, warmup: int = 20, threads: int = 2, seed: int = 0) -> list[dict]:
    sessions = [cpu_session(p, threads=threads) for p in paths]
    feeds = []
    for s in sessions:
        shape = s.get_inputs()[0].shape
        feeds.append({"image": np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)})
    for s, feed in zip(sessions, feeds):
        for _ in range(warmup):
            s.run(None, feed)
    times: list[list[float]] = [[] for _ in paths]
    while min(len(t) for t in times) < runs:
        for s, feed, t in zip(sessions, feeds, times):
            for _ in range(BLOCK):
                start = time.perf_counter()
                s.run(None, feed)
                t.append(time.perf_counter() - start)
    rows = []
    for path, t in zip(paths, times):
        ms = np.array(t) * 1e3
        rows.append({"graph": str(path), "precision": graph_precision(path), "size_mib": round(path.stat().st_size / 2**20, 2),
                     "runs": len(ms), "median_ms": round(float(np.median(ms)), 2),
                     "p10_ms": round(float(np.percentile(ms, 10)), 2), "p90_ms": round(float(np.percentile(ms, 90)), 2)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("graphs", nargs="+", type=Path)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    p.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = p.parse_args(argv)
    import onnxruntime

    rows = bench(args.graphs, args.runs, args.warmup, args.threads)
    print(f"ONNX Runtime {onnxruntime.__version__} CPU, batch 1, {args.threads} threads, median of {args.runs}+ runs after {args.warmup} warm-up")
    print(f"{'graph':40s} {'precision':9s} {'MiB':>7s} {'median ms':>10s} {'p10':>8s} {'p90':>8s}")
    for r in rows:
        print(f"{Path(r['graph']).name:40s} {r['precision']:9s} {r['size_mib']:7.2f} {r['median_ms']:10.2f} {r['p10_ms']:8.2f} {r['p90_ms']:8.2f}")
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
