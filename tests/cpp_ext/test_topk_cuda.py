"""Every CUDA path of the fused kernel against the numpy reference and a float64 brute force.

Skips with "no CUDA GPU" on machines without one; on a GPU machine these are the kernel's tests.
"""
from __future__ import annotations

import numpy as np
import pytest
from topk_cases import SHAPES, assert_topk_close, make_case, make_tie_case

from protospect.cpp_ext import reference

pytestmark = pytest.mark.gpu

TOL = {"float32": dict(rtol=1e-4, atol=1e-3), "float16": dict(rtol=2e-3, atol=2e-2)}


def _has_gpu_torch() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _has_gpu_cuda_python() -> bool:
    try:
        from cuda.bindings import runtime
    except ImportError:
        return False
    err, count = runtime.cudaGetDeviceCount()
    return int(err) == 0 and count > 0


@pytest.fixture(scope="module")
def torch_op():
    if not _has_gpu_torch():
        pytest.skip("no CUDA GPU (torch.cuda.is_available() is False)")
    from protospect.cpp_ext import torch_op

    if not torch_op.is_available():
        pytest.fail(f"a CUDA GPU is present but the torch op is unavailable: {torch_op.unavailable_reason()}")
    return torch_op


@pytest.fixture(scope="module")
def launcher_cls():
    if not _has_gpu_cuda_python():
        pytest.skip("no CUDA GPU (or cuda-python not installed)")
    from protospect.cpp_ext.launcher import ProtoTopK

    return ProtoTopK


def _run(path, op, queries, bank, k, dtype, splits=None):
    """(dist, idx) numpy from the torch op or the torch-free launcher."""
    if path == "torch":
        import torch

        tq = torch.from_numpy(queries.astype(dtype)).cuda()
        tb = torch.from_numpy(bank.astype(dtype)).cuda()
        dist, idx = op.knn_sqdist(tq, tb, k, splits=splits or 0)
        return dist.cpu().numpy(), idx.cpu().numpy()
    with op(bank.astype(dtype)) as topk:
        if splits is None:
            return topk.knn_sqdist(queries.astype(dtype), k)
        return _launcher_with_splits(topk, queries.astype(dtype), k, splits)


def _launcher_with_splits(topk, queries, k, splits):
    from protospect.cpp_ext.launcher import check

    rt = topk._rt
    Q = queries.shape[0]
    q_ptr, d_ptr, i_ptr = topk._malloc(queries.nbytes), topk._malloc(4 * Q * k), topk._malloc(4 * Q * k)
    check(rt.cudaMemcpy(q_ptr, queries.ctypes.data, queries.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice))
    topk.run(q_ptr, Q, k, d_ptr, i_ptr, 0, splits=splits)
    check(rt.cudaDeviceSynchronize())
    dist, idx = np.empty((Q, k), np.float32), np.empty((Q, k), np.int32)
    check(rt.cudaMemcpy(dist.ctypes.data, d_ptr, dist.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost))
    check(rt.cudaMemcpy(idx.ctypes.data, i_ptr, idx.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost))
    return dist, idx


@pytest.fixture(params=["torch", "launcher"])
def path_op(request):
    return request.param, request.getfixturevalue("torch_op" if request.param == "torch" else "launcher_cls")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("Q,M,D,k", SHAPES)
def test_matches_reference(path_op, dtype, Q, M, D, k):
    path, op = path_op
    queries, bank = make_case(Q, M, D, seed=Q * 7 + M)
    queries, bank = queries.astype(dtype), bank.astype(dtype)  # reference sees the same rounded inputs
    ref_dist, ref_idx = reference.knn_sqdist(queries, bank, k, return_indices=True)
    dist, idx = _run(path, op, queries, bank, k, dtype)
    assert_topk_close(dist, idx, queries, bank, ref_dist, ref_idx, **TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("Q,M,D,k", [(70, 150, 37, 50), (9, 64, 8, 64), (130, 700, 16, 1), (40, 2000, 5, 256)])
def test_exact_ties_take_the_smaller_index(path_op, dtype, Q, M, D, k):
    path, op = path_op
    queries, bank = make_tie_case(Q, M, D, seed=Q + k)
    ref_dist, ref_idx = reference.knn_sqdist(queries, bank, k, return_indices=True)
    dist, idx = _run(path, op, queries, bank, k, dtype)
    np.testing.assert_array_equal(dist, ref_dist)  # small integers: exact in fp16 products and fp32 sums
    np.testing.assert_array_equal(idx, ref_idx)


@pytest.mark.parametrize("dtype,k", [("float32", 77), ("float16", 77), ("float16", 1)])
@pytest.mark.parametrize("splits", [1, 2, 3, 8])
def test_bank_splits_give_identical_results(path_op, splits, dtype, k):
    path, op = path_op
    queries, bank = make_case(100, 1100, 40, seed=11)
    queries, bank = queries.astype(dtype), bank.astype(dtype)
    base = _run(path, op, queries, bank, k, dtype, splits=1)
    split = _run(path, op, queries, bank, k, dtype, splits=splits)
    np.testing.assert_array_equal(base[0], split[0])
    np.testing.assert_array_equal(base[1], split[1])


@pytest.mark.parametrize("dtype,D", [("float32", 37), ("float16", 37), ("float16", 64)])  # fp16 D=64: vector loads
def test_debug_scores_are_the_full_ranking_matrix(torch_op, dtype, D):
    """The first thing to look at if a result is off: the (Q, M) scores the kernel ranked, tile by tile."""
    import torch

    queries, bank = make_case(70, 150, D, seed=2)
    tq = torch.from_numpy(queries).cuda().to(getattr(torch, dtype))
    tb = torch.from_numpy(bank).cuda().to(getattr(torch, dtype))
    dist, idx, scores = torch_op.knn_sqdist(tq, tb, 5, debug_scores=True)
    qf, bf = tq.double(), tb.double()
    want = ((bf * bf).sum(1)[None, :] - 2.0 * qf @ bf.T).float()
    bad = ~torch.isclose(scores, want, rtol=1e-4, atol=1e-3)
    assert not bad.any(), f"first bad (query, prototype): {bad.nonzero()[:5].tolist()} (tile = index // 64 fp32, // 128 fp16)"
    qn = (qf * qf).sum(1, keepdim=True).float()
    torch.testing.assert_close(dist, (torch.gather(scores, 1, idx.long()) + qn).clamp_min(0), rtol=1e-5, atol=1e-3)


def test_torch_op_without_indices_and_under_a_cuda_graph(torch_op):
    import torch

    queries, bank = make_case(300, 500, 64, seed=4)
    tq, tb = torch.from_numpy(queries).cuda().half(), torch.from_numpy(bank).cuda().half()
    sq = torch_op.bank_sqnorm(tb)
    want, _ = torch_op.knn_sqdist(tq, tb, 32, sq)
    dist, idx = torch_op.knn_sqdist(tq, tb, 32, sq, return_indices=False)
    assert idx is None
    torch.testing.assert_close(dist, want, rtol=0, atol=0)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # warm-up on the capture stream, as torch's graph docs require
        torch_op.knn_sqdist(tq, tb, 32, sq)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured, _ = torch_op.knn_sqdist(tq, tb, 32, sq)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, want, rtol=0, atol=0)


def test_launcher_runs_on_a_given_stream_with_device_pointers(launcher_cls):
    from protospect.cpp_ext.launcher import check

    queries, bank = make_case(77, 333, 24, seed=9)
    ref_dist, ref_idx = reference.knn_sqdist(queries, bank, 10, return_indices=True)
    with launcher_cls() as topk:
        rt = topk._rt
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        bank_ptr = topk._malloc(bank.nbytes)
        check(rt.cudaMemcpy(bank_ptr, bank.ctypes.data, bank.nbytes, h2d))
        topk.set_bank(bank_ptr, 333, 24, "float32")
        stream = check(rt.cudaStreamCreate())
        try:
            q_ptr, d_ptr = topk._malloc(queries.nbytes), topk._malloc(4 * 77 * 10)
            check(rt.cudaMemcpyAsync(q_ptr, queries.ctypes.data, queries.nbytes, h2d, stream))
            topk.reserve(77, 10, want_indices=False)
            topk.run(q_ptr, 77, 10, d_ptr, 0, int(stream))
            dist = np.empty((77, 10), np.float32)
            check(rt.cudaMemcpyAsync(dist.ctypes.data, d_ptr, dist.nbytes, d2h, stream))
            check(rt.cudaStreamSynchronize(stream))
        finally:
            check(rt.cudaStreamDestroy(stream))
    np.testing.assert_allclose(dist, ref_dist, **TOL["float32"])


def test_launcher_rejects_bad_k(launcher_cls):
    from protospect.errors import ConfigError

    with launcher_cls(np.zeros((10, 4), np.float32)) as topk, pytest.raises(ConfigError, match="k=11"):
        topk.knn_sqdist(np.zeros((2, 4), np.float32), 11)
