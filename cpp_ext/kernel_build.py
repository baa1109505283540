"""Building the fused top-k kernel for the launcher (cpp_ext/launcher.py): NVRTC compile of ``proto_topk.cuh``
and its headers for the running GPU's arch, the on-disk cubin cache, the toolchain check the runtime asks
before it picks the split-TensorRT path, and ``check`` for cuda-python's ``(err, *values)`` results.
Needs no GPU (NVRTC is a compiler library); cuda-python is imported only when asked.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from protospect._optional import require
from protospect.cpp_ext.kernel_config import KERNEL_HEADERS
from protospect.errors import ConfigError, CudaError
from protospect.files import write_atomic

log = logging.getLogger("protospect.cpp_ext.launcher")

SOURCE = Path(__file__).with_name("proto_topk.cuh")
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
