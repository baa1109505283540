"""A small PatchCore-like AnomalyModel for export tests, independent of the training room.

Built from timm's efficientnet_lite0 (random weights: the graph, not the accuracy, is under test),
with the head the contract describes: 3x3 avg-pool, concat, GEMM squared distance to a bank,
TopK smallest, sqrt, upsample, GaussianBlur, max. It carries `.meta`, `.calibration` and `.split()`.
"""
from __future__ import annotations

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from protospect.training.layers import GaussianBlur, Normalize
from protospect.training.methods.base import ModelOutputs

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


class _Features(nn.Module):
    """Normalised (B,3,S,S) -> queries (B, N, D), N = h*w row-major."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = timm.create_model("efficientnet_lite0", features_only=True, out_indices=(2, 3), pretrained=False)
        self.backbone.eval()
        self.pool = nn.AvgPool2d(3, 1, 1)

    def forward(self, x):
        f2, f3 = self.backbone(x)
        f2 = self.pool(f2)
        f3 = F.interpolate(self.pool(f3), size=f2.shape[-2:], mode="bilinear", align_corners=False)
        f = torch.cat([f2, f3], dim=1)
        return f.flatten(2).transpose(1, 2)


class _Head(nn.Module):
    """knn_sqdist (B, N, k) -> ModelOutputs, on a grid of (h, w) upsampled to S."""

    def __init__(self, grid: int, size: int, sigma: float):
        super().__init__()
        self.grid, self.size = grid, size
        self.blur = GaussianBlur(sigma)

    def forward(self, knn_sqdist):
        d = knn_sqdist.clamp_min(0).sqrt().mean(dim=-1)  # (B, N)
        m = d.view(-1, 1, self.grid, self.grid)
        m = F.interpolate(m, size=(self.size, self.size), mode="bilinear", align_corners=False)
        m = self.blur(m)
        return ModelOutputs(anomaly_map=m, image_score=m.amax(dim=(1, 2, 3)))


class StandInPatchCore(nn.Module):
    def __init__(self, size: int = 64, k: int = 3, sigma: float = 1.0, seed: int = 0, bank_rows: int | None = None):
        super().__init__()
        self.features = _Features(seed)
        self.grid = size // 8
        self.head = _Head(self.grid, size, sigma)
        self.k = k
        d = 40 + 112
        self.register_buffer("bank", torch.zeros(bank_rows or self.grid * self.grid * 2, d))
        self.meta = {"method": "standin", "preset": "test", "backbone": "efficientnet_lite0",
                     "input_size": size, "mean": MEAN, "std": STD, "config": {"k": k, "sigma": sigma}}
        self.calibration = {"threshold": 0.0, "map_range": [0.0, 1.0]}
        self.eval()

    def forward(self, x):
        q = self.features(x)                                           # (B, N, D)
        b = self.bank
        d2 = (q * q).sum(-1, keepdim=True) + (b * b).sum(-1)[None, None, :] - 2.0 * (q @ b.t())
        knn = torch.topk(d2, self.k, dim=-1, largest=False).values
        return self.head(knn)

    def split(self):
        return self.features, self.bank.clone(), self.k, self.head

    @torch.no_grad()
    def fit_bank(self, shots_rgb: list[np.ndarray]):
        """Fill the bank from normal images and set threshold/map_range from them (as fit would)."""
        norm = Normalize(MEAN, STD)
        x = torch.stack([torch.from_numpy(s).permute(2, 0, 1).float() / 255.0 for s in shots_rgb])
        q = self.features(norm(x)).reshape(-1, self.bank.shape[1])
        idx = torch.randperm(q.shape[0], generator=torch.Generator().manual_seed(0))[: self.bank.shape[0]]
        self.bank.copy_(q[idx])
        out = self(norm(x))
        lo, hi = float(out.anomaly_map.min()), float(out.anomaly_map.max())
        self.calibration = {"threshold": float(out.image_score.max()) * 1.05, "map_range": [lo, hi]}
        return self
