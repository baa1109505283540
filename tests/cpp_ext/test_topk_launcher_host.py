"""Host-side behaviour of the torch-free launcher that needs no GPU: error checking and geometry."""
from __future__ import annotations

import numpy as np
import pytest
from launcher_fakes import host_only_launcher

from protospect.cpp_ext import launcher
from protospect.cpp_ext.kernel_config import CONFIG as C
from protospect.errors import CudaError



@pytest.fixture()
def runtime():
    """cuda-python's runtime module: only the items that call it skip without it; the geometry and
    launch-plan items below need numpy only and run everywhere."""
    return pytest.importorskip("cuda.bindings.runtime", reason="cuda-python not installed (pip install 'protospect[gpu]')")


def test_check_returns_values_and_raises_named_cuda_error(runtime):
    ok = runtime.cudaError_t.cudaSuccess
    assert launcher.check((ok,)) is None
    assert launcher.check((ok, 7)) == 7
    assert launcher.check((ok, 1, 2)) == (1, 2)
    with pytest.raises(CudaError, match=r"cudaMalloc\(8\) failed: cudaErrorMemoryAllocation"):
        launcher.check((runtime.cudaError_t.cudaErrorMemoryAllocation, None), "cudaMalloc(8)")


def test_without_a_gpu_construction_fails_with_cuda_error(runtime):
    err, count = runtime.cudaGetDeviceCount()
    if int(err) == 0 and count > 0:
        pytest.skip("a CUDA GPU is present (this test covers machines without one)")
    with pytest.raises(CudaError, match="cudaFree"):
        launcher.ProtoTopK(np.zeros((4, 3), np.float32))


@pytest.mark.parametrize("Q,M,splits", [(4096, 4096, 5), (10, 100, 8), (1, 64, 3), (300, 32768, 8)])
def test_splits_cover_the_bank_without_empty_segments(Q, M, splits):
    eff = launcher.effective_splits(M, splits, 64, 8)
    seg = launcher.segment_length(M, eff, 64)
    assert 1 <= eff <= min(splits, 8) and seg % 64 == 0
    assert (eff - 1) * seg < M <= eff * seg  # the last segment is non-empty, all prototypes covered


def test_workspace_layout_regions_do_not_overlap():
    lay = launcher.workspace_layout(Q=1000, k=200, splits=3)
    cand = 4 * 3 * 1000 * launcher.cand_cap(200)
    assert lay["slots"] == launcher.cand_cap(200) == 512
    assert lay["qnorm"] == 0 and lay["cand_count"] >= 4 * 1000
    assert lay["cand_val"] >= lay["cand_count"] + 4 * 3 * 1000
    assert lay["cand_idx"] >= lay["cand_val"] + cand and lay["bytes"] >= lay["cand_idx"] + cand
    assert all(v % 256 == 0 for name, v in lay.items() if name != "slots")
    single = launcher.workspace_layout(1000, 200, 1)
    assert "cand_count" not in single and single["bytes"] >= 8 * 1000 * launcher.cand_cap(200)
    # the fp16 kernel's k = 1 path keeps its minimum in registers: one slot per split, none for one split
    assert launcher.candidate_slots(1, "float16", 8) == 1 and launcher.candidate_slots(1, "float16", 1) == 0
    assert launcher.candidate_slots(1, "float32", 8) == launcher.cand_cap(1)
    k1 = launcher.workspace_layout(4096, 1, 8, "float16")
    assert k1["bytes"] <= 4 * 4096 + 3 * 4 * 8 * 4096 + 4 * 256  # O(splits Q), not O(Q M)
    assert launcher.workspace_layout(4096, 1, 1, "float16")["bytes"] == 0
    # the shared-bound comparison build: 32 atoms per query after the buffers, for fp16 k > 1 across splits only
    sb = launcher.workspace_layout(4096, 200, 8, "float16", bound_atoms=32)
    assert sb["bound_keys"] >= sb["cand_idx"] + 4 * 8 * 4096 * 512 and sb["bytes"] >= sb["bound_keys"] + 4 * 4096 * 32
    assert "bound_keys" not in launcher.workspace_layout(4096, 200, 1, "float16", 32)  # one split: nothing to share
    assert "bound_keys" not in launcher.workspace_layout(4096, 1, 8, "float16", 32)  # k = 1: minima in registers
    assert "bound_keys" not in launcher.workspace_layout(4096, 200, 8, "float32", 32)


# proto_topk_config.h: block_q, block_m, blocks per SM
GEOMETRY = {"float32": (C["kBlockQ"], C["kBlockM"], C["kBlocksPerSm"]),
            "float16": (C["kMmaBlockQ"], C["kMmaBlockM"], C["kMmaBlocksPerSm"])}


@pytest.mark.parametrize("dtype,Q,M,k,sms,want", [
    ("float32", 4096, 4096, 200, 132, 6), ("float32", 4096, 32768, 1, 132, 6), ("float32", 1024, 1024, 32, 132, 8),
    ("float32", 100, 100, 64, 132, 1), ("float32", 64, 4096, 256, 1, 3),
    ("float16", 4096, 4096, 200, 132, 8), ("float16", 4096, 32768, 1, 132, 8), ("float16", 1024, 1024, 32, 132, 8),
    ("float16", 100, 100, 64, 132, 1), ("float16", 64, 4096, 256, 1, 2), ("float16", 4096, 4096, 1024 // 4, 132, 8)])
def test_split_plan_fills_one_wave_and_keeps_2k_prototypes_per_split(dtype, Q, M, k, sms, want):
    block_q, block_m, per_sm = GEOMETRY[dtype]
    splits = launcher.plan_splits(Q, M, k, sms, block_q, block_m, 8, per_sm)
    assert splits == want
    assert splits == 1 or M / splits >= 2 * k - block_m  # whole tiles per split: within one tile of 2k
    assert -(-Q // block_q) * splits <= max(per_sm * sms, -(-Q // block_q))  # never a second, partial wave


@pytest.mark.parametrize("bound_atoms", [0, 32])
def test_run_hands_the_shared_bound_atoms_to_the_fp16_kernels_and_resets_them(bound_atoms):
    """The shared-bound build (proto_topk_config[13] = 32 atoms per query) takes one more argument in the
    fp16 partial kernels and the merge: the atoms region, reset to 0xff bytes on the call's stream before the
    partial kernel; the default build's argument lists are unchanged and nothing is reset."""
    topk = host_only_launcher(bound_atoms)
    Q, k = 4096, 200
    topk.run(0x3000, Q, k, 0x4000, 0x5000, stream=7)
    lay = launcher.workspace_layout(Q, k, 8, "float16", bound_atoms)
    (partial, grid, args, _), (merge, _, margs, _) = topk.launches
    assert (partial, merge, grid) == ("proto_topk_partial_f16", "proto_topk_merge_splits", (32, 8, 1))
    assert len(args) == 16 + (1 if bound_atoms else 0) and len(margs) == 10 + (1 if bound_atoms else 0)
    if bound_atoms:
        atoms = 0x100000 + lay["bound_keys"]
        assert args[-1] == atoms and margs[-1] == atoms
        assert topk._driver.memsets == [(atoms, 0xFF, 4 * Q * 32, 7)]
    else:
        assert "bound_keys" not in lay and topk._driver.memsets == []
    # k = 1 (fp16): its kernel shares the partial's signature, so it gets a null atoms argument; no reset
    topk.launches.clear()
    topk._driver.memsets.clear()
    topk.run(0x3000, Q, 1, 0x4000, 0x5000, stream=7)
    (name, _, args, _), (merge, _, _, _) = topk.launches
    assert (name, merge) == ("proto_topk_partial_f16_k1", "proto_topk_merge_min")
    assert len(args) == 16 + (1 if bound_atoms else 0) and (not bound_atoms or args[-1] is None)
    assert topk._driver.memsets == []


def test_run_replays_its_launch_plan_and_rebuilds_it_when_the_workspace_moves():
    """run() builds the launch plan (split count, workspace offsets, argument arrays) once per set of
    arguments and replays it on any stream; a reallocated workspace drops the plans that point into the
    old one."""
    topk = host_only_launcher(0, M=1024, D=152)
    addresses = iter(range(0x100000, 0x10000000, 0x1000000))
    topk._malloc = lambda nbytes: next(addresses)
    call = (0x3000, 1024, 16, 0x4000, 0x5000)
    topk.run(*call, stream=7)
    first = [(name, grid, args) for name, grid, args, _ in topk.launches]
    topk.launches.clear()
    topk.run(*call, stream=9)
    assert [(name, grid, args) for name, grid, args, _ in topk.launches] == first
    assert {stream for *_, stream in topk.launches} == {9} and len(topk._calls) == 1
    topk.run(0x3000, 4096, 200, 0x4000, 0x5000, stream=7)  # needs a larger workspace: reallocated
    assert len(topk._calls) == 1
    topk.launches.clear()
    topk.run(*call, stream=7)
    again = [(name, grid, args) for name, grid, args, _ in topk.launches]
    assert [(n, g) for n, g, _ in again] == [(n, g) for n, g, _ in first]
    cand_val = 8  # the partial kernel's candidate buffer argument: now in the new workspace
    assert again[0][2][cand_val] != first[0][2][cand_val] and again[0][2][cand_val] >= 0x1100000
