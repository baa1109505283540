"""ONNX Runtime CPU sessions for checks and benchmarks (export side; the runtime has its own backend)."""
from __future__ import annotations

from pathlib import Path

import onnx

from protospect.contract import KEY_PRECISION
from protospect._optional import require


def cpu_session(onnx_path: str | Path, threads: int = 2, *, simulate_qdq: bool = False):
    """A CPU session. ``simulate_qdq`` runs Q/DQ nodes as float ops (graph optimisations off): the
    arithmetic TensorRT's explicit quantization emulates. Without it ORT fuses them into its own
    INT8 kernels, whose s8s8 path saturates on x86 CPUs without VNNI (measured with every layer
    INT8: 56 % feature error on an AVX2 machine vs 6.6 % simulated), so ORT CPU INT8 accuracy need
    not be TensorRT's.
    """
    ort = require("onnxruntime", extra="runtime")
    opts = ort.SessionOptions()
    if simulate_qdq:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def graph_precision(onnx_path: str | Path) -> str:
    model = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}.get(KEY_PRECISION, "fp32")
