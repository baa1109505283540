"""Host time of one torch-free ProtoTopK.run() call (benchmark; CPU only, no GPU needed).

A station calls the kernel once per frame with the same buffers; what the host spends per call (planning
the splits, laying out the workspace, building the kernel argument arrays) adds to every frame's latency
on the Jetson's CPU. The driver calls are replaced by recorders (tests/cpp_ext/launcher_fakes.py), so this
times only the Python side: the first call (building the launch plan) and the replayed calls after it.

    python studies/launcher_host_overhead.py            # PCSNet edge (1024, 1024, 152, k 16) and paper shapes
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "cpp_ext"))
from launcher_fakes import host_only_launcher  # noqa: E402 (the test helper, from its folder)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["1024,1024,152,16", "4096,4096,1792,200"], help="Q,M,D,k (fp16)")
    ap.add_argument("--calls", type=int, default=20000)
    args = ap.parse_args(argv)
    print(f"host time per ProtoTopK.run() call, driver calls stubbed, {args.calls} calls (median of 5 batches)")
    for text in args.shapes:
        Q, M, D, k = (int(x) for x in text.split(","))
        topk = host_only_launcher(0, M=M, D=D)
        topk._launch = lambda *a: None
        call = (0x3000, Q, k, 0x4000, 0x5000)
        t0 = time.perf_counter()
        topk.run(*call, stream=7)
        first_us = (time.perf_counter() - t0) * 1e6
        batches = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(args.calls // 5):
                topk.run(*call, stream=7)
            batches.append((time.perf_counter() - t0) / (args.calls // 5) * 1e6)
        planned = []
        for _ in range(5):  # the same work without the cache: the plan rebuilt every call
            t0 = time.perf_counter()
            for _ in range(args.calls // 50):
                topk._calls.clear()
                topk.run(*call, stream=7)
            planned.append((time.perf_counter() - t0) / (args.calls // 50) * 1e6)
        print(f"  Q={Q} M={M} D={D} k={k}: replayed {sorted(batches)[2]:.1f} us, plan built every call "
              f"{sorted(planned)[2]:.1f} us (first call {first_us:.0f} us)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
