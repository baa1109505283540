"""`protospect train`: K good images -> a model artifact directory (docs/contracts.md section 5).

    protospect train --data DIR --category C --shots K --seed S --preset edge --method pcsnet --out ART

Prints the training time and where the artifact went. Works for every registered method
(patchcore builds its bank, pcsnet trains).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from protospect.errors import ConfigError


def add_method_arguments(p: argparse.ArgumentParser, default_method: str) -> None:
    """Options shared by `train` and `eval`: which method/preset and the few settings a user overrides."""
    p.add_argument("--method", default=default_method, help=f"registered method name (default {default_method})")
    p.add_argument("--preset", default="edge", help="method preset: edge (Lite0; pcsnet at 512 px, the others at 256) or paper (WRN-50)")
    p.add_argument("--size", type=int, default=None, help="model input size S (default: the preset's)")
    p.add_argument("--backbone-weights", type=Path, default=None,
                   help="state_dict file for the backbone (needed for wide_resnet50_2 / resnet18 offline)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="override one method setting (VALUE parsed as JSON when it can be), repeatable")


def config_overrides_from_args(args: argparse.Namespace) -> dict:
    """--size, --backbone-weights and every --set KEY=VALUE as the method's config_overrides dict."""
    overrides: dict = {}
    if args.size is not None:
        if args.size < 32:
            raise ConfigError(f"--size {args.size} is too small (use 32 or more, e.g. 256)")
        overrides["input_size"] = int(args.size)
    if args.backbone_weights is not None:
        if not args.backbone_weights.is_file():
            raise ConfigError(f"--backbone-weights file not found: {args.backbone_weights}")
        overrides["backbone_weights"] = str(args.backbone_weights)
    overrides.update(parse_settings(args.settings))
    method = getattr(args, "method", None)
    if method is not None:
        check_setting_types(method, getattr(args, "preset", "edge"), overrides)
    return overrides


def parse_settings(items: list[str], flag: str = "--set") -> dict:
    """KEY=VALUE strings -> dict; VALUE parsed as JSON when it can be, else kept as a string.

    The one --set parser for `train` and `eval` (and any command that takes method settings)."""
    settings: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, got '{item}'")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value  # a plain string
    return settings


_KIND = {bool: "true or false", int: "an integer", float: "a number", str: "a string", tuple: "a JSON list", list: "a JSON list"}


def _annotated_type(annotation) -> type | None:
    """bool/int/float/str/tuple from a dataclass field's annotation ("float", "int | None", "tuple[int, ...]")."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    head = text.replace("Optional[", "").split("|")[0].split("[")[0].strip().lower()
    return {"bool": bool, "int": int, "float": float, "str": str, "tuple": tuple, "list": list}.get(head)


def check_setting_types(method: str, preset: str, settings: dict) -> None:
    """Refuse a setting whose value cannot be the type of the method's preset value, naming the key and the type.

    Unknown keys and presets are left to the method (it lists the valid ones); None-valued defaults take anything.
    """
    import dataclasses  # noqa: PLC0415

    from protospect.training.methods import get_method  # noqa: PLC0415

    presets = getattr(get_method(method), "PRESETS", {})
    cfg = presets.get(preset)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        return
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for key, value in settings.items():
        if key not in fields:
            continue
        default = getattr(cfg, key)
        want = _annotated_type(fields[key].type) or (type(default) if default is not None else None)
        if want is None or value is None:
            continue
        ok = (isinstance(value, bool) if want is bool
              else isinstance(value, int) and not isinstance(value, bool) if want is int
              else isinstance(value, (int, float)) and not isinstance(value, bool) if want is float
              else isinstance(value, (list, tuple)) if want in (list, tuple)
              else isinstance(value, str) if want is str else True)
        if not ok:
            kind = _KIND.get(want, want.__name__)
            raise ConfigError(f"--set {key}={json.dumps(value) if not isinstance(value, str) else value}: {method} setting "
                              f"'{key}' takes {kind} (preset {preset}: {json.dumps(default) if not isinstance(default, tuple) else list(default)})")


def progress_kwargs(fit) -> dict:
    """{"progress": False} for a method's fit that draws its own bar, when stderr is not a terminal."""
    import inspect  # noqa: PLC0415

    from protospect.progress import progress_enabled  # noqa: PLC0415

    return {} if "progress" not in inspect.signature(fit).parameters else {"progress": progress_enabled()}


FLAT_STD = 2.0  # grey levels: below this an image is (near-)constant, e.g. all black


def degenerate_shots(images, names) -> str | None:
    """One line saying which shots are (near-)constant or identical to another shot, or None.

    A model trained on a black frame, or on K copies of one picture, learns nothing about the part."""
    import hashlib  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    flat = [f"{n} (std {float(np.std(img)):.1f})" for img, n in zip(images, names) if float(np.std(img)) < FLAT_STD]
    seen: dict[str, str] = {}
    same = []
    for img, n in zip(images, names):
        digest = hashlib.sha256(np.ascontiguousarray(img).tobytes() + str(img.shape).encode()).hexdigest()
        if digest in seen:
            same.append(f"{n} = {seen[digest]}")
        else:
            seen[digest] = n
    parts = []
    if flat:
        parts.append(f"{len(flat)} of {len(images)} are (near-)constant: {', '.join(flat)}")
    if same:
        parts.append(f"{len(same)} are identical to another shot: {', '.join(same)}")
    if not parts:
        return None
    return "shots: " + "; ".join(parts) + " - the model learns little from them (check the camera and the files)"


def warn_degenerate_shots(images, names) -> None:
    import logging  # noqa: PLC0415

    line = degenerate_shots(images, names)
    if line:
        logging.getLogger("protospect.train").warning(line)


def check_out_writable(out: Path, what: str = "--out") -> None:
    """``out`` must be (or become) a folder we can write: a probe file created and removed in it, or in its
    nearest existing parent (nothing is left behind)."""
    import tempfile  # noqa: PLC0415

    if out.exists() and not out.is_dir():
        raise ConfigError(f"{what} {out} is a file; a folder is written there")
    probe = out
    while not probe.exists() and probe != probe.parent:  # creates nothing: probes the nearest existing folder
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what} {out}: {probe} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".protospect-probe-"):
            pass
    except OSError as err:
        raise ConfigError(f"{what} {out} cannot be written ({err.strerror or err}); choose another folder") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="MVTec-layout root (with --category) or one category folder")
    p.add_argument("--category", default=None, help="category folder under --data (omit when --data is the category)")
    p.add_argument("--shots", required=True, type=int, metavar="K", help="number of good images to learn from")
    p.add_argument("--seed", type=int, default=0, help="which K images are drawn, and the training seed")
    p.add_argument("--out", required=True, type=Path, metavar="ART", help="artifact directory to write")
    add_method_arguments(p, default_method="pcsnet")


def train_artifact(shot_paths: list[Path], *, method: str, preset: str, seed: int, overrides: dict, out: Path,
                   data: dict, holdout_rgb: list | None = None):
    """Fit ``method`` on the shot image files and save the artifact: the one path `train` and `register` share.
    ``holdout_rgb``: good images that are not shots, for a fit that chooses on them. Returns (model, artifact
    folder, train seconds)."""
    from protospect.imageio import read_rgb  # noqa: PLC0415 (heavy imports only when the command runs)
    from protospect.training.artifact import save_artifact  # noqa: PLC0415
    from protospect.training.methods import get_method  # noqa: PLC0415
    from protospect.training.methods.base import holdout_kwargs  # noqa: PLC0415

    fitter = get_method(method)
    shots_rgb = [read_rgb(p) for p in shot_paths]
    warn_degenerate_shots(shots_rgb, [Path(p).name for p in shot_paths])
    t0 = time.perf_counter()
    model = fitter.fit(shots_rgb, preset=preset, seed=seed, config_overrides=overrides, **progress_kwargs(fitter.fit),
                       **holdout_kwargs(fitter.fit, holdout_rgb))
    train_seconds = time.perf_counter() - t0
    saved = save_artifact(model, out, shots=shot_paths, seed=seed, data=data,
                          extra={"train_seconds": round(train_seconds, 3)})
    return model, saved, train_seconds


def run(args: argparse.Namespace) -> int:
    from protospect.training.artifact import artifact_sha256  # noqa: PLC0415 (heavy imports only when the command runs)
    from protospect.imageio import read_rgb  # noqa: PLC0415
    from protospect.training.data import MVTecCategory, holdout_good, sample_shots  # noqa: PLC0415
    from protospect.training.methods import get_method  # noqa: PLC0415
    from protospect.training.methods.base import takes_holdout  # noqa: PLC0415

    overrides = config_overrides_from_args(args)
    fitter = get_method(args.method)  # an unknown method is refused before any data is read
    check_out_writable(args.out)  # a read-only or file --out is refused before the fit, not after it
    cat = MVTecCategory(args.data, args.category)
    shot_paths = sample_shots(cat.train_good, args.shots, args.seed)
    holdout = ([read_rgb(p) for p in holdout_good(cat.train_good, shot_paths, args.seed)]
               if takes_holdout(fitter.fit) else None)
    overrides = {"category": cat.name, **overrides}  # pcsnet/prn pick their pseudo-anomaly table row with it
    model, out, train_seconds = train_artifact(shot_paths, method=args.method, preset=args.preset, seed=args.seed,
                                               overrides=overrides, out=args.out,
                                               data={"root": str(cat.root.parent), "category": cat.name},
                                               holdout_rgb=holdout)
    print(f"trained {args.method} ({args.preset}, S={model.meta['input_size']}) on K={args.shots} shots of "
          f"{cat.name}, seed {args.seed}: train time {train_seconds:.1f} s")
    if "geometry_choice" in model.meta and "reason" in model.meta["geometry_choice"]:
        print(f"geometry auto: {model.meta['geometry_choice']['reason']}")
    print(f"threshold {model.calibration['threshold']:.5g} (from the shots only); "
          f"artifact {out} (sha256 {artifact_sha256(out)[:16]})")
    return 0
