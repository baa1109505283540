"""Distance of every query feature to every prototype, keeping the k nearest: the training hot spot.

Written once and used by PCSNet and PatchCore (docs/contracts.md section 8). Two paths:

* the fused CUDA kernel (``protospect.cpp_ext.torch_op``) when it is importable, built, and
  supports the call (CUDA tensors, fp16/fp32, k within its limit); it returns the indices, and
  when gradients are needed the k distances are recomputed from them with autograd (no backward
  in the kernel);
* plain torch otherwise: one GEMM in the expanded form ||q||^2 + ||c||^2 - 2 q.c, then ``topk(largest=False)``,
  the k kept clamped at 0 (the expansion can go slightly negative in floating point, defect D7).
  This path traces to MatMul / ReduceSum / TopK in ONNX; while exporting it is rearranged so the whole
  N x M matrix is one GEMM (``_knn_ranked``).
"""
from __future__ import annotations

import torch

_FUSED_OP = None  # cached: the torch_op module, or False once we know it is unavailable


def _fused_op():
    """The cpp_ext torch op if it is importable and built, else None (looked up once)."""
    global _FUSED_OP
    if _FUSED_OP is None:
        try:
            from protospect.cpp_ext import torch_op  # noqa: PLC0415 (optional, built separately)

            available = getattr(torch_op, "is_available", lambda: True)
            _FUSED_OP = torch_op if available() else False
        except (ImportError, OSError, RuntimeError):
            _FUSED_OP = False
    return _FUSED_OP or None


def sqnorm(x: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm over the last axis (exports as Mul + ReduceSum)."""
    return (x * x).sum(dim=-1)


def pairwise_sqdist(q: torch.Tensor, bank: torch.Tensor, bank_sqnorm: torch.Tensor | None = None) -> torch.Tensor:
    """(..., N, D) x (M, D) -> (..., N, M) squared L2 distances through one GEMM, NOT clamped: the expansion can go
    slightly below 0 (D7); callers clamp what they keep. The GEMM's -2 rides in the add (exact: a power of two), one
    pass over N x M fewer than scaling it apart."""
    if bank_sqnorm is None:
        bank_sqnorm = sqnorm(bank)
    return torch.add(sqnorm(q).unsqueeze(-1) + bank_sqnorm, torch.matmul(q, bank.t()), alpha=-2.0)


def _knn_torch(q, bank, k, bank_sqnorm):
    # clamp after the top-k: clamping is monotone, so the k values (and their gradients) are those of clamping the whole
    # N x M matrix first, without two passes over it (forward and backward); ~35 % of this op's training time at 512 px
    d, idx = torch.topk(pairwise_sqdist(q, bank, bank_sqnorm), k, dim=-1, largest=False, sorted=True)
    return d.clamp_min(0.0), idx


def _knn_ranked(q, bank, k, bank_sqnorm):
    """The exported graph's form: the whole N x M matrix ||q||^2 + ||c||^2 - 2 q.c as one GEMM over augmented
    operands [q, 1, ||q||^2] x [-2c, ||c||^2, 1]^T, then the clamp on the k kept values only. The same
    distances up to rounding, without the two elementwise passes and the clamp over the N x M matrix that
    ONNX Runtime otherwise spends a third of the search on (docs/decision.md section 11). The bank side folds
    into one initializer at export; ||q||^2 stays above the GEMM, inside the float32 distance region."""
    if bank_sqnorm is None:
        bank_sqnorm = sqnorm(bank)
    aug_bank = torch.cat([-2.0 * bank, bank_sqnorm.unsqueeze(-1), torch.ones_like(bank_sqnorm).unsqueeze(-1)], dim=-1)
    aug_q = torch.cat([q, torch.ones_like(q[..., :1]), sqnorm(q).unsqueeze(-1)], dim=-1)
    d, idx = torch.topk(torch.matmul(aug_q, aug_bank.t()), k, dim=-1, largest=False, sorted=True)
    return d.clamp_min(0.0), idx


def _knn_fused(op, q, bank, k, bank_sqnorm):
    flat = q.reshape(-1, q.shape[-1])
    dist, idx = op.knn_sqdist(flat.detach().contiguous(), bank.contiguous(), k, bank_sqnorm)
    dist = dist.reshape(*q.shape[:-1], k)
    idx = idx.reshape(*q.shape[:-1], k).long()
    if q.requires_grad:
        # Differentiable recomputation of the k selected distances (the bank itself is frozen).
        chosen = bank[idx]  # (..., N, k, D)
        dist = ((q.unsqueeze(-2) - chosen) ** 2).sum(-1).clamp_min(0.0)
    return dist, idx


def knn_sqdist(q: torch.Tensor, bank: torch.Tensor, k: int, bank_sqnorm: torch.Tensor | None = None):
    """The k smallest squared L2 distances of each query to the bank, ascending, and their indices.

    q: (N, D) or (B, N, D); bank: (M, D); returns (sqdist (..., N, k), idx (..., N, k)).
    """
    if q.shape[-1] != bank.shape[-1]:
        raise ValueError(f"query dim {q.shape[-1]} != prototype dim {bank.shape[-1]}")
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k={k} must be in [1, {bank.shape[0]}] (the number of prototypes)")
    exporting = torch.onnx.is_in_onnx_export() if hasattr(torch.onnx, "is_in_onnx_export") else False
    if q.is_cuda and bank.is_cuda and not exporting:
        op = _fused_op()
        supports = getattr(op, "supports", None)
        if op is not None and (supports is None or supports(q.reshape(-1, q.shape[-1]), bank, k)):
            return _knn_fused(op, q, bank, k, bank_sqnorm)
    if exporting:  # training and the studies keep the plain form; parity tests compare the two
        return _knn_ranked(q, bank, k, bank_sqnorm)
    return _knn_torch(q, bank, k, bank_sqnorm)
