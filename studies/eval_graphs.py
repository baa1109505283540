"""Accuracy of exported graphs under ONNX Runtime CPU on an MVTec-layout category (FP32 vs FP16 vs INT8).

    python studies/eval_graphs.py --data DIR --category bottle model.onnx model.fp16.onnx model.int8.onnx

Prints image AUROC, pixel AUROC and AUPRO (percent) per graph and their change against the first
graph. INT8 graphs run with Q/DQ simulated in float (what TensorRT's explicit quantization
computes) unless --int8-kernels, which uses ORT's own INT8 kernels (CPU-specific accuracy).
Pixel metrics need masks; categories without them report image AUROC only.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from protospect.imageio import canonical_size
from protospect.metadata import input_hw_of_props, read_metadata
from protospect.export.ort_session import cpu_session, graph_precision


def evaluate(graphs: list[Path], data: Path, category: str | None, int8_kernels: bool = False, threads: int = 2) -> list[dict]:
    import onnx

    from protospect.training.data import MVTecCategory, load_item
    from protospect.training.metrics import aupro, image_auroc, pixel_auroc

    cat = MVTecCategory(data, category)
    rows = []
    for path in graphs:
        props = read_metadata(onnx.load(str(path), load_external_data=False))
        size = canonical_size(input_hw_of_props(props, path))
        precision = graph_precision(path)
        session = cpu_session(path, threads=threads, simulate_qdq=precision == "int8" and not int8_kernels)
        labels, scores, maps, masks = [], [], [], []
        for item in tqdm(cat.test, desc=path.name, unit="img", leave=False):
            img, mask = load_item(item, size)
            m, s = session.run(["anomaly_map", "image_score"], {"image": img[None]})
            labels.append(item.label)
            scores.append(float(np.asarray(s).reshape(-1)[0]))
            maps.append(m[0, 0])
            masks.append(mask)
        row = {"graph": path.name, "precision": precision, "image_auroc": 100 * image_auroc(labels, scores)}
        if all(m is not None for m in masks):
            row["pixel_auroc"] = 100 * pixel_auroc(np.stack(masks), np.stack(maps))
            row["aupro"] = 100 * aupro(np.stack(masks), np.stack(maps))
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("graphs", nargs="+", type=Path)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--category", default=None)
    p.add_argument("--int8-kernels", action="store_true", help="run INT8 graphs with ORT's INT8 kernels, not simulated Q/DQ")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = evaluate(args.graphs, args.data, args.category, args.int8_kernels, args.threads)
    base = rows[0]
    keys = [k for k in ("image_auroc", "pixel_auroc", "aupro") if k in base]
    print(f"{'graph':32s} {'precision':9s} " + " ".join(f"{k:>20s}" for k in keys))
    for r in rows:
        cells = " ".join(f"{r[k]:8.2f} ({r[k] - base[k]:+6.2f})    " for k in keys)
        print(f"{r['graph']:32s} {r['precision']:9s} {cells}")
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
