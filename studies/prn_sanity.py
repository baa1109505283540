"""Design sanity check for prn / bpgg WITHOUT test images (figures in docs/methods.md).

    python studies/prn_sanity.py --method prn --data ../shared/data/bottle \
        --textures ../shared/data/textures [--set steps=40]

K shots from train/good (seeded), 8 other train/good images as normals, NSA and texture defects
planted on copies of them (pcsnet/validate.py's helpers, its own random stream). bpgg gets no
defective support here, so it runs on NSA pseudo supports (not BPGG's setting).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from protospect.imageio import read_rgb, resize_image
from protospect.training.data import MVTecCategory, sample_shots
from protospect.training.methods import get_method
from protospect.training.methods.pcsnet.validate import _parse_set, evaluate, planted_sets


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="prn", choices=["prn", "bpgg"])
    ap.add_argument("--data", required=True)
    ap.add_argument("--textures", default=None)
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val", type=int, default=8)
    ap.add_argument("--set", action="append", help="config override key=value (JSON value)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # shared dev machine: 1 thread avoids oversubscription

    cat = MVTecCategory(args.data)
    shots = sample_shots(cat.train_good, args.shots, args.seed)
    rest = [p for p in cat.train_good if p not in set(shots)]
    rest = [rest[i] for i in np.random.default_rng(args.seed + 1).permutation(len(rest))[: args.val]]
    overrides = {"category": cat.name, **_parse_set(args.set)}
    t0, c0 = time.time(), time.process_time()
    model = get_method(args.method).fit([read_rgb(p) for p in shots], "edge", args.seed, overrides)
    wall, cpu = time.time() - t0, time.process_time() - c0
    normals = [resize_image(read_rgb(p), model.meta["input_size"]) for p in rest]
    rows = evaluate(model, normals, planted_sets(normals, cat.name, args.textures))
    print(json.dumps({"method": args.method, "overrides": overrides, "fit_wall_s": round(wall, 1), "fit_cpu_s": round(cpu, 1),
                      "train_loss": model.meta.get("train_loss"), "support": model.meta.get("support_source"), **rows},
                     default=lambda v: round(v, 2) if isinstance(v, float) else str(v)))


if __name__ == "__main__":
    main()
