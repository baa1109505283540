"""FP16 graph: float16 feature extractor, float32 distance/top-k/head and bank, unchanged I/O, runs on ORT CPU."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import export_fixtures as fx
from protospect.errors import ConfigError
from protospect.export.fp16 import fp16_from_onnx
from protospect.export.ort_session import cpu_session

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def fp16_graph(fp32_graph, tmp_path_factory):
    return fp16_from_onnx(fp32_graph, tmp_path_factory.mktemp("fp16") / "model.fp16.onnx")


def test_precision_split_and_io(fp16_graph, fp32_graph):
    path, kept = fp16_graph
    g = onnx.load(str(path))
    onnx.checker.check_model(g, full_check=True)
    assert {p.key: p.value for p in g.metadata_props}["protospect.precision"] == "fp16"
    assert g.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in g.graph.output)
    inits = {t.name: t for t in g.graph.initializer}
    by_name = {n.name: n for n in g.graph.node}
    convs = [n for n in g.graph.node if n.op_type == "Conv" and n.name not in kept]
    assert len(convs) >= 20 and all(inits[n.input[1]].data_type == TensorProto.FLOAT16 for n in convs)
    matmul = next(n for n in g.graph.node if n.op_type == "MatMul")
    assert matmul.name in kept and inits[matmul.input[1]].data_type == TensorProto.FLOAT  # the bank stays fp32
    inferred = onnx.shape_inference.infer_shapes(g)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    topk = next(n for n in g.graph.node if n.op_type == "TopK")
    assert types[topk.input[0]] == TensorProto.FLOAT
    # Casts only where the fp16 and fp32 regions meet (no fp32 -> fp16 -> fp32 round trips).
    casts = [n for n in g.graph.node if n.op_type == "Cast"]
    assert len(casts) <= 4
    assert not any(by_name.get(c.input[0]) is not None and by_name[c.input[0]].op_type == "Cast" for c in casts)
    assert path.stat().st_size < 0.75 * fp32_graph.stat().st_size


def test_fp16_runs_on_ort_cpu_close_to_fp32(fp16_graph, fp32_graph, demo_category):
    path, _ = fp16_graph
    a, b = cpu_session(fp32_graph), cpu_session(path)
    frames, _ = fx.test_set(demo_category)
    for frame in frames[:3]:
        m32, s32 = a.run(None, {"image": frame[None]})
        m16, s16 = b.run(None, {"image": frame[None]})
        assert m16.dtype == np.float32 and m16.shape == m32.shape
        assert np.abs(m16 - m32).max() <= 0.02 * (m32.max() - m32.min())
        assert abs(float(s16[0] / s32[0]) - 1) < 0.01


def test_fp16_refuses_a_converted_graph(fp16_graph, tmp_path):
    with pytest.raises(ConfigError, match="FP32"):
        fp16_from_onnx(fp16_graph[0], tmp_path / "again.onnx")
