"""CAS: context-aware segmentation head (algorithms.md 1.5; PFENet's feature enrichment module).

Inputs are the guide features G (B, Gd, h, w) and the k nearest-prototype distances S (B, k, h, w).
Changes from the published head: pyramid levels pool with kernel = stride = grid / bin cells (exact,
exports to ONNX AveragePool, and the same stride on both sides of a non-square grid), the dead ``inner_cls`` branch is gone (D13), and the output
stays at grid resolution: the caller resizes it to the input size it was given.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(cin, cout, k=1):
    return nn.Conv2d(cin, cout, kernel_size=k, padding=k // 2, bias=False)


def _double3x3(width):
    return nn.Sequential(_conv(width, width, 3), nn.ReLU(), _conv(width, width, 3), nn.ReLU())


def pool_by(x: torch.Tensor, step: int) -> torch.Tensor:
    """Average-pool a (B,C,h,w) map by step x step cells; step divides h and w (checked by the config)."""
    return x if step == 1 else F.avg_pool2d(x, kernel_size=step, stride=step)


class CAS(nn.Module):
    def __init__(self, guide_dim: int, k: int, width: int, steps: tuple[int, ...], dropout: float = 0.1):
        super().__init__()
        self.steps = tuple(steps)  # pooling strides in grid cells, finest first (PCSNetConfig.pool_steps)
        n = len(self.steps)
        self.corr = nn.ModuleList(nn.Sequential(_conv(guide_dim + k, width), nn.ReLU()) for _ in range(n))
        self.merge = nn.ModuleList(nn.Sequential(_conv(2 * width, width), nn.ReLU()) for _ in range(n - 1))
        self.refine = nn.ModuleList(_double3x3(width) for _ in range(n))
        self.fuse = nn.Sequential(_conv(n * width, width), nn.ReLU())
        self.fuse_refine = _double3x3(width)
        self.cls = nn.Sequential(_conv(width, width, 3), nn.ReLU(), nn.Dropout2d(dropout),
                                 nn.Conv2d(width, 1, kernel_size=1, bias=True))

    def forward(self, guide: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        """-> raw segmentation logits (B, 1, h, w) at the grid resolution."""
        h, w = guide.shape[-2:]
        x = torch.cat([guide, dist], dim=1)
        levels = []
        prev = None
        for i, step in enumerate(self.steps):
            m = self.corr[i](pool_by(x, step))
            if prev is not None:  # prev is at full grid resolution: pooled by the same step
                m = m + self.merge[i - 1](torch.cat([m, pool_by(prev, step)], dim=1))
            m = m + self.refine[i](m)
            if step != 1:
                m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
            levels.append(m)
            prev = m
        f = self.fuse(torch.cat(levels, dim=1))
        f = f + self.fuse_refine(f)
        return self.cls(f)
