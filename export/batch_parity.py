"""Parity of a batched graph (export --batch N | dynamic, issue 18) with the batch-1 graph of the same model.

Every item of every batch is compared with what the batch-1 graph gives for that frame alone (ONNX Runtime
CPU on both): the worst map difference relative to the batch-1 maps' range (goal <= 1e-4) and the OK/NG
decisions that differ at the model's threshold (goal 0). A static batch N runs the frames in chunks of N
(the last chunk filled up with the first frames again); a dynamic batch runs them in chunks of 3, 1 and
all at once, so several batch sizes are checked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protospect.contract import ANOMALY_MAP, DYNAMIC_BATCH, IMAGE_SCORE, INPUT
from protospect.errors import DataError

BATCH_MAP_TOLERANCE = 1e-4


@dataclass
class BatchParityReport:
    batch: int | str
    n_images: int
    batch_sizes: list[int] = field(default_factory=list)
    map_max_rel: float = 0.0
    score_max_abs: float = 0.0
    decisions_differ: int = 0
    threshold: float = 0.0

    @property
    def ok(self) -> bool:
        return self.map_max_rel <= BATCH_MAP_TOLERANCE and self.decisions_differ == 0

    def format(self) -> str:
        sizes = ", ".join(str(s) for s in sorted(set(self.batch_sizes)))
        return "\n".join([
            f"batch parity (batch {self.batch} vs batch 1, {self.n_images} images, batch sizes run: {sizes}):",
            f"  worst item map |diff| = {self.map_max_rel:.3g} of the map range (goal <= {BATCH_MAP_TOLERANCE:g})",
            f"  image score max |diff| {self.score_max_abs:.3g}",
            f"  OK/NG decisions that differ at threshold {self.threshold:.6g}: {self.decisions_differ}",
            f"  {'PASS' if self.ok else 'FAIL'}"])


def chunks(n_items: int, batch: int | str) -> list[list[int]]:
    """Item indices per run: static N -> chunks of N (the last padded from the start); dynamic -> 3s, 1s, all."""
    idx = list(range(n_items))
    if batch == DYNAMIC_BATCH:
        return ([idx[i:i + 3] for i in range(0, n_items, 3)] + [[i] for i in idx[:2]] + [idx])
    out = []
    for start in range(0, n_items, batch):
        part = idx[start:start + batch]
        out.append(part + [idx[j % n_items] for j in range(batch - len(part))])
    return out


def batch_parity(batched_path: str | Path, single_path: str | Path, frames, threshold: float,
                 batch: int | str) -> BatchParityReport:
    """Compare ``batched_path`` per item with ``single_path`` on uint8 H x W x 3 ``frames``."""
    from protospect.export.ort_session import cpu_session

    frames = [np.ascontiguousarray(f, dtype=np.uint8) for f in frames]
    if not frames:
        raise DataError("batch parity check got no images")
    single, batched = cpu_session(single_path), cpu_session(batched_path)
    ref_maps, ref_scores = [], []
    for frame in frames:
        amap, score = single.run([ANOMALY_MAP, IMAGE_SCORE], {INPUT: frame[None]})
        ref_maps.append(np.asarray(amap, np.float32)[0])
        ref_scores.append(float(np.asarray(score).reshape(-1)[0]))
    span = float(max(m.max() for m in ref_maps) - min(m.min() for m in ref_maps)) or 1.0
    report = BatchParityReport(batch=batch, n_images=len(frames), threshold=float(threshold))
    for part in chunks(len(frames), batch):
        amaps, scores = batched.run([ANOMALY_MAP, IMAGE_SCORE], {INPUT: np.stack([frames[i] for i in part])})
        amaps, scores = np.asarray(amaps, np.float32), np.asarray(scores, np.float64).reshape(-1)
        if amaps.shape[0] != len(part) or scores.shape[0] != len(part):
            raise DataError(f"batched graph returned {amaps.shape[0]} maps / {scores.shape[0]} scores for {len(part)} frames")
        report.batch_sizes.append(len(part))
        for j, i in enumerate(part):
            report.map_max_rel = max(report.map_max_rel, float(np.abs(amaps[j] - ref_maps[i]).max()) / span)
            report.score_max_abs = max(report.score_max_abs, abs(float(scores[j]) - ref_scores[i]))
            report.decisions_differ += int((scores[j] >= threshold) != (ref_scores[i] >= threshold))
    return report
