"""Merge the per-image scores of one job run twice into one record: a `light` rerun (validation only, a planted kind
added since) into the folder of an earlier `lean` / full run of the same job (with its test split), or the reverse.

Training is bit-exact per seed on CPU, so every array both runs hold must be equal; the merge refuses a job where
one differs (that would be two different models) and otherwise writes the union of the arrays, and of each variant's
jsonl metrics, into INTO. Nothing in FROM is changed; nothing INTO held is dropped.

    cd studies && python merge_runs.py ../runs/v11 ../runs/v11k [--only deeppcb_]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def merge_npz(src: Path, dst: Path) -> tuple[int, int]:
    """Union of two score files into dst; returns (arrays compared, arrays added). Raises on a differing array."""
    a, b = dict(np.load(src)), dict(np.load(dst))
    shared = sorted(set(a) & set(b))
    for key in shared:
        if not np.array_equal(a[key], b[key]):
            raise ValueError(f"{dst.name}: {key} differs between the two runs (not the same model)")
    added = sorted(set(a) - set(b))
    if added:
        np.savez(dst, **b, **{k: a[k] for k in added})
    return len(shared), len(added)


def merge_jsonl(src: Path, dst: Path) -> None:
    """dst's last row gains, per variant, the metrics only src's last row holds (e.g. the test split's)."""
    last = lambda p: json.loads([x for x in p.read_text().splitlines() if x.strip()][-1])  # noqa: E731
    s, d = last(src), last(dst)
    if (s["category"], s["K"], s["seed"], s["input_size"]) != (d["category"], d["K"], d["seed"], d["input_size"]):
        raise ValueError(f"{dst.name}: the two rows are different jobs")
    for name, metrics in s["variants"].items():
        d["variants"].setdefault(name, {})
        for key, value in metrics.items():
            d["variants"][name].setdefault(key, value)
    lines = [x for x in dst.read_text().splitlines() if x.strip()]
    dst.write_text("\n".join(lines[:-1] + [json.dumps(d)]) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("into")
    ap.add_argument("--only", default="", help="job name prefix")
    args = ap.parse_args(argv)
    src, dst = Path(args.source), Path(args.into)
    n = 0
    for d in sorted(dst.glob(f"{args.only}*.jsonl.k*.npz")):
        s = src / d.name
        if not s.exists():
            continue
        compared, added = merge_npz(s, d)
        job = d.name.split(".jsonl")[0] + ".jsonl"
        merge_jsonl(src / job, dst / job)
        print(f"{d.name}: {compared} arrays equal, {added} added")
        n += 1
    print(f"{n} jobs merged into {dst}")


if __name__ == "__main__":
    main()
