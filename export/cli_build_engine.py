"""`protospect build-engine model.onnx --out model.engine [--timing-cache F] [--workspace MB]`."""
from __future__ import annotations

import argparse
from pathlib import Path

from protospect.contract import KEY_PRECISION


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("onnx", type=Path, help="a graph from `protospect export` (FP32, --fp16 or --int8)")
    parser.add_argument("--out", type=Path, default=None, help="engine file (default: the ONNX path with .engine)")
    parser.add_argument("--timing-cache", type=Path, default=None,
                        help="timing cache read before and written after the build (default: timing.cache next to the engine)")
    parser.add_argument("--no-timing-cache", action="store_true", help="build without reading or writing a timing cache")
    parser.add_argument("--workspace", type=int, default=None, metavar="MB", help="builder workspace limit in MiB (default: TensorRT's)")
    parser.add_argument("--trt-verbose", action="store_true", help="TensorRT's verbose build log")


def run(args: argparse.Namespace) -> int:
    from protospect.export.trt_builder import engine_from_onnx

    out = args.out or args.onnx.with_suffix(".engine")
    cache = None if args.no_timing_cache else (args.timing_cache or out.parent / "timing.cache")
    built = engine_from_onnx(args.onnx, out, timing_cache=cache, workspace_mb=args.workspace, verbose=args.trt_verbose)
    meta = built.sidecar_data
    print(f"engine:  {built.engine} ({meta['onnx_metadata'].get(KEY_PRECISION)}, TensorRT "
          f"{meta['tensorrt_version']}, {meta['gpu_name']} sm {meta['compute_capability']})")
    print(f"sidecar: {built.sidecar}")
    if built.timing_cache:
        print(f"timing cache: {built.timing_cache}")
    if "bank" in built.inputs:  # the runtime feeds `image` only and refuses such engines
        print("use:     the engine takes the prototype bank as input 'bank': run it from your own TensorRT code "
              "(protospect serve needs a graph exported without --bank-as-input)")
    else:
        print(f"next:    protospect serve {built.engine} --source CAMERA_OR_FOLDER")
    return 0
