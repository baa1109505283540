"""CAS: context-aware segmentation head (algorithms.md 1.5; PFENet's feature enrichment module).

Inputs are the guide features G (B, Gd, h, w) and the k nearest-prototype distances S (B, k, h, w).
Changes from the published head: pyramid bins divide the grid and pooling uses kernel = stride
(exact, exports to ONNX AveragePool), the dead ``inner_cls`` branch is gone (D13), and the output
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


def pool_to(x: torch.Tensor, bins: int) -> torch.Tensor:
    """Average-pool a (B,C,n,n) map to bins x bins; bins divides n (checked by the config)."""
    step = x.shape[-1] // bins
    return x if step == 1 else F.avg_pool2d(x, kernel_size=step, stride=step)


class CAS(nn.Module):
    def __init__(self, guide_dim: int, k: int, width: int, bins: tuple[int, ...], dropout: float = 0.1):
        super().__init__()
        self.bins = tuple(bins)
        self.corr = nn.ModuleList(nn.Sequential(_conv(guide_dim + k, width), nn.ReLU()) for _ in bins)
        self.merge = nn.ModuleList(nn.Sequential(_conv(2 * width, width), nn.ReLU()) for _ in bins[1:])
        self.refine = nn.ModuleList(_double3x3(width) for _ in bins)
        self.fuse = nn.Sequential(_conv(len(bins) * width, width), nn.ReLU())
        self.fuse_refine = _double3x3(width)
        self.cls = nn.Sequential(_conv(width, width, 3), nn.ReLU(), nn.Dropout2d(dropout),
                                 nn.Conv2d(width, 1, kernel_size=1, bias=True))

    def forward(self, guide: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        """-> raw segmentation logits (B, 1, h, w) at the grid resolution."""
        h, w = guide.shape[-2:]
        x = torch.cat([guide, dist], dim=1)
        levels = []
        prev = None
        for i, b in enumerate(self.bins):
            m = self.corr[i](pool_to(x, b))
            if prev is not None:
                m = m + self.merge[i - 1](torch.cat([m, pool_to(prev, b)], dim=1))
            m = m + self.refine[i](m)
            if b != h:
                m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
            levels.append(m)
            prev = m
        f = self.fuse(torch.cat(levels, dim=1))
        f = f + self.fuse_refine(f)
        return self.cls(f)
