"""ONNX parity of a fully trained method on a dev category (the figures quoted in docs/methods.md).

usage: python scripts/method_parity.py --data ../shared/data --category deeppcb_44000 --method prn [--shots 2]
       [--seed 0] [--set KEY=VALUE ...]
Trains with the method's defaults (plus --set overrides), exports the FP32 graph, and compares PyTorch
with ONNX Runtime CPU over the scored test images (bpgg: all but its defective supports): map
difference relative to the map range (goal <= 1e-4), OK/NG decisions, image AUROC of both.
"""
import argparse
import json
import tempfile
from pathlib import Path

from protospect.export.onnx_export import onnx_from_model
from protospect.export.parity import parity_from_model
from protospect.imageio import read_rgb
from protospect.training.data import MVTecCategory, sample_shots
from protospect.training.methods import get_method


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--category", required=True)
    ap.add_argument("--method", required=True)
    ap.add_argument("--shots", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    cat = MVTecCategory(Path(args.data), args.category)
    module = get_method(args.method)
    overrides = {"category": cat.name}
    for item in args.set:
        key, value = item.split("=", 1)
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    items = list(cat.test)
    if hasattr(module, "prepare_eval"):
        overrides, items = module.prepare_eval(cat, args.seed, overrides)
    shots = [read_rgb(p) for p in sample_shots(cat.train_good, args.shots, seed=args.seed)]
    model = module.fit(shots, preset="edge", seed=args.seed, config_overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        graph = onnx_from_model(model, model.meta, model.calibration, Path(tmp) / "model.onnx").path
        report = parity_from_model(model, graph, [t.path for t in items], [t.label for t in items])
    print(f"{args.method} {args.category} K={args.shots} seed={args.seed}, {len(items)} test images")
    print(report.format())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
