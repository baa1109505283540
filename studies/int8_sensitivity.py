"""INT8 sensitivity per block of learned layers, judged WITHOUT test images.

    python studies/int8_sensitivity.py ART FP32.onnx --data DIR [--val 10] [--textures DIR] [--out F.json]
        [--modes only,skip] [--rules 1:3,1:3:4 [--calib-nsa 4]] [--calib-method minmax|entropy|percentile]

Evaluation set: ``--val`` train/good images that are not the artifact's shots (held-out normals)
plus copies of them with planted defects (NSA self-swap, and DRAEM texture blends with
``--textures``), made by ``training.methods.pcsnet.validate.planted_sets``. Never the test split:
choosing the float/INT8 split on test figures would be test-set model selection.

For each block (learned layers grouped by module path) two graphs are quantized with the export's
own settings (``quantize.quantize_qdq``, one calibration shared through ORT's calibration cache):
``only`` (that block INT8, every other learned layer float) and ``skip`` (the current default with
that block float); ``none`` (no layer INT8) checks that the comparison itself adds no error.
``--rules TAIL:STEM[:STRIDE]`` quantizes whole exclusion rules (``exclusion.float_regions``), with
``--calib-nsa N`` also calibrated on N NSA copies per shot (what the export adds for a decoder).
Blocks count convolutions and residual Adds (quantize_qdq puts Q/DQ on Add inputs too).
Reported against the FP32 graph on the evaluation set, Q/DQ simulated in float:
``map_err`` = mean |INT8 map - FP32 map| / (FP32 map range) in percent, and the change in image
AUROC, pixel AUROC and AUPRO on normals + planted defects (percent points).
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import onnx

from protospect.calibration.augment import AugmentConfig
from protospect.calibration.data_reader import Int8CalibrationReader, int8_calibration_frames
from protospect.calibration.exclusion import _is_learned, float_regions
from protospect.calibration.qdq_check import check_qdq
from protospect.calibration.quantize import quantize_qdq
from protospect.onnx_graph import GraphIndex
from protospect.imageio import canonical_size
from protospect.metadata import input_hw_of_props, read_metadata
from protospect.export.ort_session import cpu_session

# module path -> block label (analysis only; the export's rule is structural, calibration.exclusion)
BLOCK_PATTERNS = [
    (r"/backbone/.*?blocks\.(\d+)", "backbone.blocks.{}"),
    (r"/backbone/.*conv_stem", "backbone.stem"),
    (r"/pfa/adapters\.(\d+)", "pfa.adapter{}"),
    (r"/guide/", "guide"),
    (r"/cas/Add", "cas.add"),
    (r"/cas/refine\.0/", "cas.refine0"),  # the full-resolution pyramid level
    (r"/cas/(corr|merge|refine|fuse_refine|fuse|cls)", "cas.{}"),
]


def block_of(name: str) -> str:
    for pattern, label in BLOCK_PATTERNS:
        m = re.search(pattern, name)
        if m:
            return label.format(*[g if g is not None else "" for g in m.groups()]) if m.groups() else label
    return "other"


def learned_blocks(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Learned layers and Adds (quantize_qdq also puts Q/DQ on Add inputs) outside the distance
    path, grouped by block."""
    index = GraphIndex(model)
    distance = float_regions(model).distance
    blocks: dict[str, list[str]] = {}
    for node in index.nodes:
        if (_is_learned(index, node) or node.op_type == "Add") and node.name not in distance:
            blocks.setdefault(block_of(node.name), []).append(node.name)
    return blocks


def evaluation_set(art: Path, data: Path, category: str | None, n_val: int, textures: str | None,
                   size: int | tuple[int, int]):
    from protospect.imageio import read_rgb, resize_image
    from protospect.training.artifact import read_manifest as load_manifest
    from protospect.training.data import MVTecCategory
    from protospect.training.methods.pcsnet.validate import planted_sets

    manifest = load_manifest(art)
    category = category or (manifest.get("data") or {}).get("category")
    cat = MVTecCategory(data, category)
    shots = set(manifest.get("shots") or [])
    rest = [p for p in cat.train_good if Path(p).name not in shots]
    rest = [rest[i] for i in np.random.default_rng(1).permutation(len(rest))[:n_val]]
    normals = [resize_image(read_rgb(p), size) for p in rest]
    planted = [pair for pairs in planted_sets(normals, category, textures).values() for pair in pairs]
    return normals, planted


def run_graph(path: Path, images, simulate: bool) -> np.ndarray:
    session = cpu_session(path, threads=1, simulate_qdq=simulate)
    return np.stack([session.run(["anomaly_map"], {"image": img[None]})[0][0, 0] for img in images])


def metrics(maps: np.ndarray, n_normals: int, masks: np.ndarray) -> dict:
    from protospect.training.metrics import aupro, image_auroc, pixel_auroc

    labels = np.r_[np.zeros(n_normals), np.ones(len(masks))]
    all_masks = np.concatenate([np.zeros((n_normals,) + masks.shape[1:], bool), masks])
    return {"image_auroc": 100 * image_auroc(labels, maps.reshape(len(maps), -1).max(1)),
            "pixel_auroc": 100 * pixel_auroc(all_masks, maps),
            "aupro": 100 * aupro(all_masks, maps)}


def compare(maps, ref, n_normals, masks, ref_metrics) -> dict:
    span = float(ref.max() - ref.min()) or 1.0
    row = {"map_err": 100 * float(np.abs(maps - ref).mean()) / span,
           "map_err_planted": 100 * float(np.abs(maps[n_normals:] - ref[n_normals:]).mean()) / span}
    m = metrics(maps, n_normals, masks)
    row.update({f"d_{k}": m[k] - ref_metrics[k] for k in m})
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("fp32", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--category", default=None)
    ap.add_argument("--val", type=int, default=10)
    ap.add_argument("--textures", default=None)
    ap.add_argument("--calib-method", default="minmax", choices=["minmax", "entropy", "percentile"])
    ap.add_argument("--modes", default="only,skip", help="comma list of: only, skip (empty: none)")
    ap.add_argument("--rules", default="", help="comma list of TAIL:STEM[:STRIDE] (--float-tail:--float-stem:--float-stride) "
                    "whole rules to compare")
    ap.add_argument("--calib-nsa", type=int, default=0, help="with --rules: also calibrate with N NSA copies per shot")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from protospect.export.shots import shot_paths
    from protospect.training.artifact import read_manifest as load_manifest

    model = onnx.load(str(args.fp32))
    props = read_metadata(model)
    size = canonical_size(input_hw_of_props(props, args.fp32))
    normals, planted = evaluation_set(args.artifact, args.data, args.category, args.val, args.textures, size)
    images = normals + [p[0] for p in planted]
    masks = np.stack([p[1] for p in planted]).astype(bool)
    ref = run_graph(args.fp32, images, simulate=False)
    ref_metrics = metrics(ref, len(normals), masks)
    print(json.dumps({"fp32": ref_metrics, "normals": len(normals), "planted": len(planted)}), flush=True)

    shots = shot_paths(load_manifest(args.artifact))
    frames = int8_calibration_frames(shots, size, AugmentConfig())
    blocks = learned_blocks(model)
    default = float_regions(model, float_tail=1, float_stem=3)  # the rule before this study
    base_float = default.distance | (default.tail - {n for b in blocks.values() for n in b})  # non-learned tail
    all_learned = {n for b in blocks.values() for n in b}
    configs = {"none": base_float | all_learned} if args.modes else {}
    for mode in filter(None, args.modes.split(",")):
        for name, layers in blocks.items():
            if mode == "only":
                configs[f"only:{name}"] = base_float | (all_learned - set(layers))
            elif mode == "skip" and not set(layers) <= set(default.all):
                configs[f"skip:{name}"] = set(default.all) | set(layers)
    calib_sets = {"shots": frames}
    rules = list(filter(None, args.rules.split(",")))
    for r in rules:
        t, st, *stride = (int(v) for v in r.split(":"))
        configs[r] = set(float_regions(model, float_tail=t, float_stem=st, float_stride=(stride or [0])[0]).all)
    if rules and args.calib_nsa:
        calib_sets["shots+nsa"] = int8_calibration_frames(shots, size, AugmentConfig(pseudo_anomalies=args.calib_nsa),
                                                     with_anomalies=True)
        for r in rules:
            configs[f"{r}+nsa"] = configs[r]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="protospect-sens-") as tmp:
        for label, exclude in configs.items():
            kind = "shots+nsa" if label.endswith("+nsa") else "shots"
            cache = Path(tmp) / f"calib-{args.calib_method}-{kind}.json"
            out = Path(tmp) / "q.onnx"
            quantize_qdq(args.fp32, out, Int8CalibrationReader(calib_sets[kind]), args.calib_method, sorted(exclude),
                         calibration_cache_path=cache)
            row = compare(run_graph(out, images, simulate=True), ref, len(normals), masks, ref_metrics)
            q = onnx.load(str(out))
            row["qdq_ok"] = check_qdq(q, float_nodes=exclude, strict_nodes=default.distance).ok
            row["int8_layers"] = len(all_learned - exclude)
            row["calib_frames"] = len(calib_sets[kind])
            rows[label] = row
            print(json.dumps({label: {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}}), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"fp32": ref_metrics, "blocks": blocks, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
