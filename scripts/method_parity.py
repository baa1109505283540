"""ONNX parity of a fully trained method on a dev category (the figures quoted in docs/methods.md).

usage: python scripts/method_parity.py --data ../shared/data --category deeppcb_44000 --method prn [--shots 2]
       [--seed 0] [--preset edge] [--set KEY=VALUE ...]
Trains with the method's defaults (plus --set overrides, as `protospect train` takes them), exports
the FP32 graph, and compares PyTorch with ONNX Runtime CPU over the scored test images (bpgg: all but its defective supports): map
difference relative to the map range (goal <= 1e-4), OK/NG decisions, image AUROC of both.
"""
import argparse
import tempfile

from protospect.export.parity import parity_on_category
from protospect.training.cli_train import add_method_arguments, config_overrides_from_args


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--category", required=True)
    ap.add_argument("--shots", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    add_method_arguments(ap, default_method="pcsnet")  # --method, --preset, --size, --set KEY=VALUE, ...
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report, items = parity_on_category(args.data, args.category, args.method, tmp, args.shots, args.seed,
                                           config_overrides_from_args(args), preset=args.preset)
    print(f"{args.method} {args.category} K={args.shots} seed={args.seed}, {len(items)} test images")
    print(report.format())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
