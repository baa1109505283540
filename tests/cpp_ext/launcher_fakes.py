"""A ProtoTopK without a GPU, for host-side tests and the host-overhead benchmark: the driver calls it would
make are recorded instead (numpy only; no cuda-python needed)."""
from __future__ import annotations

from protospect.cpp_ext import launcher
from protospect.cpp_ext.kernel_config import CONFIG as C


class _FakeDriver:
    """Records what ProtoTopK.run enqueues besides kernels (the atoms' reset)."""

    def __init__(self):
        self.memsets = []

    def cuMemsetD8Async(self, ptr, value, nbytes, stream):  # noqa: N802 (the driver API's name)
        self.memsets.append((int(ptr), value, nbytes, stream))
        return (0,)


# Dynamic shared memory of the fp32 / fp16 partial kernels (SmemLayoutF32/Mma::kBytes: computed by the
# compiler, not parsed; test_topk_compile checks these against the compiled module's proto_topk_config).
SMEM_BYTES = (64000, 108032)


def host_only_launcher(bound_atoms: int, M: int = 4096, D: int = 1792):
    """A ProtoTopK whose GPU side is replaced by recorders: run()'s argument lists and workspace use are
    checked on CPU (the geometry values are the fp16/fp32 ones proto_topk_config reports)."""
    topk = object.__new__(launcher.ProtoTopK)
    topk._driver, topk._owned, topk._module = _FakeDriver(), [], None
    topk._bank_ptr, topk._sqnorm_ptr, topk._ws_ptr, topk._ws_bytes, topk._calls = 0x1000, 0x2000, 0, 0, {}
    topk.M, topk.D, topk.dtype, topk.sm_count = M, D, "float16", 132
    keys = ("block_q", "block_m", "threads", "smem", "blocks_per_sm")
    topk._geo = {0: dict(zip(keys, (C["kBlockQ"], C["kBlockM"], C["kThreads"], SMEM_BYTES[0], C["kBlocksPerSm"]))),
                 1: dict(zip(keys, (C["kMmaBlockQ"], C["kMmaBlockM"], C["kMmaThreads"], SMEM_BYTES[1],
                                    C["kMmaBlocksPerSm"])))}
    topk.max_k, topk.max_splits, topk.merge_threads, topk.bound_atoms = C["kMaxK"], C["kMaxSplits"], C["kMergeThreads"], bound_atoms
    topk._malloc = lambda nbytes: 0x100000
    topk._free = lambda ptr: None
    topk.launches = []
    topk._launch = lambda name, grid, block, smem, stream, args: topk.launches.append(
        (name, grid, [a.value for a in args.values], stream))
    return topk
