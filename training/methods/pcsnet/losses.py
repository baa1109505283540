"""PCSNet's four losses (algorithms.md 1.7), on *squared* distances, with D1 fixed.

All distance hinges use the squared L2 distance d^2 to the loss_k nearest prototypes, as CFA
(PCSNet's parent) does: r and alpha are then in feature-distance units on both sides of the margin
and no sqrt sits in the gradient path of NFC/AFS (D7). With d^2:

* L_NFC = 1/nu * mean over clean pixels and their loss_k nearest prototypes of max(0, d^2 - r^2);
* L_AFS = 1/nu * mean over pseudo-anomalous grid cells (the binarised mask at grid resolution)
  and their loss_k nearest prototypes of max(0, (r + alpha)^2 - d^2); the published code ran the
  top-k over a spatial axis of a masked tensor, so the term was constant (D1);
* L_PDC: an image's score s is the mean of its pdc_topk largest nearest-prototype distances
  (square-rooted, as published). The published CrossEntropy over a (B,) vector with float targets
  is, for B = 2 with one anomaly, exactly softplus(s_normal - s_anomalous); for larger batches it
  becomes a badly scaled multi-positive softmax. We keep its meaning, a logistic *ranking* loss,
  and average softplus(s_n - s_a) over every (normal, pseudo-anomalous) pair in the batch;
* L_SEG = MSE between the raw CAS map at S x S and the binary mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .presets import PCSNetConfig

SQRT_EPS = 1e-12


class PCSNetLoss(nn.Module):
    """Holds the learnable radius r (trained with the PFA's learning rate)."""

    def __init__(self, cfg: PCSNetConfig):
        super().__init__()
        self.cfg = cfg
        self.r = nn.Parameter(torch.tensor(float(cfg.r_init)))

    def nfc(self, sq: torch.Tensor) -> torch.Tensor:
        """sq: (B, N, >=loss_k) squared distances of clean images."""
        d = sq[..., : self.cfg.loss_k]
        return F.relu(d - self.r ** 2).mean() / self.cfg.nu

    def afs(self, sq: torch.Tensor, cell_mask: torch.Tensor) -> torch.Tensor:
        """sq: (B, N, >=loss_k); cell_mask: (B, N) bool, the pseudo-anomalous grid cells."""
        d = sq[..., : self.cfg.loss_k][cell_mask]  # (P, loss_k): 3-NN over the prototype axis
        if d.numel() == 0:
            return sq.sum() * 0.0  # no anomalous cell at this resolution: a zero that keeps the graph
        return F.relu((self.r + self.cfg.alpha) ** 2 - d).mean() / self.cfg.nu

    def image_scores(self, sq: torch.Tensor) -> torch.Tensor:
        """(B,) mean of the pdc_topk largest nearest-prototype distances of each image."""
        d = sq[..., : self.cfg.loss_k].clamp_min(SQRT_EPS).sqrt().flatten(1)
        return d.topk(min(self.cfg.pdc_topk, d.shape[1]), dim=1).values.mean(dim=1)

    def pdc(self, sq: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s = self.image_scores(sq)
        s_n, s_a = s[labels == 0], s[labels == 1]
        if s_n.numel() == 0 or s_a.numel() == 0:
            return s.sum() * 0.0
        return F.softplus(s_n[:, None] - s_a[None, :]).mean()

    @staticmethod
    def seg(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits, masks)

    def forward(self, sq, labels, cell_mask, logits, masks) -> dict[str, torch.Tensor]:
        """sq (B,N,k) for a batch of clean (label 0) and pseudo-anomalous (label 1) images."""
        terms = {
            "nfc": self.nfc(sq[labels == 0]),
            "afs": self.afs(sq, cell_mask & (labels == 1)[:, None]),
            "pdc": self.pdc(sq, labels),
            "seg": self.seg(logits, masks),
        }
        terms["total"] = terms["nfc"] + terms["afs"] + self.cfg.w_pdc * terms["pdc"] + self.cfg.w_seg * terms["seg"]
        return terms


def grid_cell_mask(masks: torch.Tensor, grid: int | tuple[int, int], threshold: float) -> torch.Tensor:
    """(B,1,H,W) {0,1} masks -> (B, gh*gw) bool: cells whose pseudo-anomalous fraction >= threshold."""
    frac = F.adaptive_avg_pool2d(masks, grid)  # H and W are multiples of the grid in every preset
    return (frac >= threshold).flatten(1)
