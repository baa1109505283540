"""ONNX Runtime backend: CUDA provider when this onnxruntime has it, else the CPU provider."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from protospect._optional import require
from protospect.errors import ArtifactError
from protospect.runtime.backends.base import BANK_INPUT_HINT, BackendBase, check_output_shapes
from protospect.runtime.model_info import ModelInfo

log = logging.getLogger(__name__)

INPUT = "image"
OUTPUTS = ("anomaly_map", "image_score")


def pick_providers(available: list[str], device: str = "auto") -> list[str]:
    """CUDA first when asked for or available (CPU stays as the fallback ORT needs), else CPU only."""
    if device == "cpu" or "CUDAExecutionProvider" not in available:
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def available_cores() -> int:
    """Cores this process may run on (a container or taskset can give fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def low_latency_options(ort, threads: int | None = None):
    """Session options for batch-1 latency: all cores on one op, no inter-op pool, full graph fusion."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or available_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # warnings from ORT's own optimiser are noise for the operator
    return so


def open_session(path: Path, *, device: str = "auto", threads: int | None = None):
    """An InferenceSession on ``path``; ArtifactError naming the file when it is missing or not ONNX."""
    ort = require("onnxruntime", "runtime")
    if not Path(path).is_file():
        raise ArtifactError(f"ONNX model not found: {path}")
    providers = pick_providers(ort.get_available_providers(), device)
    try:
        return ort.InferenceSession(str(path), sess_options=low_latency_options(ort, threads), providers=providers)
    except Exception as err:  # ORT raises its own Fail/InvalidGraph types
        raise ArtifactError(f"ONNX Runtime cannot load {path}: {err} (re-export it with `protospect export`)") from err


def session_info(session, path: Path) -> ModelInfo:
    return ModelInfo.from_metadata(dict(session.get_modelmeta().custom_metadata_map), str(path))


class OrtBackend(BackendBase):
    name = "ort"

    def __init__(self, path: str | Path, *, device: str = "auto", threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.device = device
        self.threads = threads
        self._session = None
        self.providers: list[str] = []

    def activate(self) -> None:
        self._session = open_session(self.path, device=self.device, threads=self.threads)
        self.providers = self._session.get_providers()
        self.info = session_info(self._session, self.path)
        check_io(self._session, self.path, self.info.input_hw)
        log.info("onnxruntime session on %s (%s), %s", self.path.name, ", ".join(self.providers), self.info.describe())

    def deactivate(self) -> None:
        self._session = None

    def infer_impl(self, image_u8: np.ndarray):
        amap, score = self._session.run(list(OUTPUTS), {INPUT: image_u8[None]})
        return amap, score

    @property
    def batchable(self) -> bool:
        """Whether the graph takes any batch size (export --batch dynamic): the multi-camera serve batches it."""
        shape = self._session.get_inputs()[0].shape if self._session is not None else [1]
        return bool(shape) and not isinstance(shape[0], int)

    def infer_batch(self, images_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [n,H,W,3] -> (float32 maps [n,H,W], float64 scores [n]) in one run of a dynamic-batch graph."""
        if self._session is None:
            raise RuntimeError("ort backend used outside `with backend:`")
        h, w = self.info.input_hw
        amap, score = self._session.run(list(OUTPUTS), {INPUT: np.ascontiguousarray(images_u8, dtype=np.uint8)})
        n = images_u8.shape[0]
        return np.asarray(amap, np.float32).reshape(n, h, w), np.asarray(score, np.float64).reshape(n)

    def describe(self) -> dict:
        return {**super().describe(), "providers": self.providers, "model": str(self.path)}


def check_io(session, path: Path, hw: tuple[int, int]) -> None:
    """The contract's I/O (uint8 [1,H,W,3] -> anomaly_map, image_score), or an ArtifactError saying what differs."""
    h, w = hw
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    if "bank" in inputs:
        raise ArtifactError(f"{path}: {BANK_INPUT_HINT}")
    if INPUT not in inputs or inputs[INPUT].type != "tensor(uint8)":
        got = ", ".join(f"{i.name}:{i.type}" for i in inputs.values())
        raise ArtifactError(f"{path} must take input '{INPUT}' uint8 [1,{h},{w},3] (NHWC RGB); it takes {got}")
    shape = inputs[INPUT].shape
    if shape and isinstance(shape[0], int) and shape[0] > 1:  # export --batch N (issue 18); dynamic batch is fed 1 frame
        raise ArtifactError(f"{path} is a batch-{shape[0]} graph (protospect export --batch {shape[0]}) but serve feeds one "
                            "camera's frame at a time: re-export with --batch 1 (the default) or --batch dynamic "
                            "(serve --config batches a dynamic graph across cameras)")
    if len(shape) != 4 or any(isinstance(d, int) and d != want for d, want in zip(shape, (1, h, w, 3))):
        raise ArtifactError(f"{path}: input '{INPUT}' has shape {shape}, metadata says [1,{h},{w},3]")
    extra = [name for name in inputs if name != INPUT]
    if extra:  # infer() feeds `image` only: ORT would fail on the first frame
        raise ArtifactError(f"{path} takes input(s) {', '.join(extra)} besides '{INPUT}'; protospect feeds '{INPUT}' only")
    missing = [o for o in OUTPUTS if o not in outputs]
    if missing:
        raise ArtifactError(f"{path} lacks output(s) {', '.join(missing)} (has {', '.join(sorted(outputs))})")
    check_output_shapes(outputs, hw, str(path))
