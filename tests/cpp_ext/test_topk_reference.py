"""The numpy reference against a float64 brute force: values, tie order, edge shapes, errors."""
from __future__ import annotations

import numpy as np
import pytest
from topk_cases import SHAPES, brute_force, make_case, make_tie_case

from protospect.cpp_ext import reference
from protospect.errors import ConfigError


def _stable_topk(full: np.ndarray, k: int):
    idx = np.argsort(full, axis=1, kind="stable")[:, :k]  # stable: equal values keep index order
    return np.take_along_axis(full, idx, axis=1), idx


@pytest.mark.parametrize("Q,M,D,k", SHAPES)
def test_matches_brute_force(Q, M, D, k):
    queries, bank = make_case(Q, M, D, seed=Q + M)
    dist, idx = reference.knn_sqdist(queries, bank, k, return_indices=True)
    want_dist, want_idx = _stable_topk(brute_force(queries, bank), k)
    assert dist.dtype == np.float32 and idx.dtype == np.int32 and dist.shape == (Q, k)
    np.testing.assert_allclose(dist, want_dist, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(idx, want_idx)  # random data: no near-ties at float64 precision


@pytest.mark.parametrize("Q,M,D,k", [(40, 90, 5, 30), (7, 12, 3, 12), (16, 64, 1, 1)])
def test_ties_go_to_the_smaller_index(Q, M, D, k):
    queries, bank = make_tie_case(Q, M, D, seed=3)
    full = brute_force(queries, bank)
    assert (np.sort(full, axis=1)[:, 1:] == np.sort(full, axis=1)[:, :-1]).any(), "case must contain ties"
    dist, idx = reference.knn_sqdist(queries, bank, k, return_indices=True)
    want_dist, want_idx = _stable_topk(full, k)
    np.testing.assert_array_equal(dist, want_dist.astype(np.float32))
    np.testing.assert_array_equal(idx, want_idx)


def test_chunking_does_not_change_the_result(monkeypatch):
    queries, bank = make_case(50, 70, 11, seed=5)
    whole = reference.knn_sqdist(queries, bank, 9, return_indices=True)
    monkeypatch.setattr(reference, "_CHUNK_BYTES", 8 * 70 * 3)  # 3 queries per chunk, last one partial
    chunked = reference.knn_sqdist(queries, bank, 9, return_indices=True)
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a, b)


def test_default_returns_distances_only_and_accepts_fp16():
    queries, bank = make_case(6, 10, 4)
    out = reference.knn_sqdist(queries.astype(np.float16), bank.astype(np.float16), 3)
    assert isinstance(out, np.ndarray) and out.shape == (6, 3)
    want = _stable_topk(brute_force(queries.astype(np.float16), bank.astype(np.float16)), 3)[0]
    np.testing.assert_allclose(out, want, rtol=1e-6)


def test_identical_query_gives_zero_not_negative():
    bank = np.random.default_rng(0).standard_normal((20, 31)).astype(np.float32) * 100
    dist, idx = reference.knn_sqdist(bank[[4, 17]], bank, 1, return_indices=True)
    assert (dist >= 0).all() and dist.max() < 1e-6
    np.testing.assert_array_equal(idx[:, 0], [4, 17])


def test_nan_ranks_last():
    queries, bank = make_case(3, 6, 4)
    bank[2, 1] = np.nan
    dist, idx = reference.knn_sqdist(queries, bank, 6, return_indices=True)
    assert (idx[:, -1] == 2).all() and np.isinf(dist[:, -1]).all()


@pytest.mark.parametrize(
    "q_shape,b_shape,k,match",
    [((4, 3), (5, 4), 1, "dim"), ((4, 3), (5, 3), 0, "k=0"), ((4, 3), (5, 3), 6, "k=6"), ((2, 4, 3), (5, 3), 1, "2-D")],
)
def test_bad_arguments_raise_config_error(q_shape, b_shape, k, match):
    with pytest.raises(ConfigError, match=match):
        reference.knn_sqdist(np.zeros(q_shape, np.float32), np.zeros(b_shape, np.float32), k)
