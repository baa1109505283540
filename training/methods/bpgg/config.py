"""BPGG-style configuration: one frozen dataclass, two named presets, validated overrides."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from protospect.errors import ConfigError
from protospect.training.methods.config import config_from_values, resolve_preset


@dataclass(frozen=True)
class BPGGConfig:
    # backbone and geometry: the tapped stages are resampled to the first one's grid and concatenated
    backbone: str
    input_size: int
    stages: tuple[int, ...] = (2, 3)
    backbone_weights: str | None = None  # backbone weights file, "random", or None for the default source
    # the only trained part: a small 1x1-conv adapter on the frozen features
    hidden: int = 128
    dim: int = 64
    cos_scale: float = 20.0  # PANet's logit scale: logit_c(u) = 20 * cos(F(u), p_c)
    blur_sigma: float = 4.0
    # losses: CE(query) + align_weight * CE(support, segmented by the query's prototypes)
    align_weight: float = 1.0
    # optimisation: fixed length, final weights, no selection on any test data
    steps: int = 300
    episodes_per_step: int = 4
    lr: float = 1e-3
    weight_decay: float = 5e-4
    # defective supports from the command line: drawn (seeded) from the masked defective test images of
    # this MVTec-layout category folder (split_defect_support); evaluate only on the other images
    support_data: str | None = None
    support_size: int = 3
    # defective supports when the caller gives none: NSA pseudo anomalies on the shots (not BPGG's setting)
    pseudo_supports: int = 6
    category: str | None = None  # picks the NSA table row
    # calibration on held-out normal shots (training/calibrate.py)
    calibration_margin: float = 1.0
    calibration_views: int = 8

    def validate(self) -> "BPGGConfig":
        if not self.stages:
            raise ConfigError("bpgg: needs at least one backbone stage")
        if self.hidden < 1 or self.dim < 1:
            raise ConfigError("bpgg: hidden and dim must be >= 1")
        if self.steps < 0 or self.episodes_per_step < 1 or self.pseudo_supports < 1 or self.support_size < 1:
            raise ConfigError("bpgg: steps must be >= 0, episodes_per_step, pseudo_supports, support_size >= 1")
        return self


PRESETS: dict[str, BPGGConfig] = {
    # PANet used VGG-16; the package's shared backbones are used instead (frozen, eval).
    "paper": BPGGConfig(backbone="wide_resnet50_2", input_size=256, stages=(2, 3), hidden=256, dim=128, steps=1000),
    # EfficientNet-Lite0 stages 2-3 (40 + 112 channels) on a 32x32 grid at 256, as PCSNet's edge preset.
    "edge": BPGGConfig(backbone="efficientnet_lite0", input_size=256, stages=(2, 3)),
}


def resolve_config(preset: str, overrides: dict | None = None) -> BPGGConfig:
    """Preset + overrides -> validated config (training/methods/config.py: None keeps the preset's value)."""
    return resolve_preset("bpgg", PRESETS, preset, overrides)


def config_from_dict(values: dict) -> BPGGConfig:
    return config_from_values("bpgg", BPGGConfig, values)


def config_to_dict(cfg: BPGGConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
