"""The measurement tools the acceptance tables come from: studies/eval_graphs.py, studies/bench_ort.py, and the
cost tools beside them (graph_macs.py, torch_graph_bench.py) (studies, not installed: imported from their folder)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import export_fixtures as fx

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "studies"))
from bench_ort import bench  # noqa: E402 (studies/, not a package)
from eval_graphs import evaluate  # noqa: E402
from graph_macs import graph_macs  # noqa: E402
from torch_graph_bench import bench as torch_bench  # noqa: E402
from protospect.export.ort_session import cpu_session
from protospect.training.metrics import image_auroc

pytestmark = pytest.mark.torch


def test_eval_graphs_matches_a_direct_computation(fp32_graph, demo_category):
    (row,) = evaluate([fp32_graph], demo_category.parent, demo_category.name)
    frames, labels = fx.test_set(demo_category)
    session = cpu_session(fp32_graph)
    scores = [float(session.run(["image_score"], {"image": f[None]})[0][0]) for f in frames]
    assert row["precision"] == "fp32"
    assert row["image_auroc"] == pytest.approx(100 * image_auroc(labels, scores))
    assert 0 <= row["pixel_auroc"] <= 100 and 0 <= row["aupro"] <= 100  # the demo set has masks


def test_bench_times_every_graph_the_same_number_of_rounds(fp32_graph):
    rows = bench([fp32_graph, fp32_graph], runs=12, warmup=1)
    assert [r["runs"] for r in rows] == [20, 20]  # blocks of 10, round-robin, until >= runs
    for r in rows:
        assert r["precision"] == "fp32" and r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert np.isfinite(r["median_ms"]) and r["size_mib"] > 0


def test_graph_macs_counts_a_hand_built_graph_exactly(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # Conv 3 -> 8 channels, 3x3, pad 1, on 1x3x16x16: 8*16*16 outputs x 3*3*3 taps; then MatMul [8*16, 16] x [16, 4]
    w = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    m = numpy_helper.from_array(np.zeros((16, 4), np.float32), "m")
    shape = numpy_helper.from_array(np.array([128, 16], np.int64), "shape")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["r"]),
             helper.make_node("MatMul", ["r", "m"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, m, shape])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    macs, nodes_by_op, size = graph_macs(str(path))
    assert macs["Conv"] == 8 * 16 * 16 * 27 and macs["MatMul"] == 128 * 4 * 16
    assert nodes_by_op == {"Conv": 1, "Reshape": 1, "MatMul": 1} and size > 0


def test_graph_macs_sees_the_exported_backbone(fp32_graph):
    macs, nodes, _ = graph_macs(str(fp32_graph))
    assert macs["Conv"] > 1e7 and nodes["Conv"] > 10  # a Lite0 backbone, not an empty count


def test_torch_graph_bench_times_each_artifact_in_each_precision(patchcore):
    art = str(patchcore[1])
    rows = torch_bench([art, art], device="cpu", runs=3, warmup=1)
    assert [(r["precision"], r["runs"]) for r in rows] == [("fp32", 10)] * 2 + [("fp16", 10)] * 2
    for r in rows:
        assert r["device"] == "cpu" and 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
