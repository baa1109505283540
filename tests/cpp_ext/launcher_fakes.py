"""A ProtoTopK without a GPU, for host-side tests and the host-overhead benchmark: the driver calls it would
make are recorded instead (numpy only; no cuda-python needed)."""
from __future__ import annotations

from protospect.cpp_ext import launcher


class _FakeDriver:
    """Records what ProtoTopK.run enqueues besides kernels (the atoms' reset)."""

    def __init__(self):
        self.memsets = []

    def cuMemsetD8Async(self, ptr, value, nbytes, stream):  # noqa: N802 (the driver API's name)
        self.memsets.append((int(ptr), value, nbytes, stream))
        return (0,)


def host_only_launcher(bound_atoms: int, M: int = 4096, D: int = 1792):
    """A ProtoTopK whose GPU side is replaced by recorders: run()'s argument lists and workspace use are
    checked on CPU (the geometry values are the fp16/fp32 ones proto_topk_config reports)."""
    topk = object.__new__(launcher.ProtoTopK)
    topk._driver, topk._owned, topk._module = _FakeDriver(), [], None
    topk._bank_ptr, topk._sqnorm_ptr, topk._ws_ptr, topk._ws_bytes, topk._calls = 0x1000, 0x2000, 0, 0, {}
    topk.M, topk.D, topk.dtype, topk.sm_count = M, D, "float16", 132
    keys = ("block_q", "block_m", "threads", "smem", "blocks_per_sm")
    topk._geo = {0: dict(zip(keys, (64, 64, 128, 69632, 3))), 1: dict(zip(keys, (128, 128, 256, 108544, 2)))}
    topk.max_k, topk.max_splits, topk.merge_threads, topk.bound_atoms = 256, 8, 256, bound_atoms
    topk._malloc = lambda nbytes: 0x100000
    topk._free = lambda ptr: None
    topk.launches = []
    topk._launch = lambda name, grid, block, smem, stream, args: topk.launches.append(
        (name, grid, [a.value for a in args.values], stream))
    return topk
