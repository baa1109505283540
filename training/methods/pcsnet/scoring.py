"""From maps to the image-level decision: a nearest-neighbour branch, normal statistics, fusion, image score.

PCSNet's map localises well, but its plain maximum separated good from defective parts no better
than PatchCore's (docs/decision.md). The pieces here are the candidates that study measured; the
config fields that pick them (presets.py) are:

* ``fusion``: "pcsnet" (the CAS map alone) or "pcsnet+nn" (plus a training-free nearest-neighbour
  map over *every* patch of every shot on the same frozen backbone features: no per-position
  averaging, so shifted or rotated parts still find their match);
* ``nn_rotations``: 1, or 4 (the shots rotated by 0/90/180/270 degrees join the nn bank);
* ``normalise``: "none", "global" (each map minus its normal mean, over its normal std) or
  "position" (the same per map position, shrunk towards the global figures because K shots give
  only 4K samples a position);
* ``image_score``: "max", "top" (mean of the top ``score_top_fraction`` of the map) or "peak" (the
  maximum of the map minus its local background, the mean over a window of a quarter of the image
  side: broad heat over content the shots never showed cancels, a small defect's peak stays);
* ``foreground``: "none" or "pca": the image score reads only the part, not the background around
  it. The mask is label-free, as training-free few-shot methods derive it: the first principal
  component of the shots' patch features, thresholded by Otsu, with the sign that puts the image
  border on the background side. It switches itself off (mask of ones) unless the shots look like
  an object on a background (ForegroundMask.fit); textures and full-frame parts keep every pixel.

Normal statistics come from the shots alone (leave-one-out plus jitter, threshold.py) and live in
buffers, so they are in the artifact's state_dict and in the ONNX graph as initializers.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from protospect.imageio import hw_of
from protospect.training.layers import GaussianBlur, patch_grid
from protospect.training.proto_topk import knn_sqdist

SHRINK_SAMPLES = 4.0  # per-position statistics count as if pooled with this many global samples
STD_FLOOR = 1e-6
PEAK_POOL = 4  # the background is estimated on the map pooled 4 x 4 (the map is blurred: no detail lost)


class NearestNeighbourBranch(nn.Module):
    """Backbone maps -> distance of every patch to its nearest shot patch, at S x S, blurred (sigma as PCSNet's)."""

    def __init__(self, bank_rows: int, dim: int, sigma: float):
        super().__init__()
        self.register_buffer("bank", torch.zeros(bank_rows, dim))
        self.blur = GaussianBlur(sigma)

    def forward(self, feats: list[torch.Tensor], out_size: tuple[int, int], bank: torch.Tensor | None = None) -> torch.Tensor:
        return self.from_grid(patch_grid(feats), out_size, bank)

    def from_grid(self, g: torch.Tensor, out_size: tuple[int, int], bank: torch.Tensor | None = None) -> torch.Tensor:
        """The same from the patch grid (B, D, h, w), when the caller has it already (the foreground mask uses it too)."""
        b, _, h, w = g.shape
        sq, _ = knn_sqdist(g.flatten(2).transpose(1, 2), self.bank if bank is None else bank, 1)
        d = sq[..., 0].clamp_min(0.0).sqrt().reshape(b, 1, h, w)
        return self.blur(F.interpolate(d, size=out_size, mode="bilinear", align_corners=False))


def rotated_views(images: list, rotations: int) -> list[list]:
    """Per shot, the views whose patches enter the nn bank: the shot and its 90-degree rotations."""
    return [[np.ascontiguousarray(np.rot90(img, r)) for r in range(rotations)] for img in images]


FG_MIN, FG_MAX = 0.05, 0.85  # the part covers 5-85 % of every shot's interior, else there is no object/background split
FG_MARGIN = 2  # patches at the image edge that zero padding colours (left out of the fit)
FG_BORDER_MAX = 0.25  # at most this much of the image's outer ring may be foreground (background surrounds the part)


def otsu(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample: the cut maximising the between-class variance."""
    v = values.double()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist = torch.histc(v, bins, lo, hi)
    centres = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    centres = 0.5 * (centres[1:] + centres[:-1])
    w0 = torch.cumsum(hist, 0)
    w1 = hist.sum() - w0
    m0 = torch.cumsum(hist * centres, 0) / w0.clamp_min(1)
    m1 = ((hist * centres).sum() - torch.cumsum(hist * centres, 0)) / w1.clamp_min(1)
    between = w0 * w1 * (m0 - m1) ** 2
    i = int(torch.argmax(between[:-1]))
    return float(0.5 * (centres[i] + centres[i + 1]))


def border_ring(h: int, w: int, width: int = 1) -> torch.Tensor:
    """(h, w) bool: the outer ``width`` rows and columns."""
    ring = torch.ones(h, w, dtype=torch.bool)
    ring[width:h - width, width:w - width] = False
    return ring


class ForegroundMask(nn.Module):
    """Backbone maps -> {0,1} mask (B,1,S,S) of the part: PC1 of the patch features above a threshold, dilated."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("centre", torch.zeros(dim))
        self.register_buffer("axis", torch.zeros(dim))
        self.register_buffer("threshold", torch.zeros(()))
        # 0 = off: every pixel counts (also the state before fit); 1 = the shots show a part on a background
        self.register_buffer("active", torch.zeros(()))

    def grid_mask(self, g: torch.Tensor, dilate: bool = True) -> torch.Tensor:
        """Patch grid (B, D, h, w) -> foreground (B, 1, h, w) in {0, 1}, dilated by one patch."""
        proj = ((g - self.centre[None, :, None, None]) * self.axis[None, :, None, None]).sum(1, keepdim=True)
        fg = (proj > self.threshold).to(g.dtype)
        if dilate:  # one patch of margin: a defect on the rim stays in
            fg = F.max_pool2d(fg, 3, stride=1, padding=1)
        return torch.maximum(fg, 1.0 - self.active)  # off -> ones

    def forward(self, feats: list[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        return self.from_grid(patch_grid(feats), out_size)

    def from_grid(self, g: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.grid_mask(g), size=out_size, mode="nearest")

    @torch.no_grad()
    def fit(self, shot_grids: torch.Tensor) -> dict:
        """shot_grids: (K, D, h, w) patch features of the shots. Sets the buffers; returns what was found.

        The outer FG_MARGIN patches are left out of the principal component and the threshold: zero
        padding makes them differ from the interior whatever they show, and PC1 would find that instead
        of part vs background. The sign is set by the band just inside them, which must be background.
        """
        k, d, h, w = shot_grids.shape
        inner = ~border_ring(h, w, FG_MARGIN)
        band = border_ring(h, w, FG_MARGIN + 1) & inner
        x = shot_grids.permute(0, 2, 3, 1)[:, inner].reshape(-1, d).double()
        centre = x.mean(0)
        cov = (x - centre).T @ (x - centre) / max(1, x.shape[0] - 1)
        axis = torch.linalg.eigh(cov)[1][:, -1]
        proj = torch.einsum("kdhw,d->khw", shot_grids.double() - centre[None, :, None, None], axis)
        if proj[:, band].mean() > proj[:, inner & ~band].mean():  # the band is background: below the cut
            axis, proj = -axis, -proj
        thr = otsu(proj[:, inner].flatten())
        self.centre.copy_(centre.float())
        self.axis.copy_(axis.float())
        self.threshold.fill_(thr)
        self.active.fill_(1.0)
        fg = self.grid_mask(shot_grids.float(), dilate=False)[:, 0].bool()  # the part itself, no margin
        cover = fg[:, inner].float().mean(1)
        border = float(fg[:, band].float().mean())
        ok = bool(cover.min() >= FG_MIN and cover.max() <= FG_MAX and border <= FG_BORDER_MAX)
        self.active.fill_(1.0 if ok else 0.0)
        return {"active": ok, "cover": [round(float(c), 3) for c in cover], "border": round(border, 3)}


class MapFusion(nn.Module):
    """Branch maps (B,1,H,W) each -> one map: sum of (map - mean) / std per branch, then the image score."""

    def __init__(self, branches: int, size: int | tuple[int, int], normalise: str, image_score: str, top_fraction: float):
        super().__init__()
        h, w = hw_of(size)
        side = (h, w) if normalise == "position" else (1, 1)
        self.register_buffer("mean", torch.zeros(branches, *side))
        self.register_buffer("std", torch.ones(branches, *side))
        self.normalise = normalise
        self.image_score = image_score
        self.top = max(1, int(round(top_fraction * h * w)))
        # background window: a quarter of the shorter side, counted in pooled cells, odd so it is centred
        self.peak_window = 2 * max(1, min(h, w) // (PEAK_POOL * 8)) + 1

    def fuse(self, maps: list[torch.Tensor]) -> torch.Tensor:
        if self.normalise == "none":
            return maps[0] if len(maps) == 1 else torch.stack(maps).sum(0)
        return sum((m - self.mean[i]) / self.std[i] for i, m in enumerate(maps))

    def score(self, fused: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.image_score == "peak":
            fused = fused - self.background(fused)
        if mask is not None:  # background pixels take the image's lowest value: they can no longer decide
            fused = torch.where(mask > 0, fused, fused.amin(dim=(2, 3), keepdim=True))
        flat = fused.flatten(1)
        if self.image_score == "top":
            return torch.topk(flat, self.top, dim=1).values.mean(dim=1)
        return flat.amax(dim=1)

    def background(self, m: torch.Tensor) -> torch.Tensor:
        """Local mean of the map over a window of a quarter of the image side, at full resolution."""
        small = F.avg_pool2d(m, PEAK_POOL, PEAK_POOL)
        w = self.peak_window
        bg = F.avg_pool2d(small, w, stride=1, padding=w // 2, count_include_pad=False)
        return F.interpolate(bg, size=m.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def set_statistics(self, normal_maps: list[torch.Tensor]) -> None:
        """normal_maps: per branch (n, 1, S, S) maps of held-out normal views (leave-one-out + jitter)."""
        for i, m in enumerate(normal_maps):
            m = m[:, 0].double()
            g_mean, g_var = m.mean(), m.var()
            if self.normalise == "position":
                n = float(m.shape[0])
                p_mean = m.mean(0)
                p_var = m.var(0, unbiased=True) if m.shape[0] > 1 else torch.zeros_like(p_mean)
                mean = (n * p_mean + SHRINK_SAMPLES * g_mean) / (n + SHRINK_SAMPLES)
                var = (n * p_var + SHRINK_SAMPLES * g_var) / (n + SHRINK_SAMPLES)
            else:
                mean, var = g_mean.reshape(1, 1), g_var.reshape(1, 1)
            self.mean[i].copy_(mean.float().expand_as(self.mean[i]))
            self.std[i].copy_(var.clamp_min(STD_FLOOR ** 2).sqrt().float().expand_as(self.std[i]))
