"""The deployable PCSNet: features (backbone + PFA + guide) -> prototype k-NN -> head (CAS + blur + max).

The three parts are separate modules so ``split()`` can hand them to the split export unchanged
(docs/contracts.md sections 4 and 6); ``forward`` chains them exactly as the split runtime does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from protospect.training.layers import GaussianBlur, patch_grid
from protospect.training.methods.base import ModelOutputs
from protospect.training.proto_topk import knn_sqdist

from protospect.errors import ConfigError

from .cas import CAS
from .global_branch import GlobalBranch
from .pfa import PFA
from .presets import PCSNetConfig
from .scoring import ForegroundMask, MapFusion, NearestNeighbourBranch

SQRT_EPS = 1e-12  # distances are square-rooted after clamping here: no NaN, finite gradient (D7)


class PCSNetFeatures(nn.Module):
    """normalised image (B,3,H,W) -> queries (B, N, D) row-major grid positions, guide (B, G, h, w)."""

    def __init__(self, backbone: nn.Module, cfg: PCSNetConfig):
        super().__init__()
        self.backbone = backbone
        spec = backbone.spec
        h, w = cfg.hw
        sizes = [(h // r, w // r) for r in spec.reductions]
        self.pfa = PFA(list(spec.channels), sizes, cfg.grid_hw)
        self.guide = nn.Conv2d(self.pfa.dim, cfg.guide_dim, kernel_size=1, bias=True)

    @property
    def dim(self) -> int:
        return self.pfa.dim

    def from_backbone(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """PFA descriptor phi (B,D,h,w) and guide (B,G,h,w) from precomputed backbone maps."""
        phi = self.pfa(feats)
        return phi, self.guide(phi)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        phi, guide = self.from_backbone(self.backbone(x))
        return as_queries(phi), guide


def greedy_coreset(x: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of m rows of x chosen by farthest-point (k-centre) selection, as PatchCore thins its bank;
    deterministic: it starts from the row nearest the mean, and every next row is the one farthest from
    those already chosen, so the kept prototypes cover the features with the smallest radius greedily."""
    x = x.float()
    first = int(((x - x.mean(0)) ** 2).sum(1).argmin())
    chosen = torch.empty(m, dtype=torch.long, device=x.device)
    chosen[0] = first
    nearest = ((x - x[first]) ** 2).sum(1)
    for i in range(1, m):  # indices stay tensors: no host round trip per step on a GPU
        nxt = nearest.argmax()
        chosen[i] = nxt
        nearest = torch.minimum(nearest, ((x - x[nxt]) ** 2).sum(1))
    return chosen


def as_queries(phi: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) -> (B, h*w, D), positions in row-major order."""
    return phi.flatten(2).transpose(1, 2)


class PCSNetHead(nn.Module):
    """k nearest squared distances (B, N, k) + guide (B, G, h, w) -> ModelOutputs at the input's H x W."""

    def __init__(self, cfg: PCSNetConfig):
        super().__init__()
        self.cas = CAS(cfg.guide_dim, cfg.k, cfg.cas_width, cfg.pool_steps, cfg.dropout)
        self.blur = GaussianBlur(cfg.blur_sigma)
        self.out_size = cfg.hw

    def logits(self, knn_sq: torch.Tensor, guide: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        """Raw (unblurred) segmentation map (B, 1, *out_size); what L_SEG trains."""
        b, n, k = knn_sq.shape
        h, w = guide.shape[-2:]
        dist = knn_sq.clamp_min(SQRT_EPS).sqrt().transpose(1, 2).reshape(b, k, h, w)
        m = self.cas(guide, dist)
        return F.interpolate(m, size=out_size, mode="bilinear", align_corners=False)

    def forward(self, knn_sqdist: torch.Tensor, guide: torch.Tensor, out_size: tuple[int, int] | None = None) -> ModelOutputs:
        size = out_size if out_size is not None else self.out_size
        m = self.blur(self.logits(knn_sqdist, guide, size))
        return ModelOutputs(anomaly_map=m, image_score=m.flatten(1).amax(dim=1))


class PCSNetModel(nn.Module):
    """AnomalyModel: forward(normalised x) -> ModelOutputs; carries meta, calibration and the bank."""

    def __init__(self, backbone: nn.Module, cfg: PCSNetConfig, meta: dict, global_backbone: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.features = PCSNetFeatures(backbone, cfg)
        self.head = PCSNetHead(cfg)
        self.k = int(cfg.k)
        self.register_buffer("bank", torch.zeros(cfg.n_prototypes, self.features.dim))
        self.meta = meta
        self.calibration: dict = {}
        # image-level decision (scoring.py); None on the original model, which keeps its exact graph
        nn_rows = int((meta.get("nn_bank_shape") or [0])[0])
        self.nn = (NearestNeighbourBranch(nn_rows, sum(backbone.spec.channels), cfg.blur_sigma)
                   if cfg.fusion == "pcsnet+nn" else None)
        self.fusion = (None if cfg.plain else
                       MapFusion(2 if self.nn is not None else 1, cfg.hw, cfg.normalise,
                                 cfg.image_score, cfg.score_top_fraction))
        self.foreground = ForegroundMask(sum(backbone.spec.channels)) if cfg.foreground == "pca" else None
        self.global_branch = None  # rule v13's whole-image score (global_branch.py), fused into image_score
        if cfg.image_branch == "global":
            if global_backbone is None:
                raise ConfigError("pcsnet: image_branch=global needs its backbone (global_branch.G_STAGES at 256 px)")
            self.attach_global(global_backbone, int((meta.get("global_bank_shape") or [1])[0]))
        self.eval()

    def attach_global(self, global_backbone: nn.Module, shots: int) -> None:
        self.global_branch = GlobalBranch(global_backbone, self.cfg.hw, shots).to(self.bank.device)
        self.global_branch.share_trunk(self.features.backbone)

    @property
    def n_maps(self) -> int:
        """How many of branch_maps' entries are maps (a foreground mask, when there is one, comes last)."""
        return 1 + (self.nn is not None)

    @torch.no_grad()
    def set_nn_bank(self, per_shot: torch.Tensor) -> None:
        """nn bank = every patch of every shot view, (K, V*N, D) -> (K*V*N, D); its shape goes into meta for build()."""
        self.nn.bank = per_shot.reshape(-1, per_shot.shape[-1]).contiguous().to(self.bank.device)
        self.meta["nn_bank_shape"] = list(self.nn.bank.shape)

    def branch_maps(self, x: torch.Tensor, nn_bank: torch.Tensor | None = None,
                    feats: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """The maps the decision fuses, (B, 1, H, W) each: PCSNet's CAS map [, the nearest-neighbour map]
        [, the foreground mask]. ``feats``: the backbone's output on x, when the caller has it."""
        size = (int(x.shape[-2]), int(x.shape[-1]))
        feats = self.features.backbone(x) if feats is None else feats
        phi, guide = self.features.from_backbone(feats)
        maps = [self.head(self.knn(as_queries(phi)), guide, out_size=size).anomaly_map]
        # the nn branch and the foreground mask read the same patch grid: pooled once per frame
        grid = patch_grid(feats) if (self.nn is not None or self.foreground is not None) else None
        if self.nn is not None:
            maps.append(self.nn.from_grid(grid, size, nn_bank))
        if self.foreground is not None:
            maps.append(self.foreground.from_grid(grid, size))
        return maps

    def decide(self, maps: list[torch.Tensor]) -> ModelOutputs:
        mask = maps[self.n_maps] if self.foreground is not None else None
        fused = self.fusion.fuse(maps[: self.n_maps])
        # the map stays whole (localisation is unchanged); only the image score ignores the background
        return ModelOutputs(anomaly_map=fused, image_score=self.fusion.score(fused, mask))

    @torch.no_grad()
    def set_bank_from_backbone(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Prototypes = per-position mean of the shots' PFA features, eval mode, no grad (fixes D3).

        Returns the per-shot features (K, M, D) the mean was taken over: the bank is built from the
        *untrained* PFA and frozen, so a leave-one-out bank must be rebuilt from these, not from the
        trained PFA's features.
        """
        was_training = self.training
        self.eval()
        phi, _ = self.features.from_backbone(feats)
        per_shot = as_queries(phi)
        self.bank.copy_(self.bank_from_shots(per_shot))
        self.train(was_training)
        return per_shot

    @torch.no_grad()
    def bank_from_shots(self, per_shot: torch.Tensor) -> torch.Tensor:
        """(K, gh*gw, D) per-shot features -> the (M, D) bank: their per-position mean, thinned to a
        greedy coreset when cfg.prototypes is set (the top-k cost grows with M; docs/decision.md section 11).
        Leave-one-out banks are built by the same function, so calibration sees what the station runs."""
        mean = per_shot.mean(dim=0)
        m = self.cfg.n_prototypes  # the config's cap, already min(prototypes, grid^2)
        return mean if m >= mean.shape[0] else mean[greedy_coreset(mean, m)]

    def knn(self, queries: torch.Tensor) -> torch.Tensor:
        sq, _ = knn_sqdist(queries, self.bank, self.k)
        return sq

    def map_outputs(self, x: torch.Tensor, feats: list[torch.Tensor]) -> ModelOutputs:
        """The map and its image score without the global branch, from the backbone's output ``feats`` on x."""
        if self.fusion is not None:
            return self.decide(self.branch_maps(x, feats=feats))
        phi, guide = self.features.from_backbone(feats)
        return self.head(self.knn(as_queries(phi)), guide, out_size=(int(x.shape[-2]), int(x.shape[-1])))

    def forward(self, x: torch.Tensor) -> ModelOutputs:
        feats = self.features.backbone(x)  # once: the global branch may read its last stage too
        out = self.map_outputs(x, feats)
        if self.global_branch is not None:  # the map stays PCSNet's; the image score adds the composition
            out = ModelOutputs(anomaly_map=out.anomaly_map,
                               image_score=self.global_branch.fuse(out.image_score, x, feats))
        return out

    def split(self) -> tuple[nn.Module, torch.Tensor, int, nn.Module]:
        """(features_module, bank (M, D), k, head_module) for the split export (the plain model only)."""
        if self.global_branch is not None:
            raise ConfigError("the split export (custom top-k kernel) does not carry the global branch "
                              "(image_branch=global); export this model as one graph instead")
        if self.fusion is not None:
            raise ConfigError("the split export (custom top-k kernel) supports only the plain PCSNet map "
                              "(--set fusion=pcsnet --set normalise=none --set image_score=max); "
                              "export this model as one graph instead")
        return self.features, self.bank, self.k, self.head
