"""knn_sqdist: exact against brute force, non-negative, differentiable, and exportable to ONNX."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from protospect.training.proto_topk import knn_sqdist  # noqa: E402

pytestmark = pytest.mark.torch


def test_matches_brute_force_batched():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 50, 16, generator=g, dtype=torch.float64)
    bank = torch.randn(40, 16, generator=g, dtype=torch.float64)
    d, idx = knn_sqdist(q, bank, 5)
    brute = ((q[:, :, None, :] - bank[None, None]) ** 2).sum(-1)
    ref, ref_idx = brute.sort(dim=-1)
    assert d.shape == (2, 50, 5) and idx.shape == (2, 50, 5)
    torch.testing.assert_close(d, ref[..., :5])
    assert torch.equal(idx, ref_idx[..., :5])
    assert torch.all(d[..., 1:] >= d[..., :-1])  # ascending


def test_unbatched_and_clamped_at_zero():
    bank = torch.randn(30, 64) * 100.0  # large norms: the expanded form cancels badly
    d, idx = knn_sqdist(bank.clone(), bank, 1)  # every query is a prototype
    assert d.shape == (30, 1)
    assert torch.all(d >= 0)
    assert torch.equal(idx[:, 0], torch.arange(30))


def test_gradient_flows_to_queries():
    q = torch.randn(10, 8, requires_grad=True)
    bank = torch.randn(20, 8)
    d, _ = knn_sqdist(q, bank, 3)
    d.sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_bad_k_is_rejected():
    with pytest.raises(ValueError, match="k=21"):
        knn_sqdist(torch.randn(4, 8), torch.randn(20, 8), 21)


def test_exports_to_matmul_topk(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    bank = torch.randn(64, 12)

    class Knn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("bank", bank)

        def forward(self, q):
            return knn_sqdist(q, self.bank, 4)[0]

    q = torch.randn(1, 20, 12)
    path = tmp_path / "knn.onnx"
    torch.onnx.export(Knn(), (q,), str(path), input_names=["q"], output_names=["d"], dynamo=False)
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"MatMul", "TopK"} <= ops
    # the whole N x M matrix is one GEMM: TopK reads the MatMul directly (no elementwise pass over it)
    producer = {o: n for n in graph.node for o in n.output}
    topk = next(n for n in graph.node if n.op_type == "TopK")
    assert producer[topk.input[0]].op_type == "MatMul"
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"q": q.numpy()})[0]
    np.testing.assert_allclose(got, Knn()(q).numpy(), rtol=1e-4, atol=1e-4)


def test_export_form_ranks_and_measures_like_the_plain_form():
    from protospect.training.proto_topk import _knn_ranked, _knn_torch

    g = torch.Generator().manual_seed(1)
    q, bank = torch.randn(3, 70, 24, generator=g) * 3, torch.randn(90, 24, generator=g) * 3
    d0, i0 = _knn_torch(q, bank, 6, None)
    d1, i1 = _knn_ranked(q, bank, 6, None)
    torch.testing.assert_close(d1, d0, rtol=1e-4, atol=1e-3)
    assert (i0 == i1).float().mean() > 0.99  # only near-ties may swap
    same, _ = _knn_ranked(bank.clone(), bank, 1, None)  # exact matches: clamped at 0, never negative
    assert torch.all(same >= 0) and float(same.max()) < 1e-2


def test_clamping_the_k_kept_is_clamping_the_whole_matrix_bit_for_bit_gradients_included():
    """The plain path clamps after the top-k (one pass over N x M fewer each way): the same k values, indices and
    gradients, to the bit, as the form the studies were trained with, exact matches (negative expansions) included."""
    from protospect.training.proto_topk import _knn_torch, sqnorm

    g = torch.Generator().manual_seed(2)
    bank = torch.randn(200, 40, generator=g)
    q0 = torch.randn(2, 300, 40, generator=g)
    q0[0, :200] = bank  # distance 0 to one prototype: the expansion rounds some of them below 0
    grads = []
    for form in ("whole", "kept"):
        q = q0.clone().requires_grad_(True)
        if form == "whole":
            full = (sqnorm(q).unsqueeze(-1) + sqnorm(bank) - 2.0 * torch.matmul(q, bank.t())).clamp_min(0.0)
            d, i = torch.topk(full, 5, dim=-1, largest=False, sorted=True)
            raw = sqnorm(q0).unsqueeze(-1) + sqnorm(bank) - 2.0 * torch.matmul(q0, bank.t())
            assert (raw < 0).any()  # the case this test is about occurs
        else:
            d, i = _knn_torch(q, bank, 5, None)
        (d * torch.linspace(0, 1, d.numel()).view_as(d)).sum().backward()
        grads.append((d.detach(), i, q.grad))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,k", [(torch.float16, 10), (torch.float16, 1), (torch.float32, 10)])
def test_on_cuda_the_training_hook_uses_the_fused_kernel(dtype, k, monkeypatch):
    """PCSNet and PatchCore call this hook: on a GPU it must go through cpp_ext's kernel, agree with the
    plain torch path and still give gradients (recomputed from the selected indices). Skips only without
    a GPU; a GPU whose op does not build is a failure (as in tests/cpp_ext/test_topk_cuda.py)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU (torch.cuda.is_available() is False)")
    from protospect.cpp_ext import torch_op
    from protospect.training import proto_topk

    reason = torch_op.unavailable_reason()
    if reason is not None:
        pytest.fail(f"a CUDA GPU is present but the torch op is unavailable: {reason}")

    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(3, 300, 152, device="cuda", generator=g).to(dtype).requires_grad_(True)
    bank = torch.randn(1000, 152, device="cuda", generator=g).to(dtype)
    calls = []
    real = torch_op.knn_sqdist
    monkeypatch.setattr(torch_op, "knn_sqdist", lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw))
    d, idx = proto_topk.knn_sqdist(q, bank, k)
    assert calls == [(900, 152)], "the fused kernel was not used"
    ref_d, ref_idx = proto_topk._knn_torch(q.detach().float(), bank.float(), k, None)
    torch.testing.assert_close(d.detach().float(), ref_d, rtol=2e-3, atol=2e-2)
    assert (idx == ref_idx).float().mean() > 0.99  # fp16 rounding may swap near-ties
    d.float().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
