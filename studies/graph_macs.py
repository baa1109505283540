"""Multiply-accumulates per frame of exported graphs, by operator type: a machine-independent cost beside the timings.

A timing says what one machine did under its load; the MAC count says what any machine must compute. It is the
nearest this project gets to a GPU cost without a GPU, and a proxy only, not a bound: the convolutions dominate a
GPU's time only while the graph keeps the device busy (small graphs are launch-bound there, and their ratio is
nearer 1), and memory traffic is not counted. Conv, ConvTranspose,
MatMul and Gemm are counted from the shapes ONNX's shape inference gives (batch 1); everything else is listed by
node count only.

    python studies/graph_macs.py runs/cost_v14/{s256,g256,m1024,g512}/model.onnx
"""
from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np
import onnx
from onnx import shape_inference

COUNTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """name -> static shape of every value shape inference resolves (dynamic dims read as 1: batch 1)."""
    out = {}
    g = model.graph
    for v in list(g.value_info) + list(g.input) + list(g.output):
        dims = v.type.tensor_type.shape.dim
        out[v.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    for init in g.initializer:
        out[init.name] = list(init.dims)
    return out


def node_macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int:
    """Multiply-accumulates of one counted node (0 where a shape is unknown)."""
    try:
        if node.op_type in ("Conv", "ConvTranspose"):
            w, y = shapes[node.input[1]], shapes[node.output[0]]
            # every output element takes (C_in / groups) * kernel taps; w is [C_out, C_in/groups, kh, kw]
            return int(np.prod(y)) * int(np.prod(w[1:]))
        if node.op_type in ("MatMul", "Gemm"):
            a, y = shapes[node.input[0]], shapes[node.output[0]]
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if trans_a else a[-1]
            return int(np.prod(y)) * int(k)
    except KeyError:
        return 0
    return 0


def graph_macs(path: str) -> tuple[collections.Counter, collections.Counter, int]:
    """(MACs by op type, node count by op type, file size in bytes)."""
    model = shape_inference.infer_shapes(onnx.load(path))
    shapes = _shapes(model)
    macs, nodes = collections.Counter(), collections.Counter()
    for node in model.graph.node:
        nodes[node.op_type] += 1
        if node.op_type in COUNTED:
            macs[node.op_type] += node_macs(node, shapes)
    return macs, nodes, Path(path).stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graphs", nargs="+")
    args = ap.parse_args()
    rows = [(p, *graph_macs(p)) for p in args.graphs]
    base = sum(rows[0][1].values()) or 1
    print(f"{'graph':48s} {'GMAC':>7s} {'x first':>8s} {'Conv':>7s} {'MatMul':>7s} {'nodes':>6s} {'MB':>6s}")
    for path, macs, nodes, size in rows:
        total = sum(macs.values())
        print(f"{path:48s} {total / 1e9:7.2f} {total / base:8.2f} {macs['Conv'] / 1e9:7.2f} "
              f"{(macs['MatMul'] + macs['Gemm']) / 1e9:7.2f} {sum(nodes.values()):6d} {size / 1e6:6.1f}")


if __name__ == "__main__":
    main()
