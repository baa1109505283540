"""cuda-python (``cuda.bindings.runtime``) wrapped in owning objects, for the TensorRT backend.

* ``check(result, what)``: cuda-python returns ``(err, *values)``; this raises CudaError naming the
  call and the error, and returns the value(s). Every CUDA call below goes through it.
* ``DeviceBuffer``: one device allocation, grow-only ``resize``, idempotent ``free()``, ``with``.
* ``PinnedBuffer``: page-locked host memory seen as a numpy array; copies are bounds-checked.
* ``Stream`` and ``Event``: one stream for upload -> engine -> kernel -> download; events time it.

cuda-python is imported on first use (pip install 'protospect[gpu]'); this module imports on a
machine without it, and the size arithmetic (``nbytes``) needs nothing.
"""
from __future__ import annotations

import ctypes
import logging
import math

import numpy as np

from protospect._optional import require
from protospect.errors import CudaError
from protospect.gpu import from_properties

log = logging.getLogger(__name__)


def cudart():
    return require("cuda.bindings.runtime", "gpu")


def _code(err) -> int:
    return int(getattr(err, "value", err))


def check(result, what: str = "CUDA call"):
    """Unpack cuda-python's ``(err, *values)``: raise CudaError on a non-zero code, else the value(s)."""
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    code = _code(err)
    if code != 0:
        name = getattr(err, "name", None) or _error_name(err)
        raise CudaError(f"{what} failed: CUDA error {code} ({name}); check the driver (nvidia-smi / tegrastats) "
                        "and that no other process holds the GPU")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _error_name(err) -> str:
    try:
        _, name = cudart().cudaGetErrorName(err)
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return "unknown"


def nbytes(shape, dtype) -> int:
    """Bytes of a dense tensor; dynamic (negative) dimensions must be resolved before allocating."""
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"shape {shape} has a dynamic dimension; set the input shape first")
    return int(math.prod(shape)) * np.dtype(dtype).itemsize


class _FreedOnExit:
    """``with`` support and a finaliser around ``free()`` for the allocations below."""

    _what = "buffer"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()

    def __del__(self):
        try:
            self.free()
        except Exception as err:  # interpreter shutdown or a dead context: say so, never raise from __del__
            log.warning("%s of %d bytes not freed cleanly: %s", self._what, getattr(self, "size", 0), err)


class DeviceBuffer(_FreedOnExit):
    """One device allocation. ``resize`` only grows, so equal or smaller tensors never reallocate."""

    _what = "device buffer"

    def __init__(self, size: int = 0):
        self.ptr = 0
        self.size = 0
        if size:
            self.resize(size)

    def resize(self, size: int) -> "DeviceBuffer":
        if size > self.size:
            self.free()
            self.ptr = int(check(cudart().cudaMalloc(size), f"cudaMalloc({size})"))
            self.size = size
        return self

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr, self.size = self.ptr, 0, 0
            check(cudart().cudaFree(ptr), "cudaFree")


class PinnedBuffer(_FreedOnExit):
    """Page-locked host memory of ``size`` bytes; ``view(dtype, shape)`` is a numpy array on it."""

    _what = "pinned buffer"

    def __init__(self, size: int):
        self.size = int(size)
        self.ptr = int(check(cudart().cudaMallocHost(self.size), f"cudaMallocHost({self.size})"))
        self._bytes = np.frombuffer((ctypes.c_uint8 * self.size).from_address(self.ptr), dtype=np.uint8)

    def view(self, dtype, shape) -> np.ndarray:
        need = nbytes(shape, dtype)
        if need > self.size:
            raise ValueError(f"a {np.dtype(dtype)} array of shape {tuple(shape)} ({need} bytes) does not fit "
                             f"a pinned buffer of {self.size} bytes")
        return self._bytes[:need].view(dtype).reshape(shape)

    def write(self, array: np.ndarray) -> None:
        """Copy ``array`` in (bounds-checked), so the upload reads from pinned memory."""
        self.view(array.dtype, array.shape)[...] = array

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            self._bytes = None
            check(cudart().cudaFreeHost(ptr), "cudaFreeHost")


class Stream:
    """A CUDA stream; ``handle`` is the integer TensorRT's execute_async_v3 takes."""

    def __init__(self):
        self._stream = check(cudart().cudaStreamCreate(), "cudaStreamCreate")
        self.handle = int(self._stream)

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def upload(self, device: DeviceBuffer | int, host: PinnedBuffer, size: int) -> None:
        rt = cudart()
        dst = device.ptr if isinstance(device, DeviceBuffer) else int(device)
        check(rt.cudaMemcpyAsync(dst, host.ptr, size, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream),
              "cudaMemcpyAsync host->device")

    def download(self, host: PinnedBuffer, device: DeviceBuffer | int, size: int) -> None:
        rt = cudart()
        src = device.ptr if isinstance(device, DeviceBuffer) else int(device)
        check(rt.cudaMemcpyAsync(host.ptr, src, size, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream),
              "cudaMemcpyAsync device->host")

    def destroy(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            check(cudart().cudaStreamDestroy(stream), "cudaStreamDestroy")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()


class Event:
    """A CUDA event pair user: ``record(stream)`` then ``Event.elapsed_ms(start, end)`` after a sync."""

    def __init__(self):
        self._event = check(cudart().cudaEventCreate(), "cudaEventCreate")

    def record(self, stream: Stream) -> None:
        check(cudart().cudaEventRecord(self._event, stream._stream), "cudaEventRecord")

    @staticmethod
    def elapsed_ms(start: "Event", end: "Event") -> float:
        return float(check(cudart().cudaEventElapsedTime(start._event, end._event), "cudaEventElapsedTime"))

    def destroy(self) -> None:
        if self._event is not None:
            event, self._event = self._event, None
            check(cudart().cudaEventDestroy(event), "cudaEventDestroy")


def device_identity(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of ``device``, for the engine sidecar check."""
    gpu = from_properties(check(cudart().cudaGetDeviceProperties(device), "cudaGetDeviceProperties"))
    return gpu.name, gpu.compute_capability
