"""PCSNet (Jiang, Cao, Shen, TNNLS 2024) with the published code's defects fixed.

``fit(shots_rgb, preset, seed, config_overrides) -> PCSNetModel`` trains one model on K good
images; ``build(meta)`` rebuilds the untrained model an artifact's state_dict loads into.
Design notes and the edge preset's measurements: docs/pcsnet.md.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from protospect.errors import ConfigError, DataError
from protospect.imageio import resize_image, size_record, size_text
from protospect.training.methods.base import model_meta

from .model import PCSNetModel
from .presets import PRESETS, PCSNetConfig, aspect_geometry, config_from_dict, native_geometry, resolve_config
from .scoring import patch_grid, rotated_views
from .threshold import calibrate
from .train_loop import seed_everything, to_tensor, train

__all__ = ["PRESETS", "PCSNetConfig", "PCSNetModel", "build", "fit"]
log = logging.getLogger(__name__)


def _create_backbone(cfg: PCSNetConfig, weights):
    from protospect.training.backbones import create_backbone  # noqa: PLC0415 (heavy import)

    return create_backbone(cfg.backbone, stages=tuple(cfg.stages), weights=weights, input_size=cfg.input_size)


def _create_global_backbone(cfg: PCSNetConfig, weights):
    """The global branch's own frozen copy of the backbone, tapped at stages 3 / 4 for 256 px (global_branch.py)."""
    from protospect.training.backbones import create_backbone  # noqa: PLC0415 (heavy import)

    from .global_branch import G_SIZE, G_STAGES  # noqa: PLC0415

    return create_backbone(cfg.backbone, stages=G_STAGES, weights=weights, input_size=G_SIZE)


def _meta(cfg: PCSNetConfig, preset: str, spec) -> dict:
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    return model_meta("pcsnet", preset, cfg.backbone, cfg.size, spec, config)


def size_label(cfg: PCSNetConfig) -> str:
    """"512 px", or "704x384 px" (H x W) for a non-square input."""
    return f"{size_text(cfg.hw)} px"


def with_aspect(cfg: PCSNetConfig, shots_rgb) -> PCSNetConfig:
    """aspect=keep: the input H x W from the shots' median height / width (presets.aspect_geometry)."""
    if cfg.aspect != "keep":
        return cfg
    ratios = [img.shape[0] / img.shape[1] for img in shots_rgb if getattr(img, "ndim", 0) == 3 and min(img.shape[:2])]
    if not ratios:
        return cfg
    return aspect_geometry(cfg, float(np.median(ratios)))


def _check_shots(shots_rgb, size) -> list[np.ndarray]:
    if len(shots_rgb) == 0:
        raise DataError("pcsnet: no good images given; pass at least one (K >= 1)")
    return [resize_image(img, size) for img in _check_images(shots_rgb, "shot")]


def _check_images(images, what: str) -> list[np.ndarray]:
    for i, img in enumerate(images):
        if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3):
            got = getattr(img, "shape", type(img).__name__), getattr(img, "dtype", "")
            raise DataError(f"pcsnet: {what} {i} is {got}; expected uint8 RGB HxWx3 (use protospect.imageio.read_rgb)")
    return list(images)


def fit(shots_rgb: list[np.ndarray], preset: str = "edge", seed: int = 0,
        config_overrides: dict | None = None, progress: bool = True, device: str | None = None,
        holdout: list[np.ndarray] | None = None) -> PCSNetModel:
    """Train PCSNet on K good RGB images; returns the eval-mode model with meta and calibration.

    ``config_overrides`` may set any PCSNetConfig field, e.g. {"category": "bottle"} to pick the
    NSA table row, {"backbone_weights": "/path/wrn50.pth"} for the paper backbone, {"steps": 50}.
    ``device``: None = CUDA when available, else CPU; the model is returned on that device.
    Bit-exact repetition for a seed is guaranteed on CPU (CUDA kernels may differ in the last bits).
    ``holdout``: good RGB images that are not shots; ``geometry=auto`` chooses the input size on them
    (auto_geometry.py) and keeps the preset's size, saying why, when fewer than MIN_HOLDOUT are given.
    """
    cfg = resolve_config(preset, config_overrides)
    if cfg.geometry == "native":  # the size is the shots' to decide; the artifact keeps the resolved one
        sides = [min(img.shape[:2]) for img in shots_rgb if getattr(img, "ndim", 0) == 3]
        cfg = native_geometry(cfg, min(sides)) if sides else cfg
    cfg = with_aspect(cfg, shots_rgb)
    if cfg.geometry == "auto":
        model = _fit_auto(shots_rgb, preset, seed, cfg, holdout, progress, device)
    else:
        model = _fit_config(shots_rgb, preset, seed, cfg, progress, device)
    if cfg.image_branch == "auto":  # rule v13: after the size, the image score (docs/decision.md section 34)
        _choose_image_branch(model, _check_images(holdout or [], "held-out good image"), progress)
    for name in ("_shots", "_seed", "_shot_prototypes", "_shot_nn", "_planted"):  # what the choices shared
        model.__dict__.pop(name, None)
    return model


def _fit_auto(shots_rgb, preset, seed, cfg: PCSNetConfig, holdout, progress, device) -> PCSNetModel:
    """Both input sizes trained on the same shots; the one the held-out good images favour is returned."""
    from . import auto_geometry as ag  # noqa: PLC0415

    large_cfg = dataclasses.replace(cfg, geometry="fixed")
    small_cfg = ag.small_config(cfg)
    if small_cfg is None:  # an input no larger than the cheap candidate: nothing to choose
        return _fit_config(shots_rgb, preset, seed, large_cfg, progress, device)
    small_cfg = with_aspect(small_cfg, shots_rgb)  # native_geometry rescaled it square
    holdout = _check_images(holdout or [], "held-out good image")
    record = {"rule": "auto (docs/decision.md section 14)", "margin": ag.MARGIN, "n_holdout": len(holdout)}
    if len(holdout) < ag.MIN_HOLDOUT:
        record["reason"] = f"{len(holdout)} held-out good images (need {ag.MIN_HOLDOUT}): kept {size_label(cfg)}"
        log.warning("pcsnet: geometry auto: %s", record["reason"])
        model = _fit_config(shots_rgb, preset, seed, large_cfg, progress, device)
    else:
        models, scores, raw = {}, {}, {}
        native_sets = ag.planted(holdout, cfg.category)  # planted once at the images' pixels; each candidate resizes

        def validate(name, c):
            models[name] = _fit_config(shots_rgb, preset, seed, c, progress, device)
            raw[name] = ag.validation_scores(models[name], holdout, native_sets)
            scores[name] = {"input_size": size_record(c.hw), **ag.auroc_record(*raw[name])}
        for name, c in (("small", small_cfg), ("large", large_cfg)):
            validate(name, c)
        pick = ag.choose(scores["small"], scores["large"])
        xl_cfg, why_not = ag.xlarge_config(large_cfg, shots_rgb)
        if xl_cfg is not None:  # rule v10: a third, larger size where the shots have the pixels for it
            validate("xlarge", with_aspect(xl_cfg, shots_rgb))
            pick = ag.upgrade(scores, pick)
        elif why_not:
            record["xlarge"] = why_not
        model = models[pick]
        model._planted = (native_sets, *raw[pick])  # the image branch's choice reads the same scores (plain attribute)
        record.update(scores=scores, chosen=pick)
        msg = (f"pcsnet: geometry auto chose {size_label(model.cfg)} (planted-defect AUROC on {len(holdout)} held-out "
               f"good images: " + ", ".join(f"{scores[n]['mean']:.1f} at {size_label(m.cfg)}" for n, m in models.items())
               + ")")
        log.info(msg)
        if progress:
            print(msg)
    record["input_size"] = size_record(model.cfg.hw)
    model.meta["geometry_choice"] = record
    return model


def _choose_image_branch(model: PCSNetModel, holdout: list[np.ndarray], progress: bool) -> None:
    """Rule v13 (docs/decision.md section 34): attach the global branch when the held-out good images with the five
    planted kinds (rule v11's four and `warp`) score p+g above p by more than the margin; record the choice."""
    from . import auto_geometry as ag  # noqa: PLC0415

    record = {"rule": "v13 (docs/decision.md section 34)", "margin": ag.MARGIN, "n_holdout": len(holdout)}
    if len(holdout) < ag.MIN_HOLDOUT:
        record["reason"] = f"{len(holdout)} held-out good images (need {ag.MIN_HOLDOUT}): kept the map's image score"
        log.warning("pcsnet: image_branch auto: %s", record["reason"])
        _set_image_branch(model, "none")
    else:
        import torch  # noqa: PLC0415

        from .validate import global_scores, image_scores  # noqa: PLC0415 (torch)

        kinds = ag.KINDS + ("warp",)
        size = model.cfg.size
        # the map's scores of rule v11's kinds: geometry=auto already has them for this very model; warp is new
        native_sets, p_good, p_bad = getattr(model, "_planted", None) or _map_scores(model, holdout)
        warp_sets = ag.planted(holdout, model.cfg.category, ("warp",))
        p_bad = {**p_bad, **ag.set_scores(lambda imgs: image_scores(model, imgs), size, warp_sets)}
        native_sets = {**native_sets, **warp_sets}
        before = ag.auroc_record(p_good, p_bad, kinds)
        calibration = dict(model.calibration)
        _attach_global(model, model._shots)
        calibrate(model, model._shots, model._seed, model._shot_prototypes, model._shot_nn)  # threshold on z(p) + z(g)
        # p is the map's and unchanged: only g is scored again, and fused as forward() fuses it
        g_good, g_bad = ag.planted_scores(lambda imgs: global_scores(model, imgs), size, holdout, native_sets)
        gb = model.global_branch

        def fused(p, g):
            return gb.combine(torch.from_numpy(p), torch.from_numpy(g)).numpy()
        after = ag.auroc_record(fused(p_good, g_good), {k: fused(p_bad[k], g_bad[k]) for k in p_bad}, kinds)
        record.update(scores={"map": before, "map+global": after})
        if after["mean"] > before["mean"] + ag.MARGIN:
            record["chosen"] = "global"
        else:
            record["chosen"] = "none"
            model.global_branch, model.calibration = None, calibration
            model.meta.pop("global_bank_shape", None)
            _set_image_branch(model, "none")
        msg = (f"pcsnet: image score {'map + global branch' if record['chosen'] == 'global' else 'map only'} "
               f"(planted-defect AUROC with warp: {before['mean']:.1f} map, {after['mean']:.1f} map + global)")
        log.info(msg)
        if progress:
            print(msg)
    model.meta["image_branch_choice"] = record


def _map_scores(model: PCSNetModel, holdout: list[np.ndarray]) -> tuple:
    """(planted sets, held-out scores, {kind: scores}) of rule v11's kinds, as _fit_auto keeps them in model._planted."""
    from . import auto_geometry as ag  # noqa: PLC0415

    sets = ag.planted(holdout, model.cfg.category)
    return (sets, *ag.validation_scores(model, holdout, sets))


def _set_image_branch(model: PCSNetModel, value: str) -> None:
    """The resolved choice goes into the config the artifact records, so build() makes the same graph."""
    model.cfg = dataclasses.replace(model.cfg, image_branch=value)
    model.meta["config"]["image_branch"] = value


def _attach_global(model: PCSNetModel, shots: list[np.ndarray]) -> None:
    """Give a trained model the global branch with the shots' descriptors as its bank; calibrate() comes after (the
    threshold is on z(p) + z(g) then)."""
    model.attach_global(_create_global_backbone(model.cfg, model.cfg.backbone_weights), len(shots))
    model.global_branch.set_bank(to_tensor(shots, model.meta["mean"], model.meta["std"]).to(model.bank.device))
    model.meta["global_bank_shape"] = list(model.global_branch.bank.shape)
    _set_image_branch(model, "global")


def _fit_config(shots_rgb, preset, seed, cfg: PCSNetConfig, progress, device) -> PCSNetModel:
    import torch  # noqa: PLC0415

    images = _check_shots(shots_rgb, cfg.size)
    seed_everything(seed)  # the PFA/CAS initialisation is part of what the seed fixes
    backbone = _create_backbone(cfg, cfg.backbone_weights)
    branch = cfg.image_branch
    cfg = dataclasses.replace(cfg, image_branch="none") if branch != "none" else cfg  # attached below
    model = PCSNetModel(backbone, cfg, _meta(cfg, preset, backbone.spec))
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    train_log = train(model, images, seed, progress=progress)
    shot_nn = None
    if model.nn is not None:  # training-free branch: every patch of every shot view, on the frozen backbone
        shot_nn = nn_shot_patches(model, images)
        model.set_nn_bank(shot_nn)
    if model.foreground is not None:  # label-free part mask from the shots (scoring.ForegroundMask)
        model.meta["foreground"] = model.foreground.fit(shot_patch_grids(model, images))
    if branch == "global":
        _attach_global(model, images)
    calibrate(model, images, seed, train_log.shot_prototypes, shot_nn)
    if branch == "auto":  # what _choose_image_branch needs to calibrate again; plain attributes, dropped after it
        model._shots, model._seed, model._shot_prototypes, model._shot_nn = images, seed, train_log.shot_prototypes, shot_nn
    train_log.shot_prototypes = None  # (K, M, D): not worth keeping on the model
    model.meta["train_seconds"] = round(train_log.seconds, 2)
    model.train_log = train_log
    msg = (f"pcsnet[{preset}] trained on K={len(images)} in {train_log.seconds:.1f} s "
           f"({cfg.steps} steps); threshold {model.calibration['threshold']:.4g}")
    log.info(msg)
    if progress:
        print(msg)
    return model


def nn_shot_patches(model: PCSNetModel, images: list[np.ndarray], rotations: int | None = None):
    """(K, V*N, D) patch features of each shot and its V rotated views (scoring.rotated_views);
    V = ``rotations``, default the model's nn_rotations."""
    import torch  # noqa: PLC0415

    per_shot = []
    with torch.no_grad():
        for views in rotated_views(images, rotations or model.cfg.nn_rotations):
            x = to_tensor(views, model.meta["mean"], model.meta["std"]).to(model.bank.device)
            g = patch_grid(model.features.backbone(x))
            per_shot.append(g.flatten(2).transpose(1, 2).reshape(-1, g.shape[1]))
    return torch.stack(per_shot)


def shot_patch_grids(model: PCSNetModel, images: list[np.ndarray]):
    """(K, D, h, w) PatchCore-style patch features of the shots, on the frozen backbone."""
    import torch  # noqa: PLC0415

    with torch.no_grad():
        x = to_tensor(images, model.meta["mean"], model.meta["std"]).to(model.bank.device)
        return patch_grid(model.features.backbone(x))


def build(meta: dict) -> PCSNetModel:
    """The untrained model for ``meta`` (from an artifact); load its state_dict to restore it."""
    if meta.get("method") != "pcsnet" or "config" not in meta:
        raise ConfigError(f"pcsnet.build: meta is not a pcsnet model's (method={meta.get('method')!r})")
    cfg = config_from_dict(dict(meta["config"]))
    backbone = _create_backbone(cfg, "random")  # weights come from the artifact's state_dict
    g_backbone = _create_global_backbone(cfg, "random") if cfg.image_branch == "global" else None
    return PCSNetModel(backbone, cfg, dict(meta), g_backbone)
