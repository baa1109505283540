"""PyTorch binding of the fused top-k kernel, for training and evaluation on CUDA tensors.

The compiled module comes from ``setup.py`` (``PROTOSPECT_BUILD_CUDA=1 pip install -e .``) or, failing
that, is JIT-built once with ``torch.utils.cpp_extension.load`` from the same sources (needs nvcc; the
build is cached by torch under ~/.cache/torch_extensions). On a machine without a CUDA GPU nothing is
built and ``is_available()`` is False, with the reason in ``unavailable_reason()``.

    from protospect.cpp_ext import torch_op
    if torch_op.is_available():
        dist, idx = torch_op.knn_sqdist(q, bank, k)   # (Q, k) float32 ascending, (Q, k) int32
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from protospect._optional import require
from protospect.cpp_ext.kernel_config import CONFIG
from protospect.errors import ConfigError, MissingDependencyError

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SOURCES = [HERE / "torch_binding.cpp", HERE / "proto_topk.cu"]
MAX_K = CONFIG["kMaxK"]  # proto_topk_config.h
_EXT = None      # the loaded extension module
_REASON = None   # why it is unavailable, once known


def _torch():
    return require("torch", "train")


def _load():
    """The compiled extension: the setup.py build, else a JIT build; raises with the reason."""
    global _EXT
    if _EXT is not None:
        return _EXT
    from protospect.cpp_ext.launcher import build_defines  # noqa: PLC0415 (numpy-only module)

    defines = build_defines()  # comparison switches: only the JIT build can take them
    if not defines:
        try:
            from protospect.cpp_ext import _proto_topk_C as ext  # noqa: PLC0415 (built only on request)

            _EXT = ext
            return _EXT
        except ImportError:
            pass
    if shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        raise MissingDependencyError("the proto_topk torch extension is not built and nvcc is not on PATH: install the "
                                     "CUDA toolkit, or build it with PROTOSPECT_BUILD_CUDA=1 pip install -e .")
    from torch.utils.cpp_extension import load  # noqa: PLC0415

    log.info("JIT-building the proto_topk torch extension (first use only, about a minute)")
    cuda_flags = ["-O3"] + (["-lineinfo"] if os.environ.get("PROTOSPECT_CUDA_LINEINFO") == "1" else [])  # for ncu
    cuda_flags += _arch_flags() + list(defines)  # (torch rebuilds when the flags change)
    _EXT = load(name="protospect_proto_topk", sources=[str(s) for s in SOURCES], extra_include_paths=[str(HERE)],
                extra_cflags=["-O3"], extra_cuda_cflags=cuda_flags, verbose=False)
    return _EXT


def _arch_flags() -> list[str]:
    """nvcc flags for the current GPU: on Hopper the arch-specific sm_90a (wgmma), which torch's own
    list never picks; elsewhere (or with TORCH_CUDA_ARCH_LIST set) torch's choice, so no flags."""
    torch = _torch()
    if os.environ.get("TORCH_CUDA_ARCH_LIST") or not torch.cuda.is_available():
        return []
    from protospect.cpp_ext.launcher import kernel_arch  # noqa: PLC0415 (numpy-only module)

    arch = kernel_arch(*torch.cuda.get_device_capability())
    if not arch.endswith("a"):
        return []
    return [f"-gencode=arch=compute_{arch[3:]},code={arch}"]


def unavailable_reason() -> str | None:
    """None when the op can run here, else a one-line reason (no CUDA GPU, no compiler, build error)."""
    global _REASON
    if _EXT is not None:
        return None
    if _REASON is not None:
        return _REASON
    try:
        torch = _torch()
    except MissingDependencyError as err:
        _REASON = str(err)
        return _REASON
    if not torch.cuda.is_available():
        _REASON = "no CUDA GPU (torch.cuda.is_available() is False)"
        return _REASON
    try:
        _load()
    except Exception as err:  # noqa: BLE001 (a failed build makes the op unavailable, with the reason)
        _REASON = f"proto_topk extension could not be built or loaded: {str(err).splitlines()[0] if str(err) else err!r}"
        log.warning(_REASON)
    return _REASON


def is_available() -> bool:
    return unavailable_reason() is None


def supports(q, bank, k: int) -> bool:
    """True when knn_sqdist can take these arguments (CUDA, fp16/fp32 alike, 1 <= k <= min(M, 256))."""
    torch = _torch()
    return (q.is_cuda and bank.is_cuda and q.dtype == bank.dtype and q.dtype in (torch.float16, torch.float32)
            and q.dim() == 2 and bank.dim() == 2 and q.shape[1] == bank.shape[1] and 1 <= k <= min(bank.shape[0], MAX_K))


def bank_sqnorm(bank):
    """(M,) float32 squared norms of the prototypes; compute once per bank and pass to knn_sqdist."""
    return _load().bank_sqnorm(bank.contiguous())


def knn_sqdist(q, bank, k: int, bank_sqnorm=None, return_indices: bool = True, splits: int = 0,
               debug_scores: bool = False):
    """(Q, D) x (M, D) CUDA tensors -> (dist (Q, k) float32 ascending, idx (Q, k) int32 or None).

    Squared L2 distances, clamped at 0; ties go to the smaller prototype index. q and bank share a dtype
    (float16: tensor cores with fp32 accumulation; float32: exact fp32). ``bank_sqnorm`` (M,) float32 is
    computed when not given. ``splits`` = 0 lets the kernel choose. With ``debug_scores`` a third value is
    returned: the (Q, M) matrix of ranking scores ||m||^2 - 2 q.m the kernel saw (debugging only).
    No autograd: the result carries no gradient.
    """
    torch = _torch()
    reason = unavailable_reason()
    if reason is not None:
        raise MissingDependencyError(f"protospect.cpp_ext.torch_op cannot run: {reason}")
    if q.dim() != 2 or bank.dim() != 2 or q.shape[1] != bank.shape[1]:
        raise ConfigError(f"knn_sqdist expects q (Q, D) and bank (M, D), got {tuple(q.shape)} and {tuple(bank.shape)}")
    if not (q.is_cuda and bank.is_cuda) or q.device != bank.device:
        raise ConfigError(f"q and bank must be CUDA tensors on one device, got {q.device} and {bank.device}")
    if q.dtype != bank.dtype or q.dtype not in (torch.float16, torch.float32):
        raise ConfigError(f"q and bank must both be float16 or both float32, got {q.dtype} and {bank.dtype}")
    if not 1 <= k <= min(bank.shape[0], MAX_K):
        raise ConfigError(f"k={k} must be in [1, {min(bank.shape[0], MAX_K)}] (bank of {bank.shape[0]} prototypes, "
                          f"kernel limit {MAX_K}); use protospect.training.proto_topk for larger k")
    ext = _load()
    q, bank = q.detach().contiguous(), bank.detach().contiguous()
    if bank_sqnorm is None:
        bank_sqnorm = ext.bank_sqnorm(bank)
    else:
        bank_sqnorm = bank_sqnorm.detach().to(device=bank.device, dtype=torch.float32).contiguous().reshape(-1)
        if bank_sqnorm.numel() != bank.shape[0]:
            raise ConfigError(f"bank_sqnorm has {bank_sqnorm.numel()} values for {bank.shape[0]} prototypes")
    dist, idx, debug = ext.knn_sqdist(q, bank, bank_sqnorm, int(k), bool(return_indices), int(splits), bool(debug_scores))
    out = (dist, idx if return_indices else None)
    return (*out, debug) if debug_scores else out
