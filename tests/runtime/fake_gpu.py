"""Stand-ins for `tensorrt` and `cuda.bindings.runtime` that follow their Python APIs, with host memory
as "device" memory and ONNX Runtime doing the engine's work. They let the TensorRT backends' data
path (sidecar, I/O plan, buffers, copies, tensor addresses, stream, events) run on a CPU machine;
they say nothing about TensorRT itself, which the gpu/trt-marked tests cover on a GPU."""
from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import json
import types

import numpy as np


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class _Handle(int):
    pass


# A fake device clock: each copy and each engine run advances it by a fixed cost, and an event records
# its value, so cudaEventElapsedTime measures exactly the work enqueued between two events.
CLOCK = types.SimpleNamespace(ms=0.0)
COPY_MS = 1.0      # one cudaMemcpyAsync
ENGINE_MS = 0.25   # one execute_async_v3


class _Event:
    def __init__(self):
        self.at: float | None = None


def make_cudart(cc=(8, 7), name=b"Fake Orin"):
    """A cuda.bindings.runtime look-alike; ``allocs`` tracks live allocations so tests can check frees."""
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.__spec__ = importlib.machinery.ModuleSpec("cuda.bindings.runtime", None)
    rt.allocs = {}
    rt.calls = []
    ok = cudaError_t.cudaSuccess

    def _alloc(n):
        buf = ctypes.create_string_buffer(max(1, int(n)))
        ptr = ctypes.addressof(buf)
        rt.allocs[ptr] = buf
        return ok, ptr

    def _free(ptr):
        if int(ptr) not in rt.allocs:
            return (cudaError_t.cudaErrorInvalidValue,)
        del rt.allocs[int(ptr)]
        return (ok,)

    def memcpy_async(dst, src, n, kind, stream):
        rt.calls.append(("memcpy", int(kind)))
        CLOCK.ms += COPY_MS
        ctypes.memmove(int(dst), int(src), int(n))
        return (ok,)

    rt.cudaError_t = cudaError_t
    rt.cudaMemcpyKind = cudaMemcpyKind
    rt.cudaMalloc = _alloc
    rt.cudaMallocHost = _alloc
    rt.cudaFree = _free
    rt.cudaFreeHost = _free
    rt.cudaMemcpyAsync = memcpy_async
    rt.cudaStreamCreate = lambda: (ok, _Handle(7))
    rt.cudaStreamSynchronize = lambda s: (ok,)
    rt.cudaStreamDestroy = lambda s: (ok,)
    def record(event, stream):
        event.at = CLOCK.ms
        return (ok,)

    def elapsed(start, end):
        if start.at is None or end.at is None:  # as CUDA: an event never recorded has no time
            return cudaError_t.cudaErrorInvalidValue, 0.0
        return ok, end.at - start.at

    rt.cudaEventCreate = lambda: (ok, _Event())
    rt.cudaEventRecord = record
    rt.cudaEventElapsedTime = elapsed
    rt.cudaEventDestroy = lambda e: (ok,)
    rt.cudaGetErrorName = lambda e: (ok, e.name.encode())
    rt.cudaGetDeviceProperties = lambda d: (ok, types.SimpleNamespace(name=name, major=cc[0], minor=cc[1]))
    return rt


class DataType(enum.Enum):
    FLOAT = np.float32
    HALF = np.float16
    UINT8 = np.uint8
    INT32 = np.int32


class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class FakeEngine:
    """Deserialized from a JSON 'engine': the ONNX path it runs and its I/O tensors."""

    def __init__(self, spec: dict):
        import onnxruntime as ort

        self.session = ort.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
        self.tensors = [(i.name, TensorIOMode.INPUT, i.shape, i.type) for i in self.session.get_inputs()]
        self.tensors += [(o.name, TensorIOMode.OUTPUT, o.shape, o.type) for o in self.session.get_outputs()]

    @property
    def num_io_tensors(self):
        return len(self.tensors)

    def get_tensor_name(self, i):
        return self.tensors[i][0]

    def _t(self, name):
        return next(t for t in self.tensors if t[0] == name)

    def get_tensor_mode(self, name):
        return self._t(name)[1]

    def get_tensor_shape(self, name):
        return tuple(d if isinstance(d, int) else -1 for d in self._t(name)[2])

    def get_tensor_dtype(self, name):
        return {"tensor(float)": DataType.FLOAT, "tensor(uint8)": DataType.UINT8,
                "tensor(float16)": DataType.HALF}[self._t(name)[3]]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine = engine
        self.addresses = {}
        self.shapes = {}
        self.runs = 0

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shapes.get(name, self.engine.get_tensor_shape(name))

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = int(ptr)
        return True

    def _array(self, name, shape):
        dtype = np.dtype(self.engine.get_tensor_dtype(name).value)
        n = int(np.prod(shape)) * dtype.itemsize
        return np.frombuffer((ctypes.c_uint8 * n).from_address(self.addresses[name]), dtype=dtype).reshape(shape)

    def execute_async_v3(self, stream_handle):
        assert set(self.addresses) == {t[0] for t in self.engine.tensors}, "every I/O tensor needs an address"
        feed = {n: self._array(n, self.shapes[n]).copy() for n, mode, _, _ in self.engine.tensors if mode == TensorIOMode.INPUT}
        outs = self.engine.session.run(None, feed)
        for (name, mode, _, _), value in zip([t for t in self.engine.tensors if t[1] == TensorIOMode.OUTPUT], outs):
            self._array(name, value.shape)[...] = value
        self.runs += 1
        CLOCK.ms += ENGINE_MS
        return True


def make_nvrtc_and_driver(version=(12, 6), working=True):
    """cuda.bindings.nvrtc and cuda.bindings.driver look-alikes, as far as the split-TensorRT path's check goes
    (launcher.unavailable_reason: the bindings import and nvrtcVersion answers). working=False: the bindings
    import but the NVRTC library is missing, as cuda-python reports it (an error from the first call)."""
    nvrtc = types.ModuleType("cuda.bindings.nvrtc")
    nvrtc.__spec__ = importlib.machinery.ModuleSpec("cuda.bindings.nvrtc", None)

    def nvrtc_version():
        if not working:
            raise RuntimeError('Function "nvrtcVersion" not found (libnvrtc.so.12: cannot open shared object file)')
        return (0, *version)

    nvrtc.nvrtcVersion = nvrtc_version
    driver = types.ModuleType("cuda.bindings.driver")
    driver.__spec__ = importlib.machinery.ModuleSpec("cuda.bindings.driver", None)
    return nvrtc, driver


def make_tensorrt(version="10.3.0.30"):
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version
    trt.TensorIOMode = TensorIOMode
    trt.DataType = DataType
    trt.nptype = lambda dt: dt.value

    class Logger:
        WARNING = 2

        def __init__(self, level=2):
            self.level = level

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes):
            try:
                return FakeEngine(json.loads(data))
            except (ValueError, KeyError):
                return None

    trt.Logger = Logger
    trt.Runtime = Runtime
    return trt


def write_fake_engine(engine_path, onnx_path, *, trt_version="10.3.0.30", cc="8.7"):
    """A JSON 'engine' naming the ONNX it runs, plus the sidecar build-engine would write."""
    import onnxruntime as ort

    engine_path.write_text(json.dumps({"onnx": str(onnx_path)}))
    meta = dict(ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map)
    sidecar = {"tensorrt_version": trt_version, "gpu_name": "Fake Orin", "compute_capability": cc,
               "onnx_sha256": "", "onnx_metadata": meta}
    from protospect.contract import sidecar_path

    sidecar_path(engine_path).write_text(json.dumps(sidecar))
    return engine_path
