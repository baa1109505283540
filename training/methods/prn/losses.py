"""PRN's loss (algorithms.md 2.6): SmoothL1(sigma, M) + lambda * Focal(gamma)([1 - sigma, sigma], M)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(prob: torch.Tensor, mask: torch.Tensor, gamma: float = 4.0, alpha: float = 0.5,
               smooth: float = 1e-5) -> torch.Tensor:
    """DRAEM/PRNet's two-class focal loss on the foreground probability, with label smoothing.

    pt = p(true class) under targets clamped to [smooth, 1 - smooth]; loss = -alpha (1 - pt)^gamma log pt.
    alpha = 0.5 weighs both classes equally (PRNet passes a float, which DRAEM's code applies to both).
    """
    target = mask.clamp(smooth, 1.0 - smooth)
    pt = target * prob + (1.0 - target) * (1.0 - prob) + smooth
    return (-alpha * (1.0 - pt).pow(gamma) * pt.log()).mean()


def prn_loss(logits: torch.Tensor, mask: torch.Tensor, focal_weight: float = 5.0, gamma: float = 4.0) -> torch.Tensor:
    """logits and mask (B, 1, S, S); mask in {0, 1}."""
    prob = torch.sigmoid(logits)
    return F.smooth_l1_loss(prob, mask, beta=1.0) + focal_weight * focal_loss(prob, mask, gamma)
