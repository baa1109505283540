"""Benchmark of the fused prototype top-k kernel against torch, on one GPU.

    python studies/topk_bench.py [--iters 50] [--shapes 4096,4096,1792,200 ...] [--json out.json]

For every (Q, M, D, k) shape and dtype (fp16, fp32) it times, in the same run:
  fused     the torch op (proto_topk.cu through the torch extension)
  launcher  the torch-free NVRTC launcher on the same tensors and stream (when cuda-python is installed)
  matmul    torch GEMM form ||q||^2 + ||m||^2 - 2 q.m, clamp, topk (what training does without the kernel)
  cdist     torch.cdist + topk
  gemm      the bare q @ bank.T matmul (cuBLAS): the practical tensor-core floor
Each is the median of --iters CUDA-event timings after warm-up, plain and replayed as a CUDA graph,
with the achieved TFLOP/s (2 Q M D flops), the ratio to the GEMM floor (and to --peak-tflops if
given) and the peak extra memory (torch.cuda.max_memory_allocated over the inputs). Without a CUDA
GPU it says why, times the numpy reference at a small shape, and exits 0.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

DEFAULT_SHAPES = [(4096, 4096, 1792, 200), (4096, 4096, 152, 64), (1024, 1024, 152, 32), (4096, 32768, 256, 1)]


def _parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = [int(x) for x in text.split(",")]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"shape {text!r}: expected Q,M,D,k")
    return tuple(parts)


def _cpu_fallback(reason: str) -> int:
    import numpy as np

    from protospect.cpp_ext import reference

    print(f"bench: cannot time the CUDA kernel here: {reason}")
    rng = np.random.default_rng(0)
    q = rng.standard_normal((256, 152)).astype(np.float32)
    bank = rng.standard_normal((1024, 152)).astype(np.float32)
    reference.knn_sqdist(q, bank, 32)  # warm-up
    t0 = time.perf_counter()
    reference.knn_sqdist(q, bank, 32)
    ms = 1e3 * (time.perf_counter() - t0)
    print(f"numpy reference (Q=256, M=1024, D=152, k=32, float64 accumulate): {ms:.1f} ms on the CPU")
    return 0


def _time_ms(torch, fn, iters: int, graph: bool) -> float:
    """Median of per-call CUDA-event times (ms); fn is replayed from a CUDA graph when graph=True."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up: JIT/cuBLAS handles, allocator pools, kernel caches
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    call = fn
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        call = g.replay
        call()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _peak_extra_mb(torch, fn) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


def _methods(torch, torch_op, q, bank, sq, k, launcher, split_sweep=()):
    """name -> zero-argument callable producing (dist, idx)."""

    def fused():
        return torch_op.knn_sqdist(q, bank, k, sq)

    def fused_with(splits):
        return lambda: torch_op.knn_sqdist(q, bank, k, sq, splits=splits)

    def matmul():
        d = (q.float() * q.float()).sum(1, keepdim=True) + sq[None, :] - 2.0 * (q @ bank.T).float()
        return torch.topk(d.clamp_min(0.0), k, dim=1, largest=False, sorted=True)

    def cdist():
        return torch.topk(torch.cdist(q, bank), k, dim=1, largest=False, sorted=True)

    def gemm():
        return q @ bank.T

    methods = {"fused": fused, **{f"fused_s{n}": fused_with(n) for n in split_sweep}}
    if launcher is not None:
        Q = q.shape[0]
        out_d = torch.empty((Q, k), device=q.device, dtype=torch.float32)
        out_i = torch.empty((Q, k), device=q.device, dtype=torch.int32)
        launcher.reserve(Q, k)

        def torch_free():
            launcher.run(q.data_ptr(), Q, k, out_d.data_ptr(), out_i.data_ptr(), torch.cuda.current_stream().cuda_stream)
            return out_d, out_i

        methods["launcher"] = torch_free
    methods.update(matmul=matmul, cdist=cdist, gemm=gemm)
    return methods


def bench_shape(torch, torch_op, shape, dtype_name: str, iters: int, peak_tflops: float | None, use_launcher: bool,
                split_sweep=()):
    Q, M, D, k = shape
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn((Q, D), device="cuda", dtype=dtype, generator=gen)
    bank = torch.randn((M, D), device="cuda", dtype=dtype, generator=gen)
    sq = torch_op.bank_sqnorm(bank)
    launcher = None
    if use_launcher:
        try:
            from protospect.cpp_ext.launcher import ProtoTopK

            launcher = ProtoTopK(bank.data_ptr(), M, D, dtype_name)
        except Exception as err:  # noqa: BLE001 (the torch-free row is optional in this benchmark)
            print(f"  (launcher row skipped: {err})")
    flops = 2.0 * Q * M * D
    rows = {}
    methods = _methods(torch, torch_op, q, bank, sq, k, launcher, split_sweep)
    for name, fn in methods.items():
        try:
            plain = _time_ms(torch, fn, iters, graph=False)
            graphed = _time_ms(torch, fn, iters, graph=True)
            mem = _peak_extra_mb(torch, fn)
        except Exception as err:  # noqa: BLE001 (e.g. cdist without fp16 support: report, keep going)
            rows[name] = {"error": str(err).splitlines()[0]}
            continue
        rows[name] = {"ms": plain, "graph_ms": graphed, "tflops": flops / (graphed * 1e-3) / 1e12, "extra_mb": mem}
    floor = rows.get("gemm", {}).get("graph_ms")
    for row in rows.values():
        if "graph_ms" in row:
            if floor:
                row["x_gemm_floor"] = row["graph_ms"] / floor
            if peak_tflops:
                row["x_peak_floor"] = row["graph_ms"] / (flops / (peak_tflops * 1e12) * 1e3)
    # correctness in the same run: fused vs an fp32 GEMM on the same (possibly fp16-rounded) inputs
    fd, fi = methods["fused"]()
    qf, bf = q.float(), bank.float()
    ref = ((qf * qf).sum(1, keepdim=True) + (bf * bf).sum(1)[None, :] - 2.0 * qf @ bf.T).clamp_min(0.0)
    td = torch.topk(ref, k, dim=1, largest=False, sorted=True).values
    rows["fused"]["max_rel_diff_vs_fp32"] = float(((fd - td).abs() / td.abs().clamp_min(1e-6)).max())
    del ref
    if launcher is not None and "ms" in rows.get("launcher", {}):
        ld, li = methods["launcher"]()
        rows["launcher"]["identical_to_fused"] = bool(torch.equal(ld, fd) and torch.equal(li, fi))
        launcher.close()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="*", type=_parse_shape, default=DEFAULT_SHAPES, help="Q,M,D,k ...")
    ap.add_argument("--dtypes", nargs="*", default=["float16", "float32"], choices=["float16", "float32"])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="dense fp16 tensor-core peak of this GPU (e.g. 989 for H100 SXM) for a second floor ratio")
    ap.add_argument("--no-launcher", action="store_true", help="skip the torch-free NVRTC launcher row")
    ap.add_argument("--split-sweep", nargs="*", type=int, default=[],
                    help="also time the fused kernel with these explicit bank splits (rows fused_sN)")
    ap.add_argument("--json", default=None, help="also write all figures to this file")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        return _cpu_fallback("torch is not installed")
    if not torch.cuda.is_available():
        return _cpu_fallback("no CUDA GPU (torch.cuda.is_available() is False)")
    from protospect.cpp_ext import torch_op

    if not torch_op.is_available():
        return _cpu_fallback(torch_op.unavailable_reason())

    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  iters {args.iters}")
    results = []
    for shape in args.shapes:
        for dtype_name in args.dtypes:
            rows = bench_shape(torch, torch_op, shape, dtype_name, args.iters, args.peak_tflops, not args.no_launcher,
                               args.split_sweep)
            results.append({"shape": list(shape), "dtype": dtype_name, "rows": rows})
            Q, M, D, k = shape
            print(f"\nQ={Q} M={M} D={D} k={k} {dtype_name}")
            print(f"  {'method':9s} {'ms':>8s} {'graph ms':>9s} {'TFLOP/s':>8s} {'x gemm':>7s} {'x peak':>7s} {'extra MB':>9s}")
            for name, row in rows.items():
                if "error" in row:
                    print(f"  {name:9s} n/a: {row['error']}")
                    continue
                peak = f"{row['x_peak_floor']:7.2f}" if "x_peak_floor" in row else f"{'-':>7s}"
                print(f"  {name:9s} {row['ms']:8.3f} {row['graph_ms']:9.3f} {row['tflops']:8.1f} "
                      f"{row.get('x_gemm_floor', float('nan')):7.2f} {peak} {row['extra_mb']:9.1f}")
            fused = rows["fused"]
            for base in ("matmul", "cdist"):
                if "graph_ms" in rows.get(base, {}):
                    print(f"  speed-up vs {base}: {rows[base]['graph_ms'] / fused['graph_ms']:.2f}x (graph)")
            print(f"  max relative |fused - fp32 GEMM top-k| = {fused['max_rel_diff_vs_fp32']:.3g}"
                  + (f"; launcher identical to fused: {rows['launcher']['identical_to_fused']}"
                     if "identical_to_fused" in rows.get("launcher", {}) else ""))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"device": torch.cuda.get_device_name(), "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
