"""Torch-free binding of the fused top-k kernel for the runtime: numpy + cuda-python only.

The kernels in ``proto_topk.cuh`` (and the headers it includes) are compiled with NVRTC for the running GPU (the cubin is cached
on disk, so later starts skip the compile) and launched with the driver API on raw device pointers
and a caller-given CUDA stream, so the kernel can sit between two TensorRT engines on one stream::

    topk = ProtoTopK(bank_numpy)                    # (M, D) float16/float32, copied to the GPU once
    topk.reserve(Q, k)                              # allocate scratch before any CUDA-graph capture
    topk.run(q_ptr, Q, k, out_dist_ptr, out_idx_ptr, stream)   # out_idx_ptr may be 0

Launch geometry and the workspace layout mirror ``proto_topk.cu`` (``launch`` and ``carve``); the
tile sizes and shared-memory bytes are read from the compiled module (``proto_topk_config``), so
they cannot drift from the kernel. Every CUDA/NVRTC call goes through ``check``. The kernel's build and
cubin cache live in kernel_build.py, the launch geometry and workspace layout in launch_plan.py (both
re-exported here).
"""
from __future__ import annotations

import ctypes
import logging

import numpy as np

from protospect.cpp_ext.kernel_build import SOURCE as SOURCE
from protospect.cpp_ext.kernel_build import _bindings, _cached_cubin, check, kernel_arch
from protospect.cpp_ext.kernel_build import build_defines as build_defines
from protospect.cpp_ext.kernel_build import compile_cubin as compile_cubin
from protospect.cpp_ext.kernel_build import compile_ptx as compile_ptx
from protospect.cpp_ext.kernel_build import cuda_include_dirs as cuda_include_dirs
from protospect.cpp_ext.kernel_build import kernel_headers as kernel_headers
from protospect.cpp_ext.kernel_build import unavailable_reason as unavailable_reason
from protospect.cpp_ext.kernel_config import CONFIG
from protospect.cpp_ext.kernel_config import cand_cap as cand_cap
from protospect.cpp_ext.launch_plan import _ceil_div, plan_splits, workspace_layout
from protospect.cpp_ext.launch_plan import candidate_slots as candidate_slots
from protospect.cpp_ext.launch_plan import effective_splits as effective_splits
from protospect.cpp_ext.launch_plan import segment_length as segment_length
from protospect.errors import ConfigError
from protospect.gpu import from_properties

log = logging.getLogger(__name__)

DTYPES = {"float32": 0, "float16": 1}
MAX_K = CONFIG["kMaxK"]
_AUX_THREADS = CONFIG["kAuxThreads"]  # bank-norm and merge_min kernels


# ---- the launcher ----------------------------------------------------------------------------------

class _Args:
    """A ctypes ``void**`` kernel-argument array that keeps its values alive."""

    def __init__(self, *values):
        self.values = values
        self.array = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])

    @property
    def address(self) -> int:
        return ctypes.addressof(self.array)


def _ptr(x) -> ctypes.c_void_p:
    return ctypes.c_void_p(int(x) if x else None)


class ProtoTopK:
    """k smallest squared L2 distances of queries to a fixed prototype bank, on raw device pointers.

    ``bank`` is a numpy (M, D) array (copied to the GPU and owned here) or a device pointer (int)
    with ``M``, ``D`` and ``dtype`` ("float16" | "float32"); the caller then keeps that memory alive.
    Uses the CUDA context current on this thread (the primary context by default, which is also the
    one TensorRT and the runtime API use).
    """

    def __init__(self, bank=None, M: int | None = None, D: int | None = None, dtype: str | None = None,
                 device: int | None = None):
        self._driver, self._rt, _ = _bindings()
        self._owned: list[int] = []
        self._bank_ptr = self._sqnorm_ptr = 0
        self._ws_ptr, self._ws_bytes = 0, 0
        self._calls: dict[tuple, list[tuple]] = {}  # run()'s launch plans by their arguments
        self.M = self.D = 0
        self.dtype = None
        if device is not None:
            check(self._rt.cudaSetDevice(device), f"cudaSetDevice({device})")
        check(self._rt.cudaFree(0), "cudaFree(0) (creating the primary context)")
        dev = check(self._rt.cudaGetDevice(), "cudaGetDevice")
        attr = self._rt.cudaDeviceAttr
        major, minor = from_properties(check(self._rt.cudaGetDeviceProperties(dev), "cudaGetDeviceProperties")).major_minor
        self.sm_count = check(self._rt.cudaDeviceGetAttribute(attr.cudaDevAttrMultiProcessorCount, dev), "SM count")
        self.arch = f"sm_{major}{minor}"
        self._module = check(self._driver.cuModuleLoadData(_cached_cubin(kernel_arch(major, minor))),
                             "cuModuleLoadData")
        self._fn = {name: check(self._driver.cuModuleGetFunction(self._module, name.encode()),
                                f"cuModuleGetFunction({name})")
                    for name in ("proto_topk_bank_sqnorm_f32", "proto_topk_bank_sqnorm_f16",
                                 "proto_topk_partial_f32", "proto_topk_partial_f16", "proto_topk_partial_f16_k1",
                                 "proto_topk_merge_splits", "proto_topk_merge_min")}
        self._read_config()
        if bank is not None:
            self.set_bank(bank, M, D, dtype)

    # -- setup --

    def _read_config(self) -> None:
        ptr, size = check(self._driver.cuModuleGetGlobal(self._module, b"proto_topk_config"), "cuModuleGetGlobal")
        cfg = np.zeros(int(size) // 4, dtype=np.int32)
        check(self._driver.cuMemcpyDtoH(cfg.ctypes.data, ptr, int(size)), "reading proto_topk_config")
        cfg = [int(x) for x in cfg]
        keys = ("block_q", "block_m", "threads", "smem", "blocks_per_sm")
        # per dtype code (0 fp32, 1 fp16): the two partial kernels tile differently
        self._geo = {0: dict(zip(keys, cfg[0:5])), 1: dict(zip(keys, cfg[5:10]))}
        self.max_k, self.max_splits, self.merge_threads, self.bound_atoms = cfg[10:14]
        attr = self._driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        for code, name in ((0, "proto_topk_partial_f32"), (1, "proto_topk_partial_f16"), (1, "proto_topk_partial_f16_k1")):
            check(self._driver.cuFuncSetAttribute(self._fn[name], attr, self._geo[code]["smem"]),
                  f"allowing {self._geo[code]['smem']} B of shared memory for {name} (needs an sm_80+ GPU)")

    def _malloc(self, nbytes: int) -> int:
        ptr = int(check(self._rt.cudaMalloc(max(nbytes, 1)), f"cudaMalloc({nbytes})"))
        self._owned.append(ptr)
        return ptr

    def _free(self, ptr: int) -> None:
        if ptr in self._owned:
            self._owned.remove(ptr)
            check(self._rt.cudaFree(ptr), "cudaFree")

    def set_bank(self, bank, M: int | None = None, D: int | None = None, dtype: str | None = None,
                 stream: int = 0) -> None:
        """Install the (M, D) prototype bank and precompute its squared norms (once per bank)."""
        self._calls.clear()  # launch plans carry the old bank's pointers and shape
        if isinstance(bank, np.ndarray):
            if bank.ndim != 2 or bank.dtype not in (np.float16, np.float32):
                raise ConfigError(f"bank must be a (M, D) float16/float32 array, got {bank.dtype} {bank.shape}")
            bank = np.ascontiguousarray(bank)
            M, D, dtype = bank.shape[0], bank.shape[1], str(bank.dtype)
            self._free(self._bank_ptr)
            ptr = self._malloc(bank.nbytes)
            check(self._rt.cudaMemcpy(ptr, bank.ctypes.data, bank.nbytes,
                                      self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice), "copying the bank")
        else:
            if M is None or D is None or dtype is None:
                raise ConfigError("set_bank(device_pointer, M, D, dtype): M, D and dtype are required with a pointer")
            ptr = int(bank)
            if ptr == 0:
                raise ConfigError("set_bank got a null device pointer: pass the bank's device address or a numpy array")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype {dtype!r} is not supported; use one of {sorted(DTYPES)}")
        if dtype == "float16" and int(self.arch[3:]) < 80:
            raise ConfigError(f"the float16 kernel needs tensor-core instructions of sm_80+, this GPU is {self.arch}: "
                              "use a float32 bank")
        if M < 1 or D < 1:
            raise ConfigError(f"the bank must hold at least one prototype of at least one dim, got M={M}, D={D}")
        self._bank_ptr, self.M, self.D, self.dtype = ptr, int(M), int(D), dtype
        self._free(self._sqnorm_ptr)
        self._sqnorm_ptr = self._malloc(4 * self.M)
        name = "proto_topk_bank_sqnorm_f16" if dtype == "float16" else "proto_topk_bank_sqnorm_f32"
        args = _Args(_ptr(self._bank_ptr), ctypes.c_int(self.M), ctypes.c_int(self.D), _ptr(self._sqnorm_ptr))
        self._launch(name, (_ceil_div(self.M, _AUX_THREADS // 32), 1, 1), (_AUX_THREADS, 1, 1), 0, stream, args)
        check(self._rt.cudaStreamSynchronize(stream), "computing the prototype norms")

    @property
    def _geometry(self) -> dict[str, int]:
        return self._geo[DTYPES[self.dtype]]

    def _plan(self, Q: int, k: int, splits: int | None) -> int:
        geo = self._geometry
        if splits is None:
            return plan_splits(Q, self.M, k, self.sm_count, geo["block_q"], geo["block_m"], self.max_splits,
                               geo["blocks_per_sm"])
        return effective_splits(self.M, splits, geo["block_m"], self.max_splits)

    def reserve(self, Q: int, k: int, want_indices: bool = True, splits: int | None = None) -> dict[str, int]:
        """Grow the scratch for (Q, k) now: do this before capturing ``run`` into a CUDA graph.
        Returns the workspace layout (byte offsets) the call will use. (want_indices: kept for
        callers; the layout does not depend on it.)"""
        lay = workspace_layout(Q, k, self._plan(Q, k, splits), self.dtype, self.bound_atoms)
        if lay["bytes"] > self._ws_bytes:
            self._calls.clear()  # their arguments point into the old workspace
            self._free(self._ws_ptr)
            self._ws_ptr, self._ws_bytes = self._malloc(lay["bytes"]), lay["bytes"]
        return lay

    # -- the call --

    def _check_call(self, Q: int, k: int) -> None:
        if not self._bank_ptr:
            raise ConfigError("ProtoTopK.run before set_bank: give the prototype bank first")
        if Q < 0:
            raise ConfigError(f"Q={Q} queries: must be >= 0")
        if not 1 <= k <= min(self.M, self.max_k):
            raise ConfigError(f"k={k} must be in [1, {min(self.M, self.max_k)}] (bank of {self.M} prototypes, "
                              f"kernel limit {self.max_k})")

    def run(self, q_ptr: int, Q: int, k: int, out_dist_ptr: int, out_idx_ptr: int = 0, stream: int = 0,
            splits: int | None = None, debug_scores_ptr: int = 0) -> None:
        """Enqueue on ``stream``: out_dist (Q, k) float32 ascending, out_idx (Q, k) int32 (0 = not wanted).

        ``q_ptr``: (Q, D) queries on the device, same dtype as the bank. Nothing is synchronised.
        ``debug_scores_ptr``: optional (Q, M) float32 buffer receiving every ranking score |m|^2 - 2 q.m.
        """
        self._check_call(Q, k)
        if Q == 0:
            return
        # A station calls with the same buffers every frame: the launch plan (split count, workspace
        # offsets, kernel argument arrays) is built once per set of arguments and replayed, which takes
        # the host's share of a call from ~38 to ~3 us (studies/launcher_host_overhead.py).
        key = (q_ptr, Q, k, out_dist_ptr, out_idx_ptr, splits, debug_scores_ptr)
        steps = self._calls.get(key)
        if steps is None:
            steps = self._steps(q_ptr, Q, k, out_dist_ptr, out_idx_ptr, splits, debug_scores_ptr)
            if len(self._calls) >= 64:  # many distinct buffers: start over rather than grow
                self._calls.clear()
            self._calls[key] = steps
        for step in steps:
            if step[0] == "memset":
                check(self._driver.cuMemsetD8Async(step[1], 0xFF, step[2], int(stream)),
                      "resetting the shared-bound atoms")
            else:
                self._launch(*step[1:5], stream, step[5])

    def _steps(self, q_ptr: int, Q: int, k: int, out_dist_ptr: int, out_idx_ptr: int, splits: int | None,
               debug_scores_ptr: int) -> list[tuple]:
        """What one call enqueues, in order: ("memset", ptr, bytes) (the atoms, 0xff) and ("launch", kernel,
        grid, block, shared bytes, _Args). Reserves the workspace first (a reallocation drops older plans)."""
        splits = self._plan(Q, k, splits)
        lay = self.reserve(Q, k, bool(out_idx_ptr), splits)
        ws = self._ws_ptr
        single = splits == 1
        qnorm = 0 if single else ws + lay["qnorm"]
        count = 0 if single else ws + lay["cand_count"]
        code, geo = DTYPES[self.dtype], self._geometry
        steps: list[tuple] = []
        args = _Args(_ptr(q_ptr), _ptr(self._bank_ptr), _ptr(self._sqnorm_ptr), ctypes.c_int(Q), ctypes.c_int(self.M),
                     ctypes.c_int(self.D), ctypes.c_int(k),
                     ctypes.c_int(segment_length(self.M, splits, geo["block_m"])), _ptr(ws + lay["cand_val"]),
                     _ptr(ws + lay["cand_idx"]), _ptr(count), _ptr(out_dist_ptr), _ptr(out_idx_ptr), _ptr(qnorm),
                     ctypes.c_int(1 if single else 0), _ptr(debug_scores_ptr))
        bound = ws + lay["bound_keys"] if "bound_keys" in lay else 0
        if self.bound_atoms and code == 1:  # shared-bound build: the fp16 kernels take the atoms (0: none)
            if bound:  # every atom unpublished before the splits start
                steps.append(("memset", bound, 4 * Q * self.bound_atoms))
            args = _Args(*args.values, _ptr(bound))
        name = "proto_topk_partial_f32" if code == 0 else "proto_topk_partial_f16_k1" if k == 1 else "proto_topk_partial_f16"
        steps.append(("launch", name, (_ceil_div(Q, geo["block_q"]), splits, 1), (geo["threads"], 1, 1), geo["smem"],
                      args))
        if single:
            return steps
        if lay["slots"] == 1:  # fp16 k = 1: each split left one (value, index) per query
            args = _Args(_ptr(ws + lay["cand_val"]), _ptr(ws + lay["cand_idx"]), _ptr(qnorm), ctypes.c_int(Q),
                         ctypes.c_int(splits), _ptr(out_dist_ptr), _ptr(out_idx_ptr))
            steps.append(("launch", "proto_topk_merge_min", (_ceil_div(Q, _AUX_THREADS), 1, 1), (_AUX_THREADS, 1, 1), 0,
                          args))
            return steps
        args = _Args(_ptr(ws + lay["cand_val"]), _ptr(ws + lay["cand_idx"]), _ptr(count), _ptr(qnorm), ctypes.c_int(Q),
                     ctypes.c_int(k), ctypes.c_int(splits), ctypes.c_int(lay["slots"]), _ptr(out_dist_ptr),
                     _ptr(out_idx_ptr))
        if self.bound_atoms:  # shared-bound build: the merge takes the atoms too (0: none)
            args = _Args(*args.values, _ptr(bound))
        steps.append(("launch", "proto_topk_merge_splits", (Q, 1, 1), (self.merge_threads, 1, 1), 0, args))
        return steps

    def _launch(self, name: str, grid, block, smem: int, stream: int, args: _Args) -> None:
        check(self._driver.cuLaunchKernel(self._fn[name], *grid, *block, smem, int(stream), args.address, 0),
              f"launching {name}")

    # -- numpy convenience (tests, one-off use) --

    def knn_sqdist(self, queries: np.ndarray, k: int, return_indices: bool = True):
        """Host round trip: numpy (Q, D) -> numpy (Q, k) distances [, indices]. Synchronises."""
        queries = np.ascontiguousarray(queries, dtype=self.dtype)
        if queries.ndim != 2 or queries.shape[1] != self.D:
            raise ConfigError(f"queries must be (Q, {self.D}), got {queries.shape}")
        Q = queries.shape[0]
        self._check_call(Q, k)
        h2d, d2h = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        q_ptr, d_ptr = self._malloc(queries.nbytes), self._malloc(4 * Q * k)
        i_ptr = self._malloc(4 * Q * k) if return_indices else 0
        try:
            check(self._rt.cudaMemcpy(q_ptr, queries.ctypes.data, queries.nbytes, h2d), "copying the queries")
            self.run(q_ptr, Q, k, d_ptr, i_ptr, 0)
            check(self._rt.cudaDeviceSynchronize(), "running the top-k kernel")
            dist = np.empty((Q, k), np.float32)
            check(self._rt.cudaMemcpy(dist.ctypes.data, d_ptr, dist.nbytes, d2h), "copying distances back")
            if not return_indices:
                return dist
            idx = np.empty((Q, k), np.int32)
            check(self._rt.cudaMemcpy(idx.ctypes.data, i_ptr, idx.nbytes, d2h), "copying indices back")
            return dist, idx
        finally:
            for p in (q_ptr, d_ptr, i_ptr):
                if p:
                    self._free(p)

    # -- lifetime --

    def close(self) -> None:
        """Free everything this object allocated and unload the module (idempotent)."""
        for ptr in list(getattr(self, "_owned", [])):
            self._free(ptr)
        self._bank_ptr = self._sqnorm_ptr = self._ws_ptr = 0
        self._ws_bytes = 0
        self._calls = {}
        if getattr(self, "_module", None) is not None:
            check(self._driver.cuModuleUnload(self._module), "cuModuleUnload")
            self._module = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception as err:  # noqa: BLE001 (never raise from a finaliser; say what leaked)
            log.warning("ProtoTopK.close failed in __del__: %s", err)
