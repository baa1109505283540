"""Latency of the exported graphs' own PyTorch module (uint8 frame in, map and score out) on a GPU, in one run.

The GPU cost of an option when no TensorRT exists (none can be installed on the lent GPU machines): each artifact
is wrapped exactly as `protospect export` wraps it (export.deploy.FullGraph), moved to the device and timed at batch
1 in fp32 and under fp16 autocast, round-robin in blocks of 10 so a load change hits every graph alike. CUDA events
time the device work; the frame is already on the device (host-to-device copies are the runtime's, not the
graph's). TensorRT fuses more than eager PyTorch, so absolute figures are an upper bound; ratios between graphs are
what this is for. Runs on the CPU too (--device cpu), which is how its test runs it.

    python studies/torch_graph_bench.py runs/cost_v14/{s256,g256,m1024,g512}/art [--device cuda] [--runs 200]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time

import numpy as np
import torch

from protospect.export.deploy import FullGraph
from protospect.metadata import input_hw_of
from protospect.training.artifact import load_artifact

BLOCK = 10


def _timer(device: torch.device):
    """A function that runs fn once and returns its milliseconds (CUDA events on a GPU, perf_counter elsewhere)."""
    if device.type == "cuda":
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
    else:
        def run(fn):
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3
    return run


def bench(arts: list[str], device: str = "cuda", runs: int = 200, warmup: int = 20,
          precisions: tuple[str, ...] = ("fp32", "fp16")) -> list[dict]:
    dev = torch.device(device)
    graphs, frames = [], []
    for art in arts:
        model, _ = load_artifact(art)
        h, w = input_hw_of(model.meta)
        graphs.append(FullGraph(model, model.meta["mean"], model.meta["std"]).eval().to(dev))
        frames.append(torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).to(dev))
    timer = _timer(dev)
    rows = []
    for precision in precisions:
        autocast = (torch.autocast(dev.type, dtype=torch.float16 if dev.type == "cuda" else torch.bfloat16)
                    if precision == "fp16" else contextlib.nullcontext())
        calls = [lambda g=g, x=x: g(x) for g, x in zip(graphs, frames)]
        times: list[list[float]] = [[] for _ in arts]
        with torch.inference_mode(), autocast:
            for call in calls:
                for _ in range(warmup):
                    call()
            while min(len(t) for t in times) < runs:
                for call, t in zip(calls, times):
                    t.extend(timer(call) for _ in range(BLOCK))
        for art, t in zip(arts, times):
            ms = np.array(t)
            rows.append({"artifact": art, "device": str(dev), "precision": precision, "runs": len(ms),
                         "median_ms": round(float(np.median(ms)), 3), "p10_ms": round(float(np.percentile(ms, 10)), 3),
                         "p90_ms": round(float(np.percentile(ms, 90)), 3)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("arts", nargs="+", help="artifact folders (protospect train --out)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--precisions", nargs="+", default=["fp32", "fp16"], choices=["fp32", "fp16"])
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    rows = bench(args.arts, args.device, args.runs, args.warmup, tuple(args.precisions))
    print(f"PyTorch {torch.__version__} on {name}, batch 1, median of {args.runs}+ runs after {args.warmup} warm-up")
    for precision in args.precisions:
        sel = [r for r in rows if r["precision"] == precision]
        for r in sel:
            print(f"{precision}  {r['artifact']:40s} {r['median_ms']:8.3f} ms (p10 {r['p10_ms']:.3f}, p90 {r['p90_ms']:.3f})"
                  f"  x{r['median_ms'] / sel[0]['median_ms']:.2f} of the first")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
