"""Threshold for PRN and BPGG from the K shots only: held-out normals *and* held-out pseudo anomalies.

Both methods train on the shots, so a shot scores lower than a new good part even when it is left
out of the prototypes (measured: BPGG's held-out shots scored ~0 and its threshold flagged 6 of 8
new good bottles). The same rule as PCSNet's (training/methods/pcsnet/threshold.py) is used:

* normals: each shot, jittered (<= 2 % shift, +-5 % gain, sigma-2 noise), scored against
  prototypes built without it (leave-one-out; K = 1: augmented views of the single shot,
  training/calibrate.holdout_sets);
* anomalies: fresh NSA pseudo anomalies of the held-out shots (a random stream distinct from
  training's), scored the same way;
* threshold = halfway between the highest normal score and the anomalies' lower quartile when the
  two separate, else just above the highest normal. map_range = [median normal pixel, 2 thr - lo].
No test image is involved.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from protospect.training.calibrate import CALIB_SEED_OFFSET, holdout_sets, jitter


def choose_threshold(normal: np.ndarray, anomalous: np.ndarray) -> float:
    top = float(np.max(normal))
    if anomalous.size:
        low = float(np.percentile(anomalous, 25))
        if low > top:
            return top + 0.5 * (low - top)
    return top * 1.001 if top > 0 else top + 1e-6


def calibrate_with_pseudo(
    shots: list[np.ndarray], score_against: Callable, synth, seed: int, n_views: int = 8, margin: float = 1.0
) -> dict:
    """``score_against(bank_images, queries) -> (scores, maps)``; ``synth(img, rng) -> (img, mask) | None``.
    ``margin`` scales the chosen threshold (the config's calibration_margin); map_range stays on the unscaled one."""
    rng = np.random.default_rng(seed + CALIB_SEED_OFFSET)
    normal_scores, normal_maps, anomalous = [], [], []
    for bank, queries in holdout_sets(shots, seed, n_views):
        s, m = score_against(bank, [jitter(q, rng) for q in queries])
        normal_scores.append(np.ravel(s))
        normal_maps.append(np.asarray(m))
        pseudo = [made[0] for made in (synth(q, rng) for q in queries) if made is not None]
        if pseudo:
            anomalous.append(np.ravel(score_against(bank, pseudo)[0]))
    normal = np.concatenate(normal_scores)
    anomalous = np.concatenate(anomalous) if anomalous else np.zeros(0)
    threshold = choose_threshold(normal, anomalous)
    lo = float(np.median(np.concatenate(normal_maps)))
    return {
        "threshold": threshold * margin,
        "map_range": [lo, lo + 2.0 * max(threshold - lo, 1e-6)],
        "normal_scores": [float(v) for v in normal],
        "pseudo_anomaly_scores": [float(v) for v in anomalous],
        "rule": "halfway between max held-out normal score and the pseudo-anomaly lower quartile (else just above the normals)",
        "holdout": "augmented views of the single shot" if len(shots) == 1 else "leave-one-out over the shots",
    }
