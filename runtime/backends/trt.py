"""TensorRT backend (TensorRT 10.3 on JetPack 6 and TensorRT 11): name-based I/O, one stream.

Data path of one infer(): frame -> pinned host buffer -> cudaMemcpyAsync -> execute_async_v3 ->
cudaMemcpyAsync back -> stream sync; CUDA events around the engine give the GPU-only time.

Everything that does not need a GPU is a plain function here, tested without TensorRT:
the sidecar check (an engine only runs on the TensorRT version and compute capability it was
built for), the I/O plan (names from the contract, shapes, byte sizes).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protospect._optional import require
from protospect.contract import (ANOMALY_MAP, IMAGE_SCORE, INPUT, OUTPUTS, SIDECAR_REQUIRED, normalise_cc,
                                 sidecar_path, version_key)
from protospect.errors import ArtifactError, CudaError
from protospect.runtime import cuda
from protospect.runtime.backends.base import BANK_INPUT_HINT, BackendBase, check_output_shapes
from protospect.runtime.model_info import ModelInfo

log = logging.getLogger(__name__)



# ---- sidecar: which TensorRT and GPU built this engine -------------------------------------------

def load_sidecar(engine_path: Path) -> dict:
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise ArtifactError(f"engine sidecar {path} not found; `protospect build-engine` writes it next to the engine "
                            "(rebuild the engine on this device)")
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"engine sidecar {path} is not valid JSON: {err}") from err
    missing = [k for k in SIDECAR_REQUIRED if k not in sidecar]
    if missing:
        raise ArtifactError(f"engine sidecar {path} lacks {', '.join(missing)}; rebuild with `protospect build-engine`")
    return sidecar


def check_engine_bytes(sidecar: dict, data: bytes, where: str) -> None:
    """The engine is the one its sidecar describes (not rebuilt or replaced since `build-engine`)."""
    found, want = hashlib.sha256(data).hexdigest(), str(sidecar["engine_sha256"])
    if found != want:
        raise ArtifactError(f"{where} is not the engine its sidecar describes (sha256 {found[:12]}, sidecar {want[:12]}): "
                            "replaced after `protospect build-engine` (e.g. by trtexec); rebuild it with build-engine")


def check_sidecar(sidecar: dict, trt_version: str, compute_capability, where: str) -> None:
    """Refuse an engine built by another TensorRT version or for another GPU architecture."""
    built_trt, built_cc = str(sidecar["tensorrt_version"]), normalise_cc(sidecar["compute_capability"])
    here_cc = normalise_cc(compute_capability)
    if version_key(built_trt) != version_key(trt_version):
        raise ArtifactError(f"{where} was built with TensorRT {built_trt} but this is TensorRT {trt_version}; "
                            "rebuild it here: protospect build-engine MODEL.onnx (or use --backend ort with the ONNX)")
    if built_cc != here_cc:
        gpu = sidecar.get("gpu_name", "another GPU")
        raise ArtifactError(f"{where} was built for compute capability {built_cc} ({gpu}) but this GPU is {here_cc}; "
                            "rebuild the engine on this device: protospect build-engine MODEL.onnx")


# ---- I/O plan: tensor names, shapes and sizes ---------------------------------------------------

@dataclass(frozen=True)
class TensorSpec:
    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return cuda.nbytes(self.shape, self.dtype)


def plan_io(specs: list[TensorSpec], inputs: dict[str, tuple], outputs: tuple[str, ...], where: str,
            optional_outputs: tuple[str, ...] = ()) -> dict[str, TensorSpec]:
    """Match an engine's tensors against the names the contract fixes; resolve dynamic input dims.

    ``inputs`` maps input name -> the concrete shape the runtime will feed. Outputs must be
    concrete once inputs are (the caller re-reads them from the context after set_input_shape).
    ``optional_outputs`` are planned when the engine has them (the split graph's ``guide``).
    Any other output is an error: TensorRT needs an address for every I/O tensor.
    """
    by_name = {s.name: s for s in specs}
    plan: dict[str, TensorSpec] = {}
    for name, shape in inputs.items():
        spec = by_name.get(name)
        if spec is None or not spec.is_input:
            raise ArtifactError(f"{where} has no input tensor '{name}' (inputs: {_names(specs, True)}); "
                                "it was not exported by `protospect export`")
        if len(spec.shape) != len(shape) or any(d >= 0 and d != w for d, w in zip(spec.shape, shape)):
            raise ArtifactError(f"{where}: input '{name}' has shape {spec.shape}, the runtime feeds {tuple(shape)}")
        plan[name] = TensorSpec(name, True, tuple(int(d) for d in shape), spec.dtype)
    for name in outputs:
        spec = by_name.get(name)
        if spec is None or spec.is_input:
            raise ArtifactError(f"{where} has no output tensor '{name}' (outputs: {_names(specs, False)})")
        plan[name] = spec
    for name in optional_outputs:
        if name in by_name and not by_name[name].is_input:
            plan[name] = by_name[name]
    extra = [s.name for s in specs if s.name not in plan]
    if "bank" in extra:
        raise ArtifactError(f"{where}: {BANK_INPUT_HINT}")
    if extra:
        raise ArtifactError(f"{where} has tensors the runtime does not know: {', '.join(extra)} "
                            f"(expected inputs {', '.join(inputs)}; outputs {', '.join(outputs + optional_outputs)})")
    return plan


def _names(specs, is_input):
    return ", ".join(s.name for s in specs if s.is_input == is_input) or "none"


# ---- one deserialized engine with device buffers for each tensor -------------------------------

class TrtEngine:
    """Deserializes an engine (after the sidecar check) and gives every I/O tensor a device buffer.

    ``addresses`` lets a caller point a tensor at memory it owns (the split path chains engines
    and the top-k kernel through device memory without host copies).
    """

    def __init__(self, path: Path, inputs: dict[str, tuple], outputs: tuple[str, ...],
                 optional_outputs: tuple[str, ...] = ()):
        self.path = Path(path)
        self.inputs = inputs
        self.outputs = outputs
        self.optional_outputs = optional_outputs
        self.plan: dict[str, TensorSpec] = {}
        self.buffers: dict[str, cuda.DeviceBuffer] = {}
        self.sidecar: dict = {}
        self._engine = self._context = None

    def load(self) -> None:
        trt = require("tensorrt", "trt")
        if not self.path.is_file():
            raise ArtifactError(f"TensorRT engine not found: {self.path}")
        self.sidecar = load_sidecar(self.path)
        gpu, cc = cuda.device_identity()
        check_sidecar(self.sidecar, trt.__version__, cc, str(self.path))
        data = self.path.read_bytes()
        check_engine_bytes(self.sidecar, data, str(self.path))
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise ArtifactError(f"TensorRT {trt.__version__} could not deserialize {self.path} on {gpu}; rebuild it here")
        self._context = self._engine.create_execution_context()
        specs = []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            specs.append(TensorSpec(
                name=name,
                is_input=self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                shape=tuple(self._engine.get_tensor_shape(name)),
                dtype=np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))),
            ))
        plan = plan_io(specs, self.inputs, self.outputs, str(self.path), self.optional_outputs)
        for name, spec in plan.items():
            if spec.is_input:
                self._context.set_input_shape(name, spec.shape)
        for name, spec in list(plan.items()):  # outputs are concrete now that every input shape is set
            if not spec.is_input:
                plan[name] = TensorSpec(name, False, tuple(self._context.get_tensor_shape(name)), spec.dtype)
        self.plan = plan
        for name, spec in plan.items():
            self.buffers[name] = cuda.DeviceBuffer(spec.nbytes)
            self.bind(name, self.buffers[name].ptr)

    def bind(self, name: str, ptr: int) -> None:
        if not self._context.set_tensor_address(name, int(ptr)):
            raise CudaError(f"{self.path}: set_tensor_address('{name}') was refused")

    def enqueue(self, stream: cuda.Stream) -> None:
        if not self._context.execute_async_v3(stream.handle):
            raise CudaError(f"{self.path}: execute_async_v3 failed (see the TensorRT log above)")

    def free(self) -> None:
        for buf in self.buffers.values():
            buf.free()
        self.buffers = {}
        self._context = self._engine = None


class TrtBackend(BackendBase):
    name = "trt"

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self._engine: TrtEngine | None = None
        self._stream = self._pinned_in = self._pinned_map = self._pinned_score = None
        self._events = ()

    def activate(self) -> None:
        sidecar = load_sidecar(self.path)  # the metadata first: it gives (H, W) for the input shape
        self.info = ModelInfo.from_metadata(sidecar["onnx_metadata"], str(sidecar_path(self.path)))
        h, w = self.info.input_hw
        self._engine = TrtEngine(self.path, {INPUT: (1, h, w, 3)}, OUTPUTS)
        try:
            self._engine.load()
            plan = self._engine.plan
            check_output_shapes({n: plan[n].shape for n in OUTPUTS}, (h, w), str(self.path))
            self._stream = cuda.Stream()
            self._pinned_in = cuda.PinnedBuffer(plan[INPUT].nbytes)
            self._pinned_map = cuda.PinnedBuffer(plan[ANOMALY_MAP].nbytes)
            self._pinned_score = cuda.PinnedBuffer(plan[IMAGE_SCORE].nbytes)
            self._events = (cuda.Event(), cuda.Event())
        except Exception:
            self.deactivate()
            raise
        log.info("TensorRT engine %s (TensorRT %s, built on %s), %s", self.path.name,
                 self._engine.sidecar["tensorrt_version"], self._engine.sidecar.get("gpu_name", "?"), self.info.describe())

    def deactivate(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        for event in self._events:
            event.destroy()
        for buf in (self._pinned_in, self._pinned_map, self._pinned_score):
            if buf is not None:
                buf.free()
        if self._engine is not None:
            self._engine.free()
        if self._stream is not None:
            self._stream.destroy()
        self._engine = self._stream = self._pinned_in = self._pinned_map = self._pinned_score = None
        self._events = ()

    def infer_impl(self, image_u8: np.ndarray):
        plan, bufs, stream = self._engine.plan, self._engine.buffers, self._stream
        self._pinned_in.write(image_u8[None])
        stream.upload(bufs[INPUT], self._pinned_in, plan[INPUT].nbytes)
        start, end = self._events
        start.record(stream)
        self._engine.enqueue(stream)
        end.record(stream)
        stream.download(self._pinned_map, bufs[ANOMALY_MAP], plan[ANOMALY_MAP].nbytes)
        stream.download(self._pinned_score, bufs[IMAGE_SCORE], plan[IMAGE_SCORE].nbytes)
        stream.synchronize()
        self.last_device_ms = cuda.Event.elapsed_ms(start, end)
        amap = self._pinned_map.view(plan[ANOMALY_MAP].dtype, plan[ANOMALY_MAP].shape).astype(np.float32)
        score = self._pinned_score.view(plan[IMAGE_SCORE].dtype, plan[IMAGE_SCORE].shape).astype(np.float32)
        return amap, score  # astype copies: the pinned buffers are reused by the next frame

    def describe(self) -> dict:
        d = {**super().describe(), "model": str(self.path)}
        if self._engine is not None:
            d["tensorrt_version"] = self._engine.sidecar.get("tensorrt_version")
        return d
