"""ONNX Runtime CPU sessions for checks and benchmarks (export side; the runtime has its own backend)."""
from __future__ import annotations

from pathlib import Path

import onnx

from protospect._optional import require


def cpu_session(onnx_path: str | Path, threads: int = 2):
    ort = require("onnxruntime", extra="runtime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def graph_precision(onnx_path: str | Path) -> str:
    model = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}.get("protospect.precision", "fp32")
