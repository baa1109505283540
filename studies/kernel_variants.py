"""Compare build variants of the fused top-k kernel in one process, on one GPU (development tool).

Each variant is the same proto_topk.cuh (and its headers) compiled by NVRTC with extra -D switches (see the header:
PROTOSPECT_TOPK_FORCE_MMA, PROTOSPECT_TOPK_WGMMA_ALL, PROTOSPECT_TOPK_SHARED_BOUND=1|2,
PROTOSPECT_TOPK_AGG_ATOMICS=1|2; several per variant, comma-separated) and run through the torch-free launcher
on the same tensors; outputs must be identical across variants, times are CUDA-graph medians
(studies/topk_bench.py's timer), with torch matmul + topk timed in the same run as the yardstick.

    python studies/kernel_variants.py --shapes 4096,4096,1792,200 4096,32768,256,1 \
        --variant base= --variant mma=-DPROTOSPECT_TOPK_FORCE_MMA
"""
from __future__ import annotations

import argparse

import topk_bench as bench  # studies/topk_bench.py (run from this folder: python studies/kernel_variants.py)

from protospect.cpp_ext import launcher


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["4096,4096,1792,200"], help="Q,M,D,k (fp16)")
    ap.add_argument("--variant", action="append", default=[], help="name=-DFLAG[,-DFLAG2] (empty: the default build)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--once", action="store_true", help="one call per variant, no timing (under a profiler)")
    args = ap.parse_args(argv)
    import torch  # noqa: PLC0415 (a GPU tool)

    variants = [(v.split("=", 1)[0], tuple(o for o in v.split("=", 1)[1].split(",") if o)) for v in
                (args.variant or ["base="])]
    major, minor = torch.cuda.get_device_capability()
    arch = launcher.kernel_arch(major, minor)
    cubins = {name: launcher.compile_cubin(arch, extra_options=opts) for name, opts in variants}
    print(f"device {torch.cuda.get_device_name()}  arch {arch}  iters {args.iters}")
    for text in args.shapes:
        Q, M, D, k = (int(x) for x in text.split(","))
        gen = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(Q, D, device="cuda", generator=gen).half()
        bank = torch.randn(M, D, device="cuda", generator=gen).half()
        sq = (bank.float() ** 2).sum(1)
        ref = None
        print(f"\nQ={Q} M={M} D={D} k={k} float16")
        matmul = bench._methods(torch, None, q, bank, sq, k, None)["matmul"]  # the bench's yardstick
        if not args.once:
            print(f"  {'torch matmul+topk':<18} {bench._time_ms(torch, matmul, args.iters, graph=True):8.3f} ms")
        for name, _ in variants:
            launcher._cached_cubin = lambda _arch, cubin=cubins[name]: cubin  # this variant's build
            topk = launcher.ProtoTopK(bank.data_ptr(), M, D, "float16")
            topk.reserve(Q, k)
            out_d = torch.empty((Q, k), device="cuda", dtype=torch.float32)
            out_i = torch.empty((Q, k), device="cuda", dtype=torch.int32)

            def run():
                topk.run(q.data_ptr(), Q, k, out_d.data_ptr(), out_i.data_ptr(), torch.cuda.current_stream().cuda_stream)
                return out_d, out_i

            ms = float("nan") if args.once else bench._time_ms(torch, run, args.iters, graph=True)
            run()
            torch.cuda.synchronize()
            same = "" if ref is None else f"  identical to {variants[0][0]}: {torch.equal(out_d, ref[0]) and torch.equal(out_i, ref[1])}"
            if ref is None:
                ref = (out_d.clone(), out_i.clone())
            print(f"  {name:<18} {ms:8.3f} ms{same}")
            topk.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
