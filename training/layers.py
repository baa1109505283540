"""Small exportable layers shared by every method: input normalisation and the Gaussian blur.

Both are fixed convolutions/arithmetics with constant buffers, so they export to plain ONNX ops
(no scipy in the graph) and match between PyTorch, ONNX Runtime and TensorRT.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std on a float (B,3,H,W) tensor in [0, 1]."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter's kernel: radius = int(truncate * sigma + 0.5)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


class GaussianBlur(nn.Module):
    """Separable Gaussian blur of a (B,1,H,W) map with reflect padding (scipy's default 'reflect').

    sigma <= 0 makes it the identity. Reflect padding keeps borders from darkening, as scipy does.
    """

    def __init__(self, sigma: float = 4.0):
        super().__init__()
        self.sigma = float(sigma)
        k = gaussian_kernel1d(sigma) if sigma > 0 else torch.ones(1)
        self.radius = (k.numel() - 1) // 2
        self.register_buffer("kx", k.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("ky", k.view(1, 1, -1, 1), persistent=False)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        if self.radius == 0:
            return m
        r = self.radius
        # 'reflect' in torch excludes the edge pixel; scipy's 'reflect' includes it = torch 'symmetric'.
        # Symmetric padding is built by concatenating flipped edges (exportable, unlike mode='symmetric').
        m = torch.cat([m[..., :, :r].flip(-1), m, m[..., :, -r:].flip(-1)], dim=-1)
        m = F.conv2d(m, self.kx)
        m = torch.cat([m[..., :r, :].flip(-2), m, m[..., -r:, :].flip(-2)], dim=-2)
        return F.conv2d(m, self.ky)


def patch_grid(feats: list[torch.Tensor]) -> torch.Tensor:
    """PatchCore's locally aware patch features: 3x3 average per stage (padding not counted, so border
    patches are not darkened), every stage resampled to the first stage's grid, concatenated."""
    h, w = feats[0].shape[-2:]
    pooled = []
    for f in feats:
        f = F.avg_pool2d(f, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        if f.shape[-2:] != (h, w):
            f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
        pooled.append(f)
    return torch.cat(pooled, dim=1)
