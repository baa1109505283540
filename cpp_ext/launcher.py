"""Torch-free binding of the fused top-k kernel for the runtime: numpy + cuda-python only.

The kernels in ``proto_topk.cuh`` (and the headers it includes) are compiled with NVRTC for the running GPU (the cubin is cached
on disk, so later starts skip the compile) and launched with the driver API on raw device pointers
and a caller-given CUDA stream, so the kernel can sit between two TensorRT engines on one stream::

    topk = ProtoTopK(bank_numpy)                    # (M, D) float16/float32, copied to the GPU once
    topk.reserve(Q, k)                              # allocate scratch before any CUDA-graph capture
    topk.run(q_ptr, Q, k, out_dist_ptr, out_idx_ptr, stream)   # out_idx_ptr may be 0

Launch geometry and the workspace layout mirror ``proto_topk.cu`` (``launch`` and ``carve``); the
tile sizes and shared-memory bytes are read from the compiled module (``proto_topk_config``), so
they cannot drift from the kernel. Every CUDA/NVRTC call goes through ``check``.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import re
from pathlib import Path

import numpy as np

from protospect._optional import require
from protospect.cpp_ext.kernel_config import CONFIG, KERNEL_HEADERS
from protospect.cpp_ext.kernel_config import cand_cap as cand_cap
from protospect.errors import ConfigError, CudaError
from protospect.gpu import from_properties
from protospect.files import write_atomic

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("proto_topk.cuh")
DTYPES = {"float32": 0, "float16": 1}
MAX_K = CONFIG["kMaxK"]
_WORKSPACE_ALIGN = CONFIG["kWorkspaceAlign"]
_AUX_THREADS = CONFIG["kAuxThreads"]  # bank-norm and merge_min kernels
_CACHE_DIR = Path(os.environ.get("PROTOSPECT_KERNEL_CACHE", Path.home() / ".cache" / "protospect" / "kernels"))


def _bindings():
    return (require("cuda.bindings.driver", "gpu"), require("cuda.bindings.runtime", "gpu"),
            require("cuda.bindings.nvrtc", "gpu"))


def check(result, what: str = "CUDA call"):
    """Unpack cuda-python's ``(err, *values)``; raise CudaError naming the call on a non-zero code."""
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    code = int(getattr(err, "value", err))
    if code != 0:
        name = getattr(err, "name", str(err))
        raise CudaError(f"{what} failed: {name} ({code}); check the GPU with nvidia-smi/tegrastats and that "
                        "the pointers and sizes passed to ProtoTopK are valid device memory")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


# ---- NVRTC ----------------------------------------------------------------------------------------

def kernel_arch(major: int, minor: int) -> str:
    """The arch to compile the kernel for on a GPU of compute capability major.minor.

    Hopper (9.0) gets "sm_90a": its arch-specific wgmma instructions run the fp16 tiles (plain
    sm_90 code would fall back to mma.sync at about half the speed); every other GPU its own sm_XY.
    """
    return "sm_90a" if (major, minor) == (9, 0) else f"sm_{major}{minor}"


def cuda_include_dirs() -> list[str]:
    """Where cuda_fp16.h and mma.h live: $CUDA_HOME/include, /usr/local/cuda/include, or pip's nvidia headers."""
    dirs = []
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            dirs.append(os.path.join(os.environ[env], "include"))
    dirs.append("/usr/local/cuda/include")
    try:
        from cuda import pathfinder  # noqa: PLC0415 (optional helper shipped with cuda-python)

        found = pathfinder.find_nvidia_header_directory("cudart")
        if found:
            dirs.append(str(found))
    except Exception:  # noqa: BLE001 (any failure just means one fewer place to look)
        pass
    return [d for d in dirs if os.path.isfile(os.path.join(d, "mma.h"))]


def _out_buffer(size: int) -> bytes:
    """A fresh bytes object for NVRTC to write into.

    Never ``b" " * size``: for size 1 (an empty log) CPython hands back its cached single-byte
    object, NVRTC overwrites that interpreter-wide singleton, and unrelated code breaks later
    (seen: torch.load failing in the same process). Length >= 2 is always a new object.
    """
    return b"\0" * max(int(size), 2)


def unavailable_reason() -> str | None:
    """None when ProtoTopK can build its kernel here, else a one-line reason: cuda-python's driver and NVRTC
    bindings import, the NVRTC library answers (cuda-python imports without it and fails on the first call),
    and the CUDA headers NVRTC compiles against are found. Needs no GPU and creates no context (the runtime
    asks before it picks the split-TensorRT path); a GPU the kernel cannot run on is found when ProtoTopK
    opens."""
    import importlib  # noqa: PLC0415

    try:
        importlib.import_module("cuda.bindings.driver")
        nvrtc = importlib.import_module("cuda.bindings.nvrtc")
    except ImportError as err:
        return f"cuda-python's driver/NVRTC bindings do not import ({err}): pip install 'protospect[gpu]'"
    try:
        check(nvrtc.nvrtcVersion(), "nvrtcVersion")
    except Exception as err:  # noqa: BLE001 (a missing libnvrtc surfaces as whatever the binding raises)
        return f"the NVRTC library does not answer ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    if not cuda_include_dirs():
        return "the CUDA headers (cuda_fp16.h) NVRTC compiles the kernel against are not found: set CUDA_HOME"
    return None


def compile_cubin(arch: str, source: str | None = None, extra_options: tuple[str, ...] = ()) -> bytes:
    """NVRTC-compile the kernel source for ``arch`` (e.g. "sm_87", "sm_90a") and return the cubin.

    Needs no GPU (NVRTC is a compiler library), so CPU machines can test it.
    """
    return _nvrtc(arch, source, extra_options, ptx=False)


def compile_ptx(arch: str, source: str | None = None, extra_options: tuple[str, ...] = ()) -> str:
    """The PTX NVRTC makes of the kernel source for ``arch`` ("compute_90a", ...): what the runtime's cubin is
    built from, for inspection (tests run ptxas on it for register counts)."""
    return _nvrtc(arch, source, extra_options, ptx=True).decode().rstrip("\x00")


def _nvrtc(arch: str, source: str | None, extra_options: tuple[str, ...], ptx: bool) -> bytes:
    _, _, nvrtc = _bindings()
    source = SOURCE.read_text() if source is None else source
    headers = kernel_headers()  # the headers proto_topk.cuh includes, handed over by name
    includes = cuda_include_dirs()
    if not includes:
        raise ConfigError("cannot find the CUDA headers (mma.h, cuda_fp16.h) for NVRTC: set CUDA_HOME to the CUDA "
                          "toolkit, or pip install 'nvidia-cuda-runtime' / 'cuda-toolkit[cudart]'")
    prog = check(nvrtc.nvrtcCreateProgram(source.encode(), b"proto_topk.cuh", len(headers),
                                                 [t.encode() for t in headers.values()],
                                                 [n.encode() for n in headers]), "nvrtcCreateProgram")
    try:
        opts = [f"--gpu-architecture={arch}", "-std=c++17",
                *[f"--include-path={d}" for d in includes], *extra_options]
        opts = [o.encode() for o in opts]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        size = check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        text = _out_buffer(size)
        check(nvrtc.nvrtcGetProgramLog(prog, text), "nvrtcGetProgramLog")
        text = text[:size].decode(errors="replace").strip("\x00 \n")
        if int(err) != 0:
            raise CudaError(f"NVRTC could not compile {SOURCE.name} for {arch}:\n{text}")
        if text:
            log.warning("NVRTC messages for %s (%s):\n%s", SOURCE.name, arch, text)
        get_size, get = (nvrtc.nvrtcGetPTXSize, nvrtc.nvrtcGetPTX) if ptx else (nvrtc.nvrtcGetCUBINSize,
                                                                                nvrtc.nvrtcGetCUBIN)
        size = check(get_size(prog), "nvrtcGetPTXSize" if ptx else "nvrtcGetCUBINSize")
        out = _out_buffer(size)
        check(get(prog, out), "nvrtcGetPTX" if ptx else "nvrtcGetCUBIN")
        return out[:size]
    finally:
        check(nvrtc.nvrtcDestroyProgram(prog), "nvrtcDestroyProgram")


_DEFINE = re.compile(r"-DPROTOSPECT_TOPK_[A-Z0-9_]+(=[0-9]+)?")


def build_defines() -> tuple[str, ...]:
    """Comparison switches for the kernel build (development: run the whole test suite on a variant),
    from PROTOSPECT_TOPK_DEFINES, e.g. "-DPROTOSPECT_TOPK_AGG_ATOMICS=1"; both bindings honour it.
    Only the kernel's own -DPROTOSPECT_TOPK_* switches are accepted: a typo fails loudly, not silently."""
    defines = tuple(os.environ.get("PROTOSPECT_TOPK_DEFINES", "").split())
    bad = [d for d in defines if not _DEFINE.fullmatch(d)]
    if bad:
        raise ConfigError(f"PROTOSPECT_TOPK_DEFINES takes -DPROTOSPECT_TOPK_NAME[=number] switches only, not {bad}")
    return defines


def kernel_headers() -> dict[str, str]:
    """{file name: text} of the headers proto_topk.cuh includes (kernel_config.KERNEL_HEADERS, all but itself)."""
    return {name: SOURCE.with_name(name).read_text() for name in KERNEL_HEADERS if name != SOURCE.name}


def _cached_cubin(arch: str) -> bytes:
    """compile_cubin with an on-disk cache keyed by the source text and every header it includes, the switches,
    the arch and the NVRTC version."""
    _, _, nvrtc = _bindings()
    major, minor = check(nvrtc.nvrtcVersion(), "nvrtcVersion")
    source = SOURCE.read_text()
    defines = build_defines()
    digest = hashlib.sha256(f"{arch}|{major}.{minor}|{' '.join(defines)}|".encode() + source.encode())
    for name, text in kernel_headers().items():  # every header: an edit to any of them is a new cubin
        digest.update(f"|{name}|".encode() + text.encode())
    key = digest.hexdigest()[:24]
    path = _CACHE_DIR / f"proto_topk_{arch}_{key}.cubin"
    if path.is_file():
        return path.read_bytes()
    cubin = compile_cubin(arch, source, extra_options=defines)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, cubin)
    except OSError as err:  # a read-only home only costs a recompile next time
        log.warning("could not cache the kernel at %s: %s", path, err)
    return cubin


# ---- launch geometry (mirrors proto_topk.cu) -------------------------------------------------------

def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def segment_length(M: int, splits: int, block_m: int) -> int:
    return _ceil_div(_ceil_div(M, block_m), splits) * block_m


def effective_splits(M: int, splits: int, block_m: int, max_splits: int) -> int:
    splits = min(max(splits, 1), max_splits)
    return _ceil_div(M, segment_length(M, splits, block_m))


def plan_splits(Q: int, M: int, k: int, sm_count: int, block_q: int, block_m: int, max_splits: int,
                blocks_per_sm: int) -> int:
    """Bank splits: one full wave of blocks, each split >= 2k prototypes (proto_topk_plan_splits)."""
    if Q < 1 or M < 1:
        return 1
    by_occupancy = (blocks_per_sm * max(sm_count, 1)) // _ceil_div(Q, block_q)
    by_k = M // (2 * max(k, 1))
    return effective_splits(M, max(1, min(by_occupancy, by_k)), block_m, max_splits)


def candidate_slots(k: int, dtype: str, splits: int) -> int:
    """Candidate slots per (split, query) (candidate_slots in proto_topk.cu): the fp16 kernel keeps k = 1
    in registers and hands the merge one slot per split (none with a single split)."""
    if k == 1 and dtype == "float16":
        return 1 if splits > 1 else 0
    return cand_cap(k)


def _align(x: int) -> int:
    return _ceil_div(x, _WORKSPACE_ALIGN) * _WORKSPACE_ALIGN


def workspace_layout(Q: int, k: int, splits: int, dtype: str = "float32", bound_atoms: int = 0) -> dict[str, int]:
    """Byte offsets of the scratch regions, the slots per candidate buffer and the total (carve() in proto_topk.cu).
    bound_atoms: the kernel's shared-bound atoms per query (proto_topk_config; 0 unless built with
    -DPROTOSPECT_TOPK_SHARED_BOUND)."""
    lay, off = {}, 0
    if splits > 1:
        lay["qnorm"] = off
        off = _align(off + 4 * Q)
        lay["cand_count"] = off
        off = _align(off + 4 * splits * Q)
    lay["slots"] = candidate_slots(k, dtype, splits)
    cand = splits * Q * lay["slots"]
    lay["cand_val"] = off
    off = _align(off + 4 * cand)
    lay["cand_idx"] = off
    off = _align(off + 4 * cand)
    if bound_atoms and splits > 1 and dtype == "float16" and k > 1:
        lay["bound_keys"] = off
        off = _align(off + 4 * Q * bound_atoms)
    lay["bytes"] = off
    return lay


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
