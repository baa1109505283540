"""Where a PCSNet frame's CPU time goes: backbone + PFA, top-k prototype distances, CAS head (torch, one thread).

    python studies/pcsnet_stage_times.py runs/geometry_bench/s256/art runs/geometry_bench/s512/art
(artifacts from studies/geometry_bench.sh); prints the mean of 10 timed frames after 2 warm-up frames.
"""
from __future__ import annotations

import argparse
import time

import torch

from protospect.training.artifact import load_artifact


@torch.no_grad()
def stage_times(model, frames: int = 10, warmup: int = 2) -> dict[str, float]:
    size = int(model.meta["input_size"])
    x = torch.randn(1, 3, size, size)
    total = {"backbone+pfa": 0.0, "prototype top-k": 0.0, "cas head": 0.0}
    for i in range(warmup + frames):
        t0 = time.perf_counter()
        phi, guide = model.features(x)
        t1 = time.perf_counter()
        knn = model.knn(phi)
        t2 = time.perf_counter()
        model.head(knn, guide)
        t3 = time.perf_counter()
        if i >= warmup:
            for key, dt in zip(total, (t1 - t0, t2 - t1, t3 - t2)):
                total[key] += dt
    return {key: 1000 * v / frames for key, v in total.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for art in args.artifacts:
        model, _ = load_artifact(art)
        times = stage_times(model)
        print(f"{model.meta['input_size']} px: " + ", ".join(f"{k} {v:.1f} ms" for k, v in times.items()))


if __name__ == "__main__":
    main()
