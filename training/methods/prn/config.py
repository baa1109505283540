"""PRN configuration: one frozen dataclass, two named presets, validated overrides."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from protospect.errors import ConfigError
from protospect.training.methods.config import config_from_values, resolve_preset


@dataclass(frozen=True)
class PRNConfig:
    # backbone and geometry: four stages, the first three prototyped, the fourth only feeds the decoder
    backbone: str
    input_size: int  # S; the MSA parameters are tied to it (element-wise q/k/v per token element)
    stages: tuple[int, ...] = (1, 2, 3, 4)
    backbone_weights: str | None = None  # backbone weights file, "random", or None for the default source
    # heads
    msa_blocks: int = 1  # stacked MSA blocks per level (PRNet: 3)
    msa_divisors: tuple[int, ...] = (1, 2, 4)  # patch side = H / d; PRNet: (1, 2, 4, 8). Non-dividing ones are dropped per level
    msa_kernel: int = 3  # kernel of the MSA output block's two convs (PRNet: 3; edge: 1)
    decoder_channels: tuple[int, ...] | None = None  # decoder widths at levels 1..3; None = the backbone's channels
    final_channels: int = 16  # width of the last decoder layer (PRNet: 64)
    decoder_full_res: bool = False  # last decoder layer at S x S (PRNet) or on the level-1 grid, upsampled
    blur_sigma: float = 4.0
    max_prototypes: int = 8  # K <= this: each shot's maps are the prototypes; above: KMeans to this many
    # losses (algorithms.md 2.6)
    focal_weight: float = 5.0
    focal_gamma: float = 4.0
    # optimisation: fixed length, final weights, no selection on any test data (P6)
    steps: int = 150
    batch_size: int = 4  # half normal shots, half pseudo (or real) anomalies
    lr: float = 1e-3
    weight_decay: float = 1e-4  # Adam, coupled L2 as in PRNet (which used 1e-2 with lr 1e-4)
    shift: float = 0.03  # random translation (fraction of S) of every training image
    # pseudo anomalies: NSA self-swap unless a texture folder is given (DRAEM-style, P1/P10 fixed)
    category: str | None = None  # picks the NSA table row; None/unknown -> defaults
    textures: str | None = None  # folder of texture images (e.g. DTD; development only, never shipped)
    real_fraction: float = 0.5  # share of the anomalous samples taken from real defect examples, when given
    # calibration on held-out normal shots (training/calibrate.py)
    calibration_margin: float = 1.0
    calibration_views: int = 8

    def validate(self) -> "PRNConfig":
        if len(self.stages) != 4:
            raise ConfigError(f"prn: needs 4 backbone stages (3 prototyped + 1 decoder skip), got {self.stages}")
        if self.input_size % 32:
            raise ConfigError(f"prn: input_size {self.input_size} must be a multiple of 32")
        if self.msa_blocks < 0 or not self.msa_divisors or any(d < 1 for d in self.msa_divisors):
            raise ConfigError("prn: msa_blocks must be >= 0 and msa_divisors a non-empty list of integers >= 1")
        if self.msa_kernel not in (1, 3):
            raise ConfigError(f"prn: msa_kernel must be 1 or 3, got {self.msa_kernel}")
        if self.decoder_channels is not None and len(self.decoder_channels) != 3:
            raise ConfigError(f"prn: decoder_channels needs 3 widths (levels 1..3), got {self.decoder_channels}")
        if self.steps < 0 or self.batch_size < 2:
            raise ConfigError("prn: steps must be >= 0 and batch_size >= 2 (normal + anomalous)")
        if self.max_prototypes < 1:
            raise ConfigError("prn: max_prototypes must be >= 1")
        if not 0.0 <= self.real_fraction <= 1.0:
            raise ConfigError("prn: real_fraction must be in [0, 1]")
        return self


PRESETS: dict[str, PRNConfig] = {
    # PRNet's architecture (algorithms.md 2.1-2.5): ResNet18 layer1-4 at 256, 3 MSA blocks of 4 sizes,
    # decoder as wide as the backbone. About 38 GMACs per frame: a reference, not a Jetson model.
    "paper": PRNConfig(
        backbone="resnet18", input_size=256, msa_blocks=3, msa_divisors=(1, 2, 4, 8),
        decoder_channels=None, final_channels=64, decoder_full_res=True, lr=1e-4, weight_decay=1e-2, steps=700, batch_size=16,
    ),
    # Trains in minutes on a CPU: EfficientNet-Lite0 stages 1-4 (24/40/112 + 320 channels),
    # one MSA block of 3 sizes with a 1x1 output block, narrow decoder ending on the stride-4 grid.
    "edge": PRNConfig(
        backbone="efficientnet_lite0", input_size=256, msa_blocks=1, msa_divisors=(1, 2, 4), msa_kernel=1,
        decoder_channels=(24, 32, 64), final_channels=16,
    ),
}


def resolve_config(preset: str, overrides: dict | None = None) -> PRNConfig:
    """Preset + overrides -> validated config (training/methods/config.py: None keeps the preset's value)."""
    return resolve_preset("prn", PRESETS, preset, overrides)


def config_from_dict(values: dict) -> PRNConfig:
    return config_from_values("prn", PRNConfig, values)


def config_to_dict(cfg: PRNConfig) -> dict:
    """JSON-friendly (lists, not tuples) for meta/manifest."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
