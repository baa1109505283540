"""OK/NG threshold and map normalisation from the K good images only (fixes D14).

Normal scores: each shot, slightly jittered (shift, gain, noise), scored against a prototype bank
rebuilt *without* that shot (leave-one-out; with K = 1 the full bank is all there is), from the same
per-shot features the deployed bank was averaged from (the untrained PFA's, see model.set_bank_from_backbone). That mimics
a new good part, which is never in the bank either. Anomalous scores: fresh NSA pseudo anomalies
(a different random stream from training) scored with the full bank. No test image is involved.

* threshold: halfway between the highest normal score and the lower quartile of the
  pseudo-anomaly scores when the two groups separate; otherwise just above the highest normal.
  Halfway, not "just above the normals": the shots were also training images, so even their
  leave-one-out scores come out lower than a new good part's (measured in docs/pcsnet.md).
* map_range [lo, hi]: lo = 1st percentile of normal map pixels, hi = 95th percentile of the
  pseudo-anomaly image scores (above the threshold): (map - lo) / (hi - lo) is ~0 for good
  surface and ~1 for a clear defect.
"""
from __future__ import annotations

import numpy as np
import torch

from protospect.training.calibrate import CALIB_SEED_OFFSET, jitter
from protospect.training.synthesis import make_pseudo_anomaly, nsa_params_for, object_mask

from .model import PCSNetModel
from .train_loop import to_tensor


@torch.no_grad()
def _score(model: PCSNetModel, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    x = to_tensor(images, model.meta["mean"], model.meta["std"]).to(model.bank.device)
    out = model(x)
    return out.image_score.cpu().numpy(), out.anomaly_map.cpu().numpy()


def _held_out_maps(model: PCSNetModel, x: torch.Tensor, nn_bank: torch.Tensor | None,
                   feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every branch map of ``x`` (backbone output ``feats``) against the banks in place (the leave-one-out pass of
    one shot); never the global branch, which calibrate scores on the same ``feats``."""
    if model.fusion is not None:
        return model.branch_maps(x, nn_bank, feats=feats)
    return [model.map_outputs(x, feats).anomaly_map]


def choose_threshold(normal: np.ndarray, anomalous: np.ndarray) -> float:
    top = float(normal.max())
    if anomalous.size == 0:
        return top * 1.05 if top > 0 else top + 1e-3
    low = float(np.percentile(anomalous, 25))
    if low > top:
        return top + 0.5 * (low - top)
    # Pseudo anomalies that score like normals say nothing about where real defects start; an
    # F1 cut between them flagged 8-10 of 10 held-out good PCB images. Flag no calibration normal.
    return top * 1.001 if top > 0 else top + 1e-6


@torch.no_grad()
def calibrate(model: PCSNetModel, images: list[np.ndarray], seed: int, shot_prototypes: torch.Tensor,
              shot_nn: torch.Tensor | None = None) -> dict:
    """Set and return model.calibration = {threshold, map_range, ...} from the shots alone.

    ``shot_prototypes``: the (K, grid^2, D) per-shot features model.bank is built from (returned by
    model.set_bank_from_backbone before training). ``shot_nn``: the (K, V*N, D) per-shot patches of
    the nearest-neighbour bank (fusion "pcsnet+nn"). The leave-one-out maps of every branch also set
    the fusion's normal statistics (scoring.MapFusion), before any score is taken.
    """
    cfg = model.cfg
    rng = np.random.default_rng(seed + CALIB_SEED_OFFSET)
    model.eval()
    device = model.bank.device
    per_shot = shot_prototypes.to(device)
    if per_shot.shape[0] != len(images) or not torch.allclose(model.bank_from_shots(per_shot), model.bank, atol=1e-5, rtol=1e-4):
        raise ValueError("pcsnet.calibrate: shot_prototypes are not the features the bank was built from")
    if model.nn is not None and (shot_nn is None or shot_nn.shape[0] != len(images)):
        raise ValueError("pcsnet.calibrate: the nearest-neighbour branch needs the per-shot patches (shot_nn)")
    full_bank = model.bank.clone()
    k_shots = per_shot.shape[0]

    gb = model.global_branch
    held_out, g_held_out = [], []  # per shot: the branch maps (and g) of its jittered copies, scored without that shot
    for i, img in enumerate(images):
        nn_bank = None
        keep = [j for j in range(k_shots) if j != i] or [i]  # K = 1: the full bank is all there is
        if k_shots > 1:  # leave shot i out of every bank
            model.bank.copy_(model.bank_from_shots(per_shot[keep]))
            if model.nn is not None:
                nn_bank = shot_nn[keep].reshape(-1, shot_nn.shape[-1]).to(device)
        x = to_tensor([jitter(img, rng) for _ in range(cfg.calib_augments)], model.meta["mean"], model.meta["std"]).to(device)
        feats = model.features.backbone(x)
        held_out.append(_held_out_maps(model, x, nn_bank, feats))
        if gb is not None:
            g_held_out.append(gb.scores(x, gb.bank[keep], trunk_feats=feats))
    model.bank.copy_(full_bank)
    branches = [torch.cat([maps[b] for maps in held_out]) for b in range(len(held_out[0]))]
    if model.fusion is not None:
        model.fusion.set_statistics(branches[: model.n_maps])
        out = model.decide(branches)
        normal, normal_maps = out.image_score.cpu().numpy(), [out.anomaly_map.cpu().numpy()]
    else:
        normal_maps = [branches[0].cpu().numpy()]
        normal = branches[0].flatten(1).amax(dim=1).cpu().numpy()
    if gb is not None:  # rule v13: the image score is z(p) + z(g), each standardised on these views
        p_normal, g_normal = torch.from_numpy(normal).to(device), torch.cat(g_held_out)
        gb.set_statistics(p_normal, g_normal)
        normal = gb.combine(p_normal, g_normal).cpu().numpy()

    params = nsa_params_for(cfg.category)
    anomalies = []
    for img in images:
        obj = object_mask(img, params)
        for _ in range(cfg.calib_anomalies):
            out = make_pseudo_anomaly(img, rng, params, obj)
            if out is not None:
                anomalies.append(out[0])
    anomalous = _score(model, anomalies)[0] if anomalies else np.zeros(0, np.float32)
    threshold = choose_threshold(normal, anomalous)
    lo = float(np.percentile(np.concatenate([m.ravel() for m in normal_maps]), 1))
    hi = float(np.percentile(anomalous, 95)) if anomalous.size else threshold
    if hi <= threshold:
        hi = threshold + max(threshold - lo, 1e-6)
    model.calibration = {
        "threshold": float(threshold),
        "map_range": [lo, hi],
        "normal_scores": [float(v) for v in normal],
        "pseudo_anomaly_scores": [float(v) for v in anomalous],
    }
    return model.calibration
