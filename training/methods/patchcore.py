"""PatchCore, training-free: the yardstick PCSNet has to beat, and a zero-training mode.

fit:     K shots -> frozen backbone -> 3x3 locally aggregated patch features -> bank (every patch of every shot)
forward: image -> same patch features -> nearest bank entry (squared L2, one GEMM) -> sqrt
         -> bilinear to S x S -> Gaussian sigma 4 -> image score = map maximum

No coreset: at K <= 8 the bank is at most 8 x 32 x 32 = 8192 rows for the edge preset.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from protospect.errors import ConfigError
from protospect.training.methods.config import resolve_preset
from protospect.training.calibrate import calibrate_by_holdout, to_model_input
from protospect.training.layers import GaussianBlur, patch_grid
from protospect.training.methods.base import ModelOutputs
from protospect.training.proto_topk import knn_sqdist as _shared_knn_sqdist

log = logging.getLogger(__name__)


def knn_sqdist(q: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N, D) x (M, D) -> (B, N, k) smallest squared L2 distances, ascending (the shared hot spot,
    docs/contracts.md section 8)."""
    return _shared_knn_sqdist(q, bank, k)[0]


@dataclass(frozen=True)
class PatchCoreConfig:
    backbone: str
    stages: tuple[int, ...]
    input_size: int
    sigma: float = 4.0  # Gaussian smoothing of the upsampled map, as in PatchCore
    backbone_weights: str | None = None  # None = the backbone's default (packaged ImageNet weights)
    calibration_margin: float = 1.0  # threshold = margin * max(held-out normal score), see calibrate.py
    calibration_views: int = 8  # K = 1 only: augmented views of the single shot used as normal samples
    category: str | None = None  # recorded only (eval/train pass it to every method; pcsnet/prn use it for NSA)


PRESETS = {
    "edge": PatchCoreConfig(backbone="efficientnet_lite0", stages=(2, 3), input_size=256),
    # PatchCore's paper setting: WRN-50 layer2 + layer3 at 224 (their 256 -> centre-crop 224; we never crop).
    "paper": PatchCoreConfig(backbone="wide_resnet50_2", stages=(2, 3), input_size=224),
}


def resolve_config(preset: str, overrides: dict | None = None) -> PatchCoreConfig:
    """The preset's config with ``overrides`` applied (training/methods/config.py: None keeps the preset's value)."""
    cfg = resolve_preset("patchcore", PRESETS, preset, overrides)
    if cfg.input_size < 32:
        raise ConfigError(f"input size {cfg.input_size} is too small for patchcore (use >= 32)")
    return cfg


class PatchFeatures(nn.Module):
    """Normalised image (B,3,S,S) -> locally aware patch features (B, N, D) on the first tapped stage's grid."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def grid(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return patch_grid(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.grid(self.backbone(x))
        return g.flatten(2).transpose(1, 2)  # (B, h*w, D), row-major positions


class NearestNeighbourHead(nn.Module):
    """knn squared distances (B, N, k) -> ModelOutputs: sqrt of the nearest, map at S x S, blurred, max."""

    def __init__(self, grid_hw: tuple[int, int], input_size: int, sigma: float):
        super().__init__()
        self.grid_hw = tuple(int(v) for v in grid_hw)
        self.input_size = int(input_size)
        self.blur = GaussianBlur(sigma)

    def forward(self, knn_sqdist: torch.Tensor) -> ModelOutputs:
        h, w = self.grid_hw
        d = knn_sqdist[..., 0].clamp_min(0.0).sqrt()  # clamp again: fp16 engines can go below 0
        m = d.reshape(-1, 1, h, w)
        m = F.interpolate(m, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        m = self.blur(m)
        return ModelOutputs(anomaly_map=m, image_score=m.amax(dim=(1, 2, 3)))


class PatchCoreModel(nn.Module):
    """The AnomalyModel of docs/contracts.md section 4 (bank stored as a buffer so it is in the state_dict)."""

    k = 1

    def __init__(self, features: PatchFeatures, bank: torch.Tensor, head: NearestNeighbourHead, meta: dict):
        super().__init__()
        self.features = features
        self.head = head
        self.register_buffer("bank", bank.contiguous())
        self.meta = meta
        self.calibration: dict = {}
        self.eval()

    def forward(self, x: torch.Tensor) -> ModelOutputs:
        return self.head(knn_sqdist(self.features(x), self.bank, self.k))

    def split(self):
        """(features_module, bank (M, D), k, head_module) for the split export (contracts section 6)."""
        return self.features, self.bank, self.k, self.head


def _create_backbone(cfg: PatchCoreConfig, weights):
    from protospect.training.backbones import create_backbone  # noqa: PLC0415 (heavy: timm/torchvision)

    return create_backbone(cfg.backbone, stages=cfg.stages, weights=weights, input_size=cfg.input_size)


@functools.lru_cache(maxsize=2)
def _shared_pretrained_backbone(name: str, stages: tuple[int, ...], weights: str | None, input_size: int):
    """fit() reuses one frozen backbone across the K x seed loop of an evaluation (it is never modified)."""
    cfg = PatchCoreConfig(backbone=name, stages=stages, input_size=input_size)
    return _create_backbone(cfg, weights)


def _grid_hw(features: PatchFeatures, size: int) -> tuple[int, int]:
    with torch.no_grad():
        return tuple(features.grid(features.backbone(torch.zeros(1, 3, size, size))).shape[-2:])


def _assemble(cfg: PatchCoreConfig, backbone: nn.Module, bank: torch.Tensor, preset: str) -> PatchCoreModel:
    features = PatchFeatures(backbone)
    grid_hw = _grid_hw(features, cfg.input_size)
    spec = backbone.spec
    meta = {
        "method": "patchcore",
        "preset": preset,
        "backbone": cfg.backbone,
        "input_size": cfg.input_size,
        "mean": list(map(float, spec.mean)),
        "std": list(map(float, spec.std)),
        "config": {**dataclasses.asdict(cfg), "stages": list(cfg.stages)},
        "bank_shape": list(bank.shape),
        "grid": list(grid_hw),
        "k": PatchCoreModel.k,
    }
    return PatchCoreModel(features, bank, NearestNeighbourHead(grid_hw, cfg.input_size, cfg.sigma), meta)


@torch.no_grad()
def fit(shots_rgb: list[np.ndarray], preset: str = "edge", seed: int = 0, config_overrides: dict | None = None) -> PatchCoreModel:
    """Build the bank from the K shots and calibrate the threshold on held-out normal views (no training)."""
    if not shots_rgb:
        raise ConfigError("patchcore needs at least one good image")
    torch.manual_seed(seed)
    cfg = resolve_config(preset, config_overrides)
    backbone = _shared_pretrained_backbone(cfg.backbone, cfg.stages, cfg.backbone_weights, cfg.input_size)
    mean, std = backbone.spec.mean, backbone.spec.std
    features = PatchFeatures(backbone)

    cache: dict[int, torch.Tensor] = {}

    def patch_features(images: list[np.ndarray]) -> torch.Tensor:
        missing = [im for im in images if id(im) not in cache]
        for im in missing:  # one at a time: K is small and this keeps peak memory flat
            cache[id(im)] = features(to_model_input([im], cfg.input_size, mean, std))[0]
        return torch.stack([cache[id(im)] for im in images])

    shot_features = patch_features(shots_rgb)  # (K, N, D)
    bank = shot_features.reshape(-1, shot_features.shape[-1])
    model = _assemble(cfg, backbone, bank, preset)

    def score_against(bank_images: list[np.ndarray], queries: list[np.ndarray]):
        sub_bank = patch_features(bank_images).reshape(-1, bank.shape[1])
        out = model.head(knn_sqdist(patch_features(queries), sub_bank, model.k))
        return out.image_score.numpy(), out.anomaly_map[:, 0].numpy()

    model.calibration = calibrate_by_holdout(
        shots_rgb, score_against, seed=seed, margin=cfg.calibration_margin, n_views=cfg.calibration_views
    )
    log.debug("patchcore: bank %s, grid %s, threshold %.4f", tuple(bank.shape), model.meta["grid"], model.calibration["threshold"])
    return model


def build(meta: dict) -> PatchCoreModel:
    """An empty model of the shape ``meta`` describes, for load_artifact to fill with load_state_dict."""
    cfg = resolve_config(meta["preset"], {k: v for k, v in meta["config"].items() if k != "backbone_weights"})
    backbone = _create_backbone(cfg, "random")  # the weights come from the artifact's state_dict
    bank = torch.zeros(*meta["bank_shape"])
    return _assemble(cfg, backbone, bank, meta["preset"])
