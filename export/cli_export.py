"""`protospect export ART --out model.onnx [--fp16 | --int8 [--int8-calib-images DIR]] [--bank-as-input] [--split] [--check]
[--batch N|dynamic]`.

Precision table (anything else is refused, never rewritten):

| graph              | fp32 | --fp16 | --int8 |
| full (default)     | yes  | yes    | yes    |
| --bank-as-input    | yes  | yes    | no: INT8 needs the bank inside the graph |
| --split            | yes  | features.onnx converted, head.onnx stays fp32 |
| --batch N|dynamic  | yes  | no     | no (and not with --split / --bank-as-input) |
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from protospect.errors import ConfigError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", type=Path, metavar="ART", help="artifact directory from `protospect train`")
    target = parser.add_mutually_exclusive_group(required=True)  # neither or both: a usage error (exit 2)
    target.add_argument("--out", type=Path, default=None, help="model.onnx (or a folder with --split)")
    target.add_argument("--triton-repo", type=Path, default=None, metavar="DIR",
                        help="a Triton model repository instead: DIR/<name>/<version>/model.onnx and DIR/<name>/config.pbtxt")
    # --fp16/--int8 exclusion is checked in validate(): a one-line error and exit 1 like the other refusals
    parser.add_argument("--fp16", action="store_true", help="float16 graph, float32 distance/top-k/head, same I/O")
    parser.add_argument("--int8", action="store_true", help="INT8 Q/DQ graph (explicit quantization) calibrated on normal images")
    # INT8 calibration (activation ranges) is not `protospect calibrate` (the OK/NG threshold): its flags say
    # int8-calib; the short --calib* spellings are kept as aliases
    parser.add_argument("--int8-calib-images", "--calib", dest="int8_calib_images", type=Path, default=None, metavar="DIR",
                        help="folder of normal images for --int8 (default: the artifact's shots)")
    parser.add_argument("--int8-calib-method", "--calib-method", dest="int8_calib_method",
                        choices=["minmax", "entropy", "percentile"], default="minmax")
    parser.add_argument("--int8-calib-augment", "--calib-augment", dest="int8_calib_augment", type=int, default=None, metavar="N",
                        help="augmented copies per INT8 calibration image (default: enough for 32 frames, at least 4)")
    parser.add_argument("--float-tail", type=int, default=1, metavar="N",
                        help="learned layers after the top-k kept float under --int8 (default 1)")
    parser.add_argument("--float-stem", type=int, default=0, metavar="N",
                        help="also keep the first N learned layers from the input float under --int8 (default 0: "
                             "--float-stride already covers them for every backbone here, see docs/export.md)")
    parser.add_argument("--float-stride", type=int, default=4, metavar="N",
                        help="learned layers before the top-k with output stride <= N kept float under --int8 (default 4; 0: off)")
    parser.add_argument("--int8-calib-anomalies", "--calib-anomalies", dest="int8_calib_anomalies", type=int, default=4, metavar="N",
                        help="NSA pseudo-anomaly copies per INT8 calibration image, added when the graph has an INT8 "
                             "decoder after the top-k (PCSNet; default 4, 0: normal frames only)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="INT8 cache folder, keyed by sha256 of graph, images and settings (default: none)")
    parser.add_argument("--bank-as-input", action="store_true", help="the prototype bank becomes graph input 'bank'")
    parser.add_argument("--split", action="store_true", help="features.onnx + bank.npy + head.onnx in the --out folder")
    parser.add_argument("--batch", default=None, metavar="N|dynamic",
                        help="batch dimension of the full FP32 graph: a static N, or 'dynamic' (default 1; dynamic with "
                             "--triton-repo); checked per item against batch 1 on the shots' views (or --check-images)")
    triton = parser.add_argument_group("with --triton-repo (issue 18; export/triton_repo.py)")
    triton.add_argument("--name", default=None, metavar="PART", help="Triton model name (default: the artifact folder's name)")
    triton.add_argument("--version", default="1", metavar="V", help="Triton model version (default 1)")
    triton.add_argument("--triton-backend", choices=["onnxruntime", "python", "tensorrt_plan"], default="onnxruntime",
                        help="onnxruntime: platform onnxruntime_onnx (GPU servers); python: a model.py running the graph "
                             "with ONNX Runtime (CPU servers); tensorrt_plan: the engine given with --triton-engine")
    triton.add_argument("--triton-engine", type=Path, default=None, metavar="FILE",
                        help="tensorrt_plan: an engine from `protospect build-engine` (with its .json sidecar) built from "
                             "this artifact's graph; copied to model.plan (static shapes: max_batch_size 0)")
    triton.add_argument("--triton-python-env", default=None, metavar="DIR",
                        help="python: the venv/conda env the Python backend runs model.py in (EXECUTION_ENV_PATH; it needs "
                             "numpy<2 and onnxruntime), as a path on the server")
    triton.add_argument("--triton-max-batch", type=int, default=8, metavar="N", help="max_batch_size (default 8)")
    triton.add_argument("--triton-instances", type=int, default=1, metavar="N", help="instance_group count (default 1)")
    parser.add_argument("--deepstream", type=Path, default=None, metavar="DIR",
                        help="also write DIR/config_infer_primary_protospect.txt, a DeepStream nvinfer config for the graph "
                             "(unverified here; docs/runtime.md [fleet])")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--check", action="store_true", help="parity with PyTorch under ONNX Runtime CPU on the shots")
    parser.add_argument("--check-images", type=Path, default=None, metavar="DIR",
                        help="images for --check (default: 2 augmented views of each shot)")


def validate(args: argparse.Namespace) -> None:
    if args.fp16 and args.int8:
        raise ConfigError("--fp16 and --int8 are two precisions; choose one")
    if args.int8_calib_images is not None and not args.int8:
        raise ConfigError("--int8-calib-images / --calib only applies to --int8")
    if args.int8 and args.bank_as_input:
        raise ConfigError("--int8 with --bank-as-input is not supported: INT8 needs the bank inside the graph")
    if args.split and args.bank_as_input:
        raise ConfigError("--split already keeps the bank outside (bank.npy); drop --bank-as-input")
    from protospect.contract import parse_batch

    if args.deepstream is not None and (args.split or args.bank_as_input or args.triton_repo is not None):
        raise ConfigError("--deepstream is for the full graph with --out (not --split, --bank-as-input or --triton-repo)")
    if args.triton_repo is not None:
        _validate_triton(args)
    elif args.triton_engine is not None or args.triton_python_env is not None:
        raise ConfigError("--triton-engine and --triton-python-env are for --triton-repo")
    try:
        args.batch = parse_batch("1" if args.batch is None else args.batch)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if args.batch != 1:
        for flag, on in (("--split", args.split), ("--bank-as-input", args.bank_as_input), ("--fp16", args.fp16),
                         ("--int8", args.int8)):
            if on:
                raise ConfigError(f"--batch {args.batch} is supported for the full FP32 graph only; drop {flag} or --batch")
    if not args.split and args.out.suffix != ".onnx":
        raise ConfigError(f"--out {args.out} should end in .onnx (or add --split for a folder)")


def _validate_triton(args: argparse.Namespace) -> None:
    """--triton-repo: a dynamic-batch FP32 full graph at DIR/<name>/<version>/model.onnx."""
    from protospect.export.triton_repo import check_name, check_version, model_paths

    for flag, on in (("--split", args.split), ("--bank-as-input", args.bank_as_input), ("--fp16", args.fp16), ("--int8", args.int8)):
        if on:
            raise ConfigError(f"--triton-repo exports the full FP32 graph with a dynamic batch; drop {flag}")
    if args.batch is not None and str(args.batch).strip().lower() != "dynamic":
        raise ConfigError(f"--triton-repo needs --batch dynamic (Triton forms the batches); drop --batch {args.batch}")
    if args.triton_max_batch < 1 or args.triton_instances < 1:
        raise ConfigError("--triton-max-batch and --triton-instances must be >= 1")
    if (args.triton_backend == "tensorrt_plan") != (args.triton_engine is not None):
        raise ConfigError("--triton-backend tensorrt_plan and --triton-engine FILE (from build-engine) go together")
    if args.triton_python_env is not None and args.triton_backend != "python":
        raise ConfigError("--triton-python-env is for --triton-backend python")
    args.batch = "dynamic"
    args.name = check_name(args.name if args.name is not None else args.artifact.resolve().name)
    args.version = check_version(args.version)
    args.out = model_paths(args.triton_repo, args.name, args.version)[0]


def run(args: argparse.Namespace) -> int:
    validate(args)
    if args.triton_engine is not None:
        return _plan_repo(args)
    from protospect.export.op_census import census
    from protospect.training.artifact import artifact_sha256, load_artifact

    model, manifest = load_artifact(args.artifact)
    precision = "fp16" if args.fp16 else "int8" if args.int8 else "fp32"
    for path in _write_graphs(args, model, manifest, artifact_sha256(args.artifact), precision):
        print(census(path).format())
    if args.deepstream is not None:
        from protospect.export.deepstream import write_config

        print(f"wrote {write_config(args.out, args.deepstream)} (DeepStream nvinfer; unverified here)")
    if args.check and not _check(args, model, manifest, precision):
        print("protospect export: parity check FAILED (graph kept for inspection)", file=sys.stderr)
        return 1
    if args.batch != 1:
        if not _check_batch(args, model, manifest):
            print("protospect export: batch parity check FAILED (graph kept for inspection)", file=sys.stderr)
            return 1
        if args.triton_repo is not None:
            from protospect.export.triton_repo import write_repo

            for path in write_repo(args.out, args.triton_repo, args.name, args.version, backend=args.triton_backend,
                                   max_batch_size=args.triton_max_batch, instances=args.triton_instances,
                                   python_env=args.triton_python_env):
                print(f"wrote {path}")
            print(f"use:  tritonserver --model-repository {args.triton_repo}   (model '{args.name}', version {args.version})")
            return 0
        if args.batch != "dynamic":  # the single-camera ORT backend refuses it (runtime/backends/ort.py)
            print(f"use:  {args.out} takes {args.batch} frames at once: for `protospect serve` (one camera) export with "
                  "--batch 1 (the default) or --batch dynamic; batched multi-camera serve is upcoming (issue 18)")
            return 0
    if args.bank_as_input:  # protospect serve feeds `image` only and refuses this graph
        print(f"use:  {args.out} takes the prototype bank as input 'bank' (same M x D as exported): feed it from "
              "your own ONNX Runtime or TensorRT code; for protospect serve export without --bank-as-input")
        return 0
    onnx_in = args.out / "features.onnx" if args.split else args.out
    engine = args.out / "features.engine" if args.split else args.out.with_suffix(".engine")
    print(f"next: protospect build-engine {onnx_in} --out {engine}   (on the target device)")
    print(f"      protospect serve {args.out} --source CAMERA_OR_FOLDER   (ONNX Runtime)")
    return 0


def _plan_repo(args: argparse.Namespace) -> int:
    """--triton-backend tensorrt_plan: the engine (built from this artifact's graph) and its config, no ONNX."""
    import json

    from protospect.contract import KEY_ARTIFACT_SHA256, sidecar_path
    from protospect.export.triton_repo import write_plan_repo
    from protospect.training.artifact import artifact_sha256

    side = sidecar_path(args.triton_engine)
    meta = json.loads(side.read_text()).get("onnx_metadata", {}) if side.is_file() else {}
    if side.is_file() and meta.get(KEY_ARTIFACT_SHA256) != artifact_sha256(args.artifact):
        raise ConfigError(f"--triton-engine {args.triton_engine} was built from another artifact than {args.artifact}")
    for path in write_plan_repo(args.triton_engine, args.triton_repo, args.name, args.version,
                                instances=args.triton_instances):
        print(f"wrote {path}")
    return 0


def _write_graphs(args, model, manifest: dict, sha: str, precision: str) -> list[Path]:
    """The FP32 graph(s), converted to ``precision`` when asked; returns the .onnx files written."""
    from protospect.export import onnx_export

    with tempfile.TemporaryDirectory(prefix="protospect-export-") as tmp:
        if args.split:
            paths = onnx_export.split_from_model(model, model.meta, model.calibration, args.out, artifact_sha256=sha, opset=args.opset)
            if precision != "fp32":
                fp32_features = Path(tmp) / "features.fp32.onnx"
                paths["features"].replace(fp32_features)
                _convert(args, precision, fp32_features, paths["features"], manifest)
            return [paths["features"], paths["head"]]
        fp32_path = args.out if precision == "fp32" else Path(tmp) / "model.fp32.onnx"
        onnx_export.onnx_from_model(model, model.meta, model.calibration, fp32_path, artifact_sha256=sha,
                                    bank_as_input=args.bank_as_input, opset=args.opset, batch=args.batch)
        if precision != "fp32":
            _convert(args, precision, fp32_path, args.out, manifest)
        return [args.out]


def _check(args, model, manifest: dict, precision: str) -> bool:
    """Parity report on --check-images or augmented views of the shots; False when FP32 misses its goal."""
    if args.split:
        log.warning("--check compares the full graph; the split graphs are covered by tests/export")
        return True
    from protospect.calibration.data_reader import images_in
    from protospect.metadata import input_hw_of
    from protospect.export.parity import parity_from_model, shot_views
    from protospect.export.shots import shot_paths

    images = (images_in(args.check_images) if args.check_images
              else shot_views(shot_paths(manifest), input_hw_of(model.meta)))
    report = parity_from_model(model, args.out, images)
    print(report.format())
    return precision != "fp32" or report.ok


def _check_images(args, model, manifest: dict):
    from protospect.calibration.data_reader import images_in
    from protospect.export.parity import load_images, shot_views
    from protospect.export.shots import shot_paths
    from protospect.metadata import input_hw_of

    size = input_hw_of(model.meta)
    if args.check_images:
        return list(load_images(images_in(args.check_images), size))
    return shot_views(shot_paths(manifest), size)


def _check_batch(args, model, manifest: dict) -> bool:
    """Per-item parity of the batched graph with a batch-1 export of the same model (export/batch_parity.py)."""
    from protospect.export import onnx_export
    from protospect.export.batch_parity import batch_parity

    with tempfile.TemporaryDirectory(prefix="protospect-batch1-") as tmp:
        single = onnx_export.onnx_from_model(model, model.meta, model.calibration, Path(tmp) / "batch1.onnx",
                                             opset=args.opset).path
        report = batch_parity(args.out, single, _check_images(args, model, manifest),
                              float(model.calibration["threshold"]), args.batch)
    print(report.format())
    return report.ok


def _convert(args, precision: str, fp32_path: Path, out_path: Path, manifest: dict) -> None:
    if precision == "fp16":
        from protospect.export.fp16 import fp16_from_onnx

        _, kept = fp16_from_onnx(fp32_path, out_path)
        print(f"fp16: {len(kept)} nodes kept float32 (distance/top-k and head)")
        return
    from protospect.calibration.augment import AugmentConfig
    from protospect.calibration.data_reader import images_in
    from protospect.calibration.quantize import int8_from_onnx
    from protospect.export.shots import shot_paths

    images = images_in(args.int8_calib_images) if args.int8_calib_images else shot_paths(manifest)
    result = int8_from_onnx(fp32_path, out_path, images,
                            augment=AugmentConfig(per_image=args.int8_calib_augment, pseudo_anomalies=args.int8_calib_anomalies),
                            method=args.int8_calib_method, float_tail=args.float_tail, float_stem=args.float_stem,
                            float_stride=args.float_stride, cache_dir=args.cache_dir)
    print(f"int8: calibrated on {len(images)} images -> {result.n_frames} frames with augmentations"
          f"{' and pseudo anomalies' if result.with_anomalies else ''}"
          f"{' (cache hit)' if result.cache_hit else ''}; {len(result.qdq.quantized)} layers INT8, "
          f"{len(result.float_nodes)} nodes float (Q/DQ placement checked for TensorRT)")
