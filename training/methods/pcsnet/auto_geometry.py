"""geometry=auto: the input size chosen per part at registration, from good images only (rules v5-v6, v10 and
v11, docs/decision.md sections 14-16, 24-25 and 28-30).

Both candidates are trained on the same shots: the auto_small px model (edge: 256 px, grid 32, the model
before rule v3) and the preset's own size (edge: 512 px, 1,024 prototypes). Each scores held-out good images
of the part against four kinds of defects planted on copies of them at their own pixels and then resized to
its input (small NSA patches; misplaced, erased and transplanted content: logical_defects.py; the fourth since
rule v11). The larger model is kept only when its mean image AUROC beats the smaller one's by more than MARGIN
points, since it costs about 3x the CPU time per frame. Where every shot is at least auto_large px (edge: 640) on its shorter side, a third model at
that size is trained too and kept when it beats the choice so far by more than MARGIN (rule v10: never upscaled).
Without enough held-out images the preset's size is kept and the artifact says why.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from protospect.imageio import hw_of, resize_image
from protospect.training.logical_defects import logical_sets, small_nsa_defects, warp_defects
from protospect.training.metrics import image_auroc

MARGIN = 0.5  # AUROC points the larger model must win by
MIN_HOLDOUT = 8  # fewer and the choice is noise: keep the preset's size
# DTD textures are research-only, so not among them; transplant joined by rule v11 (docs/decision.md section 30)
KINDS = ("nsa_small", "misplace", "erase", "transplant")


def planted(images: list[np.ndarray], category: str | None, kinds: tuple[str, ...] = KINDS) -> dict[str, list]:
    """{kind: [(image, mask), ...]}: ``kinds`` planted on copies of ``images`` at their own pixels. Each kind draws
    from its own seeded stream, so a kind's images do not depend on which other kinds are asked for."""
    sets = {}
    if "nsa_small" in kinds:
        sets["nsa_small"] = small_nsa_defects(images, category)
    if any(k not in ("nsa_small", "warp") for k in kinds):  # the logical kinds come as one set
        sets.update(logical_sets(images, category))
    if "warp" in kinds:  # rule v13's study kind (section 34), planted only when asked
        sets["warp"] = warp_defects(images)
    return {k: sets[k] for k in kinds}


def resized(sets: dict[str, list], size: int | tuple[int, int]) -> dict[str, list]:
    """Planted sets resized to a model's input as every frame is: a real defect on a part photographed at 256 px
    has no 512 px detail, so planting after an upscale would flatter the larger model (rule v6, section 15)."""
    import cv2  # noqa: PLC0415

    h, w = hw_of(size)
    return {kind: [(resize_image(img, size), cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST))
                   for img, mask in pairs] for kind, pairs in sets.items()}


def planted_native(images: list[np.ndarray], size: int | tuple[int, int], category: str | None,
                   kinds: tuple[str, ...] = KINDS) -> dict[str, list]:
    """``kinds`` planted at the images' own pixels, then resized to ``size`` (what the studies score)."""
    return resized(planted(images, category, kinds), size)


def validation_scores(model, holdout_rgb: list[np.ndarray], native_sets: dict[str, list]):
    """(scores of the held-out images, {kind: scores}) of the model's image score, ``native_sets``
    (planted(holdout_rgb): planted once) resized here to the model's input."""
    from .validate import image_scores  # noqa: PLC0415 (torch)

    return planted_scores(lambda imgs: image_scores(model, imgs), model.cfg.size, holdout_rgb, native_sets)


def planted_scores(score_fn, size, holdout_rgb: list[np.ndarray], native_sets: dict[str, list]):
    """(scores of the held-out images, {kind: scores of its planted images}), every image resized to ``size``."""
    return score_fn([resize_image(img, size) for img in holdout_rgb]), set_scores(score_fn, size, native_sets)


def set_scores(score_fn, size, native_sets: dict[str, list]) -> dict[str, np.ndarray]:
    """{kind: scores of its planted images}, resized to ``size``."""
    return {kind: score_fn([p[0] for p in pairs]) for kind, pairs in resized(native_sets, size).items()}


def auroc_record(good: np.ndarray, bad: dict[str, np.ndarray], kinds: tuple[str, ...] = KINDS) -> dict:
    """{kind: image AUROC of the good images against that kind, "mean": over ``kinds``}."""
    out = {kind: round(100 * image_auroc(np.r_[np.zeros(len(good)), np.ones(len(b))], np.r_[good, b]), 3)
           for kind, b in bad.items()}
    out["mean"] = round(float(np.mean([out[k] for k in kinds])), 3)
    return out


def choose(small: dict, large: dict, margin: float = MARGIN) -> str:
    """"small" unless the larger model's mean beats it by more than ``margin``."""
    return "large" if large["mean"] > small["mean"] + margin else "small"


def upgrade(scores: dict, pick: str, margin: float = MARGIN) -> str:
    """Rule v10: "xlarge" when it was trained and beats ``pick``'s mean by more than ``margin``, else ``pick``."""
    if "xlarge" in scores and scores["xlarge"]["mean"] > scores[pick]["mean"] + margin:
        return "xlarge"
    return pick


def xlarge_config(cfg, shots_rgb: list[np.ndarray]):
    """geometry=auto's third candidate (rule v10): the preset scaled to cfg.auto_large px (grid and bins with the
    preset's cells per pixel), or (None, why not) when it is off, not larger than the preset's size, or would
    upscale a shot (every shot must be at least auto_large px on its shorter side)."""
    from .presets import _scaled  # noqa: PLC0415

    size = cfg.auto_large
    if not size or size <= cfg.input_size:
        return None, None
    shorter = min(min(img.shape[:2]) for img in shots_rgb)
    if shorter < size:
        return None, f"shots are {shorter} px on their shorter side: {size} px not tried (it would upscale them)"
    scaled = _scaled(cfg, size)
    if scaled is None:
        return None, f"grid {cfg.grid} at {cfg.input_size} px does not scale to {size} px exactly: not tried"
    return dataclasses.replace(cfg, geometry="fixed", input_size=size, grid=scaled[0], bins=scaled[1],
                               input_hw=()).validate(), None


def small_config(cfg):
    """The cheap candidate's config: the preset scaled to cfg.auto_small px (edge: 256 px, grid 32, the model
    before rule v3); None when the input is not larger than that."""
    from .presets import native_geometry  # noqa: PLC0415

    if cfg.input_size <= cfg.auto_small:
        return None
    return native_geometry(dataclasses.replace(cfg, geometry="fixed"), cfg.auto_small)
