"""The fused top-k kernel's launch geometry and workspace layout, mirroring ``proto_topk.cu`` (``launch`` and
``carve``): plain integer arithmetic, tested on CPU; ProtoTopK (cpp_ext/launcher.py) plans its calls with it."""
from __future__ import annotations

from protospect.cpp_ext.kernel_config import CONFIG, cand_cap

_WORKSPACE_ALIGN = CONFIG["kWorkspaceAlign"]


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
