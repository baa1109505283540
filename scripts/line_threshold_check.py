"""How the shot threshold and the line threshold (`protospect calibrate`) do on an MVTec-layout test set.

usage: python scripts/line_threshold_check.py MODEL.onnx ARTIFACT_DIR DATA_DIR/CATEGORY [--n-good 30] [--seed 0]

Line calibration gets N train/good images that were *not* the model's shots (read from the artifact's
manifest), as a station would see new good parts; the test set is then judged with the model's own
threshold and with the calibrated one: `protospect serve` scores each test folder once, and each score is
judged at both thresholds the way the station does (NG when score >= threshold, or not finite). Prints escape
(defective judged OK) and false-alarm (good judged NG) rates for both. Torch-free: runs in .venv-runtime.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from protospect.cli import main as cli_main
from protospect.runtime.sources import IMAGE_SUFFIXES


def images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def scores_of(model: str, folder: Path, sink: Path) -> np.ndarray:
    """The image score of every image of ``folder``, from the station's own path (serve)."""
    if cli_main(["serve", model, "--source", str(folder), "--sink", str(sink)]) != 0:
        sys.exit(f"serve failed on {folder}")
    recs = [json.loads(line) for line in (sink / "verdicts.jsonl").read_text().splitlines()]
    return np.array([r["score"] for r in recs if "event" not in r])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("artifact", type=Path)
    ap.add_argument("category", type=Path)
    ap.add_argument("--n-good", type=int, default=30, help="train/good images (not shots) for line calibration")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frr", type=float, default=0.05, help="false-reject rate A for the conformal NG threshold (default "
                    "0.05: 30 good parts certify it; 1 %% needs 99)")
    args = ap.parse_args()
    shots = set(json.loads((args.artifact / "manifest.json").read_text())["shots"])
    pool = [p for p in images(args.category / "train" / "good") if p.name not in shots]
    rng = np.random.default_rng(args.seed)
    chosen = [pool[i] for i in sorted(rng.choice(len(pool), size=min(args.n_good, len(pool)), replace=False))]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        good = tmp / "good_parts"
        good.mkdir()
        for p in chosen:
            (good / p.name).symlink_to(p.resolve())
        thr_file = tmp / "line_threshold.json"
        if cli_main(["calibrate", args.model, "--source", str(good), "--out", str(thr_file), "--frr", str(args.frr),
                     "--review-frr", str(args.frr)]) != 0:
            return 1
        rec = json.loads(thr_file.read_text())
        rows = []
        for folder in sorted(p for p in (args.category / "test").iterdir() if p.is_dir()):
            scores = scores_of(args.model, folder, tmp / folder.name)
            for name, thr in (("shots", rec["shot_threshold"]), ("line", rec["threshold"])):
                ng = ~(scores < thr)  # NG when score >= threshold or not a number (pipeline.py)
                rows.append((folder.name, name, int(ng.sum()), ng.size))
    print(f"\n{args.category.name}: {len(chosen)} train/good images (not shots) for calibration; "
          f"shot threshold {rec['shot_threshold']:.4g}, line threshold {rec['threshold']:.4g}")
    print(f"{'test folder':20s} {'threshold':9s} {'NG':>4s} / n")
    for folder, name, ng, n in rows:
        print(f"{folder:20s} {name:9s} {ng:4d} / {n}")
    for name in ("shots", "line"):
        good = [(ng, n) for f, t, ng, n in rows if t == name and f == "good"]
        bad = [(ng, n) for f, t, ng, n in rows if t == name and f != "good"]
        fa = sum(g[0] for g in good) / max(sum(g[1] for g in good), 1)
        esc = 1 - sum(b[0] for b in bad) / max(sum(b[1] for b in bad), 1)
        print(f"{name} threshold: escape {100 * esc:.1f} %, false alarm {100 * fa:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
