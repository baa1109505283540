"""PCSNet configuration: one frozen dataclass, two named presets, and validated overrides."""
from __future__ import annotations

from dataclasses import dataclass, replace

from protospect.errors import ConfigError
from protospect.training.methods.config import config_from_values, resolve_preset


@dataclass(frozen=True)
class PCSNetConfig:
    # backbone and geometry
    backbone: str
    input_size: int  # S: the model sees S x S images and returns S x S maps
    stages: tuple[int, ...]  # timm features_only indices tapped by the PFA
    grid: int  # every tapped stage is resampled to grid x grid; M = grid^2 prototypes (unless prototypes is set)
    backbone_weights: str | None = None  # weights file, "random", or None for the default source
    geometry: str = "fixed"  # "fixed": input_size as set | "native": from the shots' own pixels (native_geometry)
    # | "auto": auto_small px or input_size, whichever held-out good images with planted defects favour (auto_geometry.py)
    auto_small: int = 256  # geometry=auto's cheap candidate (grid and bins scaled as native_geometry scales them)
    # heads
    k: int = 200  # nearest prototype distances per position fed to CAS
    prototypes: int = 0  # 0: one per grid position (M = grid^2); else at most this many (a greedy coreset of them)
    guide_dim: int = 896  # channels of the learned 1x1 guide projection of all D PFA channels
    cas_width: int = 896
    bins: tuple[int, ...] = (64, 32, 16, 8)  # pyramid sizes; each must divide grid
    dropout: float = 0.1
    blur_sigma: float = 4.0
    # losses (algorithms.md 1.7)
    nu: float = 1e-3
    alpha: float = 0.2
    r_init: float = 1e-5
    loss_k: int = 3  # nearest prototypes in L_NFC / L_AFS / L_PDC
    pdc_topk: int = 50  # largest pixel distances averaged into an image's L_PDC score
    w_pdc: float = 50.0
    w_seg: float = 40.0
    afs_mask_threshold: float = 0.5  # grid cell is pseudo-anomalous if this fraction of its pixels is
    # optimisation (algorithms.md 1.8; fixed length, no selection on any test data)
    steps: int = 100
    batch_size: int = 2  # clean shots per step; as many NSA images are added
    lr_pfa: float = 1e-3
    lr_cas: float = 1e-4
    weight_decay: float = 1e-5
    # pseudo anomalies and calibration
    category: str | None = None  # picks the NSA table row; None/unknown -> defaults
    calib_augments: int = 4  # jittered copies per shot scored for the threshold
    calib_anomalies: int = 2  # fresh NSA images per shot scored for the threshold
    # image-level decision (scoring.py, docs/decision.md); "pcsnet"/"none"/"max" is the original model
    fusion: str = "pcsnet"  # "pcsnet" | "pcsnet+nn" (plus a nearest-neighbour map over every shot patch)
    nn_rotations: int = 1  # 1 or 4: shots rotated by multiples of 90 degrees join the nn bank
    normalise: str = "none"  # "none" | "global" | "position": maps scaled by their normal statistics
    image_score: str = "max"  # "max" | "top" (mean of the top score_top_fraction) | "peak" (max above the local mean)
    score_top_fraction: float = 0.01
    foreground: str = "none"  # "none" | "pca": the image score reads the part only (label-free mask, scoring.py)

    @property
    def plain(self) -> bool:
        """The original PCSNet output (CAS map, its maximum): the only one the split export supports."""
        return (self.fusion == "pcsnet" and self.normalise == "none" and self.image_score == "max"
                and self.foreground == "none")

    @property
    def n_prototypes(self) -> int:
        """M, the rows of the prototype bank: grid^2, capped at ``prototypes`` when that is set."""
        return min(self.prototypes, self.grid * self.grid) if self.prototypes else self.grid * self.grid

    def validate(self) -> "PCSNetConfig":
        if self.grid < 1 or self.input_size < self.grid:
            raise ConfigError(f"pcsnet: grid {self.grid} must be between 1 and input_size {self.input_size}")
        bad = [b for b in self.bins if b <= 0 or self.grid % b]
        if bad:
            raise ConfigError(f"pcsnet: pyramid bins {bad} do not divide grid {self.grid}; "
                              f"use divisors such as {self.grid}, {self.grid // 2}, {self.grid // 4} (ONNX needs exact pooling)")
        if self.prototypes and self.prototypes < self.k:
            raise ConfigError(f"pcsnet: prototypes={self.prototypes} must be 0 (one per grid position) or at least k={self.k}")
        if not 1 <= self.k <= self.n_prototypes:
            raise ConfigError(f"pcsnet: k={self.k} must be between 1 and the {self.n_prototypes} prototypes")
        if self.loss_k > self.k:
            raise ConfigError(f"pcsnet: loss_k={self.loss_k} must not exceed k={self.k}")
        for key, allowed in (("fusion", ("pcsnet", "pcsnet+nn")), ("normalise", ("none", "global", "position")),
                             ("image_score", ("max", "top", "peak")), ("nn_rotations", (1, 4)),
                             ("foreground", ("none", "pca")), ("geometry", ("fixed", "native", "auto"))):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"pcsnet: {key}={getattr(self, key)!r} is not one of {list(allowed)}")
        if self.auto_small < NATIVE_STEP or self.auto_small % NATIVE_STEP:
            raise ConfigError(f"pcsnet: auto_small={self.auto_small} must be a positive multiple of {NATIVE_STEP}")
        if not 0.0 < self.score_top_fraction <= 1.0:
            raise ConfigError(f"pcsnet: score_top_fraction={self.score_top_fraction} must be in (0, 1]")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("pcsnet: steps and batch_size must be >= 1")
        return self


PRESETS: dict[str, PCSNetConfig] = {
    # The published model, defects fixed: WRN-50-2 layers 1-3 (D = 1792) at 224, 64x64 grid.
    "paper": PCSNetConfig(
        backbone="wide_resnet50_2", input_size=224, stages=(1, 2, 3), grid=64,
        k=200, guide_dim=896, cas_width=896, bins=(64, 32, 16, 8), steps=100, batch_size=2,
    ),
    # Jetson-sized: EfficientNet-Lite0 stages 2-3 (40 + 112 = 152 channels), grid S/8. The heads were chosen
    # at 256 px on held-out normals vs pseudo anomalies (docs/pcsnet.md); the input size, 512 -> 64x64 grid,
    # by rule v3 on held-out train/good images with planted defects (docs/decision.md section 9: small
    # defects are 3-8 px at 256); at most 1,024 prototypes (a coreset of the 4,096 positions) by rule v4
    # (section 11: same validation, 5.3x the CPU time of 256 instead of 7.8x); per part, 256 or 512 px, whichever
    # held-out good images with planted defects favour, by rules v5-v6 (sections 14-16; geometry=auto).
    # `--size 256` is the old model; `--set geometry=fixed` keeps 512 px for every part.
    "edge": PCSNetConfig(
        backbone="efficientnet_lite0", input_size=512, stages=(2, 3), grid=64,
        k=16, guide_dim=64, cas_width=64, bins=(64, 32, 16, 8), steps=100, batch_size=2, prototypes=1024,
        geometry="auto",
    ),
}


NATIVE_STEP, NATIVE_MAX = 64, 512


def _scaled(cfg: PCSNetConfig, size: int) -> tuple[int, tuple[int, ...]] | None:
    """(grid, bins) at ``size`` with the preset's cells per pixel, or None when a stride would not be exact."""
    scale = size / cfg.input_size
    grid, bins = cfg.grid * scale, [b * scale for b in cfg.bins]
    if not (grid.is_integer() and all(b.is_integer() and b >= 1 for b in bins)):
        return None
    return int(grid), tuple(int(b) for b in bins)


def native_geometry(cfg: PCSNetConfig, shorter_side: int) -> PCSNetConfig:
    """The input size a part's own pixels support, never upscaled (docs/decision.md section 9).

    S = the shots' shorter side rounded down to a multiple of 64, capped at 512 (cost grows with S^2); the
    grid and the pyramid bins scale with S as the preset has them (edge: grid S/8, bins S/8 .. S/64), so
    every stride stays exact for ONNX.
    """
    size = max(NATIVE_STEP, min(NATIVE_MAX, int(shorter_side) // NATIVE_STEP * NATIVE_STEP))
    scaled = _scaled(cfg, size)
    if scaled is None:
        raise ConfigError(f"pcsnet: geometry=native needs a preset whose grid and bins scale with the input size; "
                          f"grid {cfg.grid} at {cfg.input_size} px does not reach {size} px exactly")
    return replace(cfg, input_size=size, grid=scaled[0], bins=scaled[1]).validate()


def resolve_config(preset: str, overrides: dict | None = None) -> PCSNetConfig:
    """Preset + overrides -> validated config (training/methods/config.py: None keeps the preset's value).

    An input size given without a grid or bins keeps the preset's cells per pixel where the strides stay
    exact (edge: grid S/8), so ``--size 256`` is the 256 px edge model of before rule v3.
    """
    kept = {k: v for k, v in (overrides or {}).items() if v is not None}
    size = kept.get("input_size")
    if (preset in PRESETS and isinstance(size, int) and not isinstance(size, bool) and size > 0
            and "grid" not in kept and "bins" not in kept):
        scaled = _scaled(PRESETS[preset], size)
        if scaled is not None:
            kept["grid"], kept["bins"] = scaled
    return resolve_preset("pcsnet", PRESETS, preset, kept)


def config_from_dict(values: dict) -> PCSNetConfig:
    return config_from_values("pcsnet", PCSNetConfig, values)
