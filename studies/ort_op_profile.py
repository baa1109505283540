"""Where ONNX Runtime (CPU) spends a frame, by operator type: the deployed graph's own profile.

One intra-op thread (stable on a shared machine), a random uint8 frame, the mean of --runs runs after one
warm-up. The prototype search shows as MatMul/FusedMatMul + Sub/Add (the expanded squared distance) + TopK.

    python studies/ort_op_profile.py runs/cost_bench/s256/model.onnx runs/cost_bench/s512/model.onnx [--runs 3]
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort


def profile(path: str, runs: int) -> collections.Counter:
    """op type -> ms per frame."""
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.enable_profiling, so.intra_op_num_threads = True, 1
        so.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        x = np.random.default_rng(0).integers(0, 256, [d if isinstance(d, int) else 1 for d in inp.shape], dtype=np.uint8)
        sess.run(None, {inp.name: x})  # warm-up: its profile (first-run allocations) is not read
        sess.end_profiling()
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            sess.run(None, {inp.name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    agg: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            agg[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
    return agg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--top", type=int, default=6)
    args = ap.parse_args(argv)
    for path in args.models:
        agg = profile(path, args.runs)
        total = sum(agg.values())
        print(f"{path}: {total:.1f} ms per frame (one thread)")
        for op, ms in agg.most_common(args.top):
            print(f"  {op:14s} {ms:7.1f} ms  {100 * ms / total:4.1f} %")


if __name__ == "__main__":
    main()
