"""PyTorch vs ONNX Runtime (CPU) on real images through the same preprocessing (imageio.resize_image).

Reports the worst map difference relative to the maps' range, the worst score difference, how many
OK/NG decisions differ at the model's threshold and, given labels, image AUROC from both.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from protospect.contract import ANOMALY_MAP, IMAGE_SCORE, INPUT
from protospect.errors import DataError
from protospect.export.deploy import FullGraph
from protospect.metadata import input_hw_of
from protospect.imageio import read_rgb, resize_image

MAP_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": None}  # None: report only


@dataclass
class ParityReport:
    n_images: int
    precision: str
    map_max_abs: float
    map_max_rel: float        # max |diff| / (max - min of the PyTorch maps over all images)
    score_max_abs: float
    decisions_differ: int
    threshold: float
    auroc_torch: float | None = None
    auroc_onnx: float | None = None

    @property
    def ok(self) -> bool:
        tol = MAP_TOLERANCE.get(self.precision)
        same_auroc = self.auroc_torch is None or round(self.auroc_torch, 3) == round(self.auroc_onnx, 3)
        return (tol is None or self.map_max_rel <= tol) and self.decisions_differ == 0 and same_auroc

    def format(self) -> str:
        tol = MAP_TOLERANCE.get(self.precision)
        lines = [f"parity ({self.precision}, {self.n_images} images, ONNX Runtime CPU vs PyTorch):",
                 f"  map max |diff| {self.map_max_abs:.3g} = {self.map_max_rel:.3g} of the map range"
                 + (f" (goal <= {tol:g})" if tol else " (no goal at this precision)"),
                 f"  image score max |diff| {self.score_max_abs:.3g}",
                 f"  OK/NG decisions that differ at threshold {self.threshold:.6g}: {self.decisions_differ}"]
        if self.auroc_torch is not None:
            lines.append(f"  image AUROC torch {self.auroc_torch:.4f} vs onnx {self.auroc_onnx:.4f}")
        if self.precision == "fp32":
            lines.append(f"  {'PASS' if self.ok else 'FAIL'}")
        else:
            lines.append(f"  (report only: {self.precision} is compared on the dev data, see studies/eval_graphs.py)")
        return "\n".join(lines)


def load_images(images, size: int | tuple[int, int]) -> np.ndarray:
    """Paths or uint8 RGB arrays -> uint8 (N, H, W, 3) through the shared resize (``size``: S or (H, W))."""
    frames = []
    for item in images:
        img = read_rgb(item) if isinstance(item, (str, Path)) else item
        frames.append(resize_image(img, size))
    if not frames:
        raise DataError("parity check got no images")
    return np.stack(frames)


def shot_views(paths, size: int | tuple[int, int], views: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Augmented views (shift, brightness, noise) of the shots, without the shots themselves.

    A memory-bank model maps its own shots to distance ~0, where sqrt turns float rounding of
    the GEMM-form distance (~1e-4) into ~1e-2 map noise; that measures sqrt(0), not the export.
    """
    from protospect.calibration.augment import AugmentConfig, augment

    rng = np.random.default_rng(seed)
    cfg = AugmentConfig(seed=seed)
    return [augment(frame, rng, cfg) for frame in load_images(paths, size) for _ in range(views)]


def parity_on_category(data_root, category: str, method: str, out_dir, shots: int = 2, seed: int = 0,
                       config_overrides: dict | None = None, preset: str = "edge"):
    """Train ``method`` on ``shots`` good images of an MVTec-layout dev category, export its FP32
    graph into ``out_dir`` and compare PyTorch with ONNX Runtime on every scored test image (bpgg:
    all but its defective supports, bpgg.prepare_eval). Returns (ParityReport, scored test items)."""
    from protospect.export.onnx_export import onnx_from_model
    from protospect.training.data import MVTecCategory, sample_shots
    from protospect.training.methods import get_method

    cat = MVTecCategory(Path(data_root), category)
    module = get_method(method)
    overrides, items, data = {"category": cat.name, **(config_overrides or {})}, list(cat.test), {}
    if hasattr(module, "prepare_eval"):  # the defective images go to fit as its argument, not as a setting
        split = module.prepare_eval(cat, seed, overrides)
        overrides, items, data = split.overrides, split.remaining, {"defects": split.defects, "defect_names": split.defect_names}
    shots_rgb = [read_rgb(p) for p in sample_shots(cat.train_good, shots, seed=seed)]
    model = module.fit(shots_rgb, preset=preset, seed=seed, config_overrides=overrides, **data)
    graph = onnx_from_model(model, model.meta, model.calibration, Path(out_dir) / f"{method}.onnx").path
    return parity_from_model(model, graph, [t.path for t in items], [t.label for t in items]), items


def parity_from_model(model, onnx_path, images, labels=None) -> ParityReport:
    from protospect.export.ort_session import cpu_session, graph_precision

    meta, calibration = model.meta, model.calibration
    frames = load_images(images, input_hw_of(meta))
    precision = graph_precision(onnx_path)
    session = cpu_session(onnx_path, simulate_qdq=precision == "int8")  # see cpu_session: what TensorRT computes
    feed_extra = {}
    input_names = [i.name for i in session.get_inputs()]
    if "bank" in input_names:
        from protospect.export.onnx_export import find_bank_buffer

        feed_extra["bank"] = find_bank_buffer(model)[1].detach().float().cpu().numpy()
    wrapper = FullGraph(model, meta["mean"], meta["std"]).eval()
    t_maps, o_maps, t_scores, o_scores = [], [], [], []
    with torch.no_grad():
        for frame in tqdm(frames, desc="parity", unit="img", leave=False):
            t_map, t_score = wrapper(torch.from_numpy(frame[None]))
            o_map, o_score = session.run([ANOMALY_MAP, IMAGE_SCORE], {INPUT: frame[None], **feed_extra})
            t_maps.append(t_map.numpy())
            t_scores.append(float(t_score[0]))
            o_maps.append(np.asarray(o_map, dtype=np.float32))
            o_scores.append(float(np.asarray(o_score).reshape(-1)[0]))
    t_maps, o_maps = np.concatenate(t_maps), np.concatenate(o_maps)
    t_scores, o_scores = np.array(t_scores), np.array(o_scores)
    diff = float(np.abs(t_maps - o_maps).max())
    span = float(t_maps.max() - t_maps.min()) or 1.0
    thr = float(calibration["threshold"])
    report = ParityReport(
        n_images=len(frames), precision=precision, map_max_abs=diff, map_max_rel=diff / span,
        score_max_abs=float(np.abs(t_scores - o_scores).max()),
        decisions_differ=int(((t_scores >= thr) != (o_scores >= thr)).sum()), threshold=thr)
    if labels is not None:
        labels = np.asarray(labels)
        if len(set(labels.tolist())) == 2:
            from protospect.training.metrics import image_auroc

            report.auroc_torch = float(image_auroc(labels, t_scores))
            report.auroc_onnx = float(image_auroc(labels, o_scores))
    return report
