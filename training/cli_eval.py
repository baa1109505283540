"""`protospect eval`: the few-shot protocol over shots and seeds -> results.json, results.md, plots.

    protospect eval --data DIR --category C [C ...] --method patchcore --shots 1 2 4 8 --seeds 0 1 2 --out DIR

One model per (category, K, seed), trained on the K sampled good images only and evaluated once;
nothing is selected on test data. Several categories append to the same results.json.
"""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from protospect.errors import ConfigError
from protospect.training.cli_train import add_method_arguments, check_out_writable, config_overrides_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="MVTec-layout root (with --category) or one category folder")
    p.add_argument("--category", nargs="*", default=None, help="one or more categories under --data")
    p.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8], metavar="K", help="shot counts (default 1 2 4 8)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="sampling/training seeds (default 0 1 2)")
    p.add_argument("--out", required=True, type=Path, help="output folder for results.json, results.md and PNGs")
    p.add_argument("--batch-size", type=int, default=4, help="test images per forward pass (default 4)")
    p.add_argument("--no-plots", action="store_true", help="skip the heatmap grid and ROC PNGs")
    add_method_arguments(p, default_method="patchcore")


def command_line(args: argparse.Namespace) -> str:
    """The canonical command that reproduces this run (recorded in results.json)."""
    parts = ["protospect", "eval", "--data", str(args.data)]
    if args.category:
        parts += ["--category", *args.category]
    parts += ["--method", args.method, "--preset", args.preset, "--shots", *map(str, args.shots),
              "--seeds", *map(str, args.seeds), "--out", str(args.out)]
    if args.size is not None:
        parts += ["--size", str(args.size)]
    if args.backbone_weights is not None:
        parts += ["--backbone-weights", str(args.backbone_weights)]
    for s in args.settings:
        parts += ["--set", s]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from protospect.training.fewshot import evaluate  # noqa: PLC0415 (torch only when the command runs)
    from protospect.training.methods import get_method  # noqa: PLC0415
    from protospect.training.results import RESULTS_JSON  # noqa: PLC0415

    if any(k < 1 for k in args.shots):
        raise ConfigError(f"--shots must all be >= 1 (got {args.shots})")
    if len(set(args.seeds)) != len(args.seeds) or len(set(args.shots)) != len(args.shots):
        raise ConfigError("--shots and --seeds must not repeat a value")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1 (got {args.batch_size})")
    overrides = config_overrides_from_args(args)
    get_method(args.method)  # an unknown method fails before any data is read
    precheck(args, overrides)  # every category, image, mask and --out: before minutes of work, not after
    command = command_line(args)
    _quiet_method_bars(args.method)
    for category in args.category or [None]:
        records = evaluate(args.data, category, args.method, args.shots, args.seeds, args.preset, args.out,
                           config_overrides=overrides or None, batch_size=args.batch_size, command=command,
                           plots=not args.no_plots)
        for r in records:
            print(f"{r['category']} {r['method']} K={r['K']}: image AUROC {_mean_pm_std(r['image_auroc'])}, "
                  f"pixel AUROC {_mean_pm_std(r['pixel_auroc'])}, AUPRO {_mean_pm_std(r['aupro'])}, "
                  f"fit {r['train_seconds'][0]:.1f} s")
    print(f"wrote {args.out / RESULTS_JSON}")
    return 0


def _quiet_method_bars(method: str) -> None:
    """A method whose fit draws its own bar (progress=True by default, e.g. pcsnet) gets progress=False when
    stderr is not a terminal: evaluate() calls fit without it, and that bar would fill a redirected log."""
    import functools  # noqa: PLC0415

    from protospect.training.cli_train import progress_kwargs  # noqa: PLC0415
    from protospect.training.methods import get_method  # noqa: PLC0415

    module = get_method(method)
    if progress_kwargs(module.fit).get("progress") is False and not isinstance(module.fit, functools.partial):
        module.fit = functools.partial(module.fit, progress=False)


def _input_size(method: str, preset: str, overrides: dict) -> int | None:
    if "input_size" in overrides:
        return int(overrides["input_size"])
    from protospect.training.methods import get_method  # noqa: PLC0415

    cfg = getattr(get_method(method), "PRESETS", {}).get(preset)
    size = getattr(cfg, "input_size", None)
    return int(size) if isinstance(size, int) else None


def precheck(args: argparse.Namespace, overrides: dict) -> None:
    """Fail in seconds, not after minutes: every category exists with enough shots, every train/test image
    decodes and every mask matches its image (decoded at the model size into the loader's cache, so the
    evaluation does not decode them again), and --out is writable."""
    from protospect.errors import DataError  # noqa: PLC0415
    from protospect.training.data import MVTecCategory, load_image, load_item  # noqa: PLC0415

    check_out_writable(args.out)
    size = _input_size(args.method, args.preset, overrides) or 64
    categories = [MVTecCategory(args.data, c) for c in (args.category or [None])]  # a missing one: DataError now
    for cat in categories:
        n_good = len(set(cat.train_good))
        if max(args.shots) > n_good:
            raise DataError(f"K={max(args.shots)} but only {n_good} images in {cat.root / 'train' / 'good'}")
        for path in cat.train_good:
            load_image(path, size)
        for item in cat.test:
            load_item(item, size)


def _mean_pm_std(value) -> str:
    return "n/a" if value is None else f"{value[0]:.1f} ± {value[1]:.1f}"
