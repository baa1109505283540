"""PCSNet configuration: one frozen dataclass, two named presets, and validated overrides."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from protospect.errors import ConfigError
from protospect.imageio import canonical_size
from protospect.training.methods.config import config_from_values, resolve_preset


@dataclass(frozen=True)
class PCSNetConfig:
    # backbone and geometry
    backbone: str
    input_size: int  # S: the model sees S x S images and returns S x S maps (or input_hw, below)
    stages: tuple[int, ...]  # timm features_only indices tapped by the PFA
    grid: int  # every tapped stage is resampled to grid x grid; M = grid^2 prototypes (unless prototypes is set)
    backbone_weights: str | None = None  # weights file, "random", or None for the default source
    geometry: str = "fixed"  # "fixed": input_size as set | "native": from the shots' own pixels (native_geometry)
    # | "auto": auto_small px or input_size, whichever held-out good images with planted defects favour (auto_geometry.py)
    auto_small: int = 256  # geometry=auto's cheap candidate (grid and bins scaled as native_geometry scales them)
    auto_large: int = 0  # geometry=auto's third candidate, tried only where every shot is at least this many px on
    # its shorter side (never upscaled; rule v10, docs/decision.md section 24); 0: none
    aspect: str = "squash"  # "squash": every image to S x S | "keep": H x W with the shots' aspect and S^2
    # pixels (aspect_geometry), resolved into input_hw at fit
    input_hw: tuple[int, ...] = ()  # (H, W) of a non-square input; () = S x S. The grid keeps grid/S cells per pixel
    # heads
    k: int = 200  # nearest prototype distances per position fed to CAS
    prototypes: int = 0  # 0: one per grid position (M = gh * gw); else at most this many (a greedy coreset of them)
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
    image_branch: str = "none"  # "none" | "global": image score z(p) + z(g), g a whole-image descriptor distance
    # (global_branch.py, rule v13) | "auto": global where held-out planted defects with `warp` favour it (geometry=auto)

    @property
    def plain(self) -> bool:
        """The original PCSNet output (CAS map, its maximum): the only one the split export supports."""
        return (self.fusion == "pcsnet" and self.normalise == "none" and self.image_score == "max"
                and self.foreground == "none")

    @property
    def hw(self) -> tuple[int, int]:
        """(H, W) of the model input and its map."""
        return (int(self.input_hw[0]), int(self.input_hw[1])) if self.input_hw else (self.input_size, self.input_size)

    @property
    def size(self) -> int | tuple[int, int]:
        """The input as resize_image takes it: S when square, else (H, W)."""
        return canonical_size(self.hw)

    @property
    def grid_hw(self) -> tuple[int, int]:
        """Grid cells (h, w): grid per input_size pixels along each side."""
        h, w = self.hw
        return h * self.grid // self.input_size, w * self.grid // self.input_size

    @property
    def pool_steps(self) -> tuple[int, ...]:
        """The CAS pyramid as pooling strides in grid cells (grid / bin): the same on both sides."""
        return tuple(self.grid // b for b in self.bins)

    @property
    def n_prototypes(self) -> int:
        """M, the rows of the prototype bank: one per grid position (gh * gw), capped at ``prototypes`` when set."""
        h, w = self.grid_hw
        return min(self.prototypes, h * w) if self.prototypes else h * w

    def validate(self) -> "PCSNetConfig":
        if self.grid < 1 or self.input_size < self.grid:
            raise ConfigError(f"pcsnet: grid {self.grid} must be between 1 and input_size {self.input_size}")
        bad = [b for b in self.bins if b <= 0 or self.grid % b]
        if bad:
            raise ConfigError(f"pcsnet: pyramid bins {bad} do not divide grid {self.grid}; "
                              f"use divisors such as {self.grid}, {self.grid // 2}, {self.grid // 4} (ONNX needs exact pooling)")
        if self.input_hw:
            if len(self.input_hw) != 2 or min(self.input_hw) < 1:
                raise ConfigError(f"pcsnet: input_hw={list(self.input_hw)} must be [H, W] or empty")
            unit = self.input_size // math.gcd(self.input_size, self.grid)  # pixels per whole number of cells
            cells = [side * self.grid // self.input_size for side in self.hw]
            if any(side % unit for side in self.hw) or any(c % st for c in cells for st in self.pool_steps):
                raise ConfigError(f"pcsnet: input {self.hw[0]}x{self.hw[1]} does not give whole grid cells and pyramid "
                                  f"bins at grid {self.grid} per {self.input_size} px (use aspect=keep to choose one)")
        if self.prototypes and self.prototypes < self.k:
            raise ConfigError(f"pcsnet: prototypes={self.prototypes} must be 0 (one per grid position) or at least k={self.k}")
        if not 1 <= self.k <= self.n_prototypes:
            raise ConfigError(f"pcsnet: k={self.k} must be between 1 and the {self.n_prototypes} prototypes")
        if self.loss_k > self.k:
            raise ConfigError(f"pcsnet: loss_k={self.loss_k} must not exceed k={self.k}")
        for key, allowed in (("fusion", ("pcsnet", "pcsnet+nn")), ("normalise", ("none", "global", "position")),
                             ("image_score", ("max", "top", "peak")), ("nn_rotations", (1, 4)),
                             ("foreground", ("none", "pca")), ("geometry", ("fixed", "native", "auto")),
                             ("image_branch", ("none", "global", "auto")),
                             ("aspect", ("squash", "keep"))):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"pcsnet: {key}={getattr(self, key)!r} is not one of {list(allowed)}")
        if self.input_hw and self.hw[0] != self.hw[1] and self.nn_rotations != 1:
            raise ConfigError("pcsnet: nn_rotations=4 needs a square input (a quarter turn of an H x W shot is W x H); "
                              "use --set nn_rotations=1 or --set aspect=squash")
        if self.auto_small < NATIVE_STEP or self.auto_small % NATIVE_STEP:
            raise ConfigError(f"pcsnet: auto_small={self.auto_small} must be a positive multiple of {NATIVE_STEP}")
        if self.auto_large < 0 or self.auto_large % NATIVE_STEP:
            raise ConfigError(f"pcsnet: auto_large={self.auto_large} must be 0 (none) or a multiple of {NATIVE_STEP}")
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
    # held-out good images with planted defects favour, by rules v5-v6 (sections 14-16; geometry=auto), and 640 px
    # as a third candidate for parts photographed at 640 px or more, by rule v10 (sections 24-25).
    # Then, per part, the image score: the map's maximum, or that plus a whole-image descriptor distance
    # (global_branch.py), whichever the same images with a fifth, seamless kind (`warp`) favour, by rule v13
    # (sections 32-35; image_branch=auto).
    # `--size 256` is the old model; `--set geometry=fixed` keeps 512 px for every part; `--set image_branch=none`
    # keeps the map's maximum.
    "edge": PCSNetConfig(
        backbone="efficientnet_lite0", input_size=512, stages=(2, 3), grid=64,
        k=16, guide_dim=64, cas_width=64, bins=(64, 32, 16, 8), steps=100, batch_size=2, prototypes=1024,
        geometry="auto", auto_large=640, image_branch="auto",
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
    return replace(cfg, input_size=size, grid=scaled[0], bins=scaled[1], input_hw=()).validate()


def aspect_geometry(cfg: PCSNetConfig, ratio: float) -> PCSNetConfig:
    """H x W for a part whose images are ``ratio`` = height / width, at the same pixel count as S x S
    (docs/decision.md section 17): H = S sqrt(ratio), W = S / sqrt(ratio), each rounded to the step that keeps
    the grid and every pyramid bin whole (edge: 64 px). Square parts (and near-square ones, which round to S)
    get input_hw = (), the S x S model exactly as before."""
    step = cfg.input_size * max(cfg.pool_steps) // cfg.grid  # pixels of the coarsest pyramid cell
    if step * cfg.grid != cfg.input_size * max(cfg.pool_steps) or not ratio > 0:
        raise ConfigError(f"pcsnet: aspect=keep needs whole grid cells per pixel; grid {cfg.grid} at "
                          f"{cfg.input_size} px has none")
    root = math.sqrt(ratio)
    h, w = (max(step, int(round(cfg.input_size * f / step)) * step) for f in (root, 1 / root))
    return replace(cfg, input_hw=() if h == w else (h, w)).validate()


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
