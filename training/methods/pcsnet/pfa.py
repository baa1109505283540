"""PFA: the trainable descriptor on top of the frozen backbone (algorithms.md 1.4).

Per tapped stage: 3x3 average pooling (neighbourhood aggregation), a CoordConv 1x1 written as a
plain convolution over [features, constant coordinate channels] (defect D10: no parent conv, no
device calls), then bilinear resampling to one grid; the stages are concatenated to D channels.
The CAS guide is a learned 1x1 projection of all D channels (defect D12: no silent truncation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def coordinate_channels(h: int, w: int) -> torch.Tensor:
    """(1, 2, h, w) constant x and y in [-1, 1], as CoordConv appends them."""
    ys = torch.linspace(-1.0, 1.0, h).view(1, 1, h, 1).expand(1, 1, h, w)
    xs = torch.linspace(-1.0, 1.0, w).view(1, 1, 1, w).expand(1, 1, h, w)
    return torch.cat([xs, ys], dim=1).contiguous()


class CoordConv1x1(nn.Module):
    """1x1 conv over [x, coords]; the coordinates are a buffer sized for the stage's fixed grid."""

    def __init__(self, channels: int, size: tuple[int, int]):
        super().__init__()
        self.conv = nn.Conv2d(channels + 2, channels, kernel_size=1, bias=True)
        self.register_buffer("coords", coordinate_channels(*size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coords = self.coords.expand(x.shape[0], -1, -1, -1)
        return self.conv(torch.cat([x, coords], dim=1))


class PFA(nn.Module):
    """list of backbone stage maps -> phi (B, D, gh, gw), D = sum of the stage channels."""

    def __init__(self, channels: list[int], stage_sizes: list[tuple[int, int]], grid: tuple[int, int]):
        super().__init__()
        self.grid = tuple(grid)
        self.adapters = nn.ModuleList(CoordConv1x1(c, s) for c, s in zip(channels, stage_sizes))
        self.dim = int(sum(channels))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        out = []
        for f, adapter in zip(feats, self.adapters):
            f = adapter(F.avg_pool2d(f, kernel_size=3, stride=1, padding=1))
            if tuple(f.shape[-2:]) != self.grid:
                f = _to_grid(f, self.grid)
            out.append(f)
        return torch.cat(out, dim=1)


def _to_grid(f: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Upsample bilinearly; a finer stage is average-pooled instead (bilinear shrinking aliases)."""
    (h, w), (gh, gw) = f.shape[-2:], grid
    if h > gh and h % gh == 0 and w // gw == h // gh and w % gw == 0:
        return F.avg_pool2d(f, kernel_size=h // gh, stride=h // gh)
    return F.interpolate(f, size=(gh, gw), mode="bilinear", align_corners=False)
