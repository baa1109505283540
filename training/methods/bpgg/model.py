"""BPGG-style model: a labelled *reconstruction* after PANet, not BPGG's published method (no code exists).

Frozen backbone -> tapped stages resampled to the first stage's grid and concatenated -> small
trained 1x1-conv adapter -> embedding F (B, D, h, w). Two prototypes (normal, defect) come from
masked average pooling over support images; the defect probability of a pixel is
softmax_c(20 * cos(F(u), p_c))[defect], upsampled to S, blurred (sigma 4); image score = its max.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from protospect.training.layers import GaussianBlur
from protospect.training.methods.base import ModelOutputs

NORMAL, DEFECT = 0, 1


class AdaptedFeatures(nn.Module):
    """Normalised image -> (B, D, h, w) embedding: frozen backbone + the trained adapter."""

    def __init__(self, backbone: nn.Module, input_size: int, hidden: int, dim: int):
        super().__init__()
        self.backbone = backbone
        side = input_size // backbone.spec.reductions[0]
        self.grid = (side, side)
        self.adapter = nn.Sequential(
            nn.Conv2d(sum(backbone.spec.channels), hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, dim, 1))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone stages on one grid, concatenated (no gradient: the backbone is frozen)."""
        with torch.no_grad():
            feats = self.backbone(x)
            return torch.cat([f if tuple(f.shape[-2:]) == self.grid else
                              F.interpolate(f, size=self.grid, mode="bilinear", align_corners=False) for f in feats], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.raw(x))


def masked_average(feats: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """PANet's masked average pooling: (N, D, h, w), (N, 1, h, w) -> (N, D) = sum F*m / (sum m + 1e-5)."""
    return (feats * weights).sum(dim=(2, 3)) / (weights.sum(dim=(2, 3)) + 1e-5)


def prototypes(feats: torch.Tensor, defect_weights: torch.Tensor, min_weight: float = 1e-3) -> torch.Tensor:
    """(2, D) [normal, defect] prototypes from support embeddings and their defect masks on the grid.

    Per shot, then averaged over the shots where the class is present (PANet averages over shots;
    an inserted normal image has no defect pixels, so it only feeds the normal prototype).
    """
    protos = []
    for w in (1.0 - defect_weights, defect_weights):
        per_shot = masked_average(feats, w)
        present = (w.sum(dim=(1, 2, 3)) > min_weight).float().unsqueeze(1)
        protos.append((per_shot * present).sum(0) / present.sum().clamp_min(1.0))
    return torch.stack(protos)


def cosine_logits(feats: torch.Tensor, protos: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, D, h, w), (C, D) -> (B, C, h, w) = scale * cos; a 1x1 convolution, so it exports as Conv."""
    f = F.normalize(feats, dim=1, eps=1e-6)
    p = F.normalize(protos, dim=1, eps=1e-6)
    return scale * F.conv2d(f, p[:, :, None, None])


class BPGGModel(nn.Module):
    """AnomalyModel: normalised (B,3,S,S) -> ModelOutputs(defect probability, blurred; its max)."""

    def __init__(self, features: AdaptedFeatures, dim: int, input_size: int, cos_scale: float, blur_sigma: float, meta: dict):
        super().__init__()
        self.features = features
        self.register_buffer("prototypes", torch.zeros(2, dim))  # [normal, defect], set by fit
        self.input_size = (int(input_size), int(input_size))
        self.cos_scale = float(cos_scale)
        self.blur = GaussianBlur(blur_sigma)
        self.meta = meta
        self.calibration: dict = {}
        self.eval()

    def outputs(self, feats: torch.Tensor, protos: torch.Tensor) -> ModelOutputs:
        prob = torch.softmax(cosine_logits(feats, protos, self.cos_scale), dim=1)[:, DEFECT:DEFECT + 1]
        m = self.blur(F.interpolate(prob, size=self.input_size, mode="bilinear", align_corners=False))
        return ModelOutputs(anomaly_map=m, image_score=m.amax(dim=(1, 2, 3)))

    def forward(self, x: torch.Tensor) -> ModelOutputs:
        return self.outputs(self.features(x), self.prototypes)


def assemble(cfg, backbone: nn.Module, meta: dict) -> BPGGModel:
    features = AdaptedFeatures(backbone, cfg.input_size, cfg.hidden, cfg.dim)
    return BPGGModel(features, cfg.dim, cfg.input_size, cfg.cos_scale, cfg.blur_sigma, meta)
