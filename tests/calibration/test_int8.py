"""INT8 Q/DQ graphs: what stays float, where Q/DQ sits (TensorRT explicit quantization), caching, accuracy."""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import export_fixtures as fx
from protospect.calibration.augment import AugmentConfig, expand
from protospect.calibration.data_reader import Int8CalibrationReader, int8_calibration_frames
from protospect.calibration.exclusion import float_regions
from protospect.calibration.qdq_check import check_qdq
from protospect.calibration.quantize import int8_from_onnx
from protospect.errors import ConfigError
from protospect.export.ort_session import cpu_session

pytestmark = pytest.mark.torch

FAST = AugmentConfig(per_image=15)  # 2 shots -> 32 frames (fewer gives noisy ranges)


@pytest.fixture(scope="module")
def int8_result(fp32_graph, demo_category, tmp_path_factory):
    shots = sorted((demo_category / "train" / "good").glob("*.png"))[: fx.SHOTS]
    cache = tmp_path_factory.mktemp("int8cache")
    out = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    return int8_from_onnx(fp32_graph, out, shots, augment=FAST, cache_dir=cache), shots, cache


def test_augmentations_are_light_and_deterministic():
    yy, xx = np.mgrid[0:64, 0:64]
    img = np.stack([40 + 2 * xx, 60 + 2 * yy, 100 + xx + yy], axis=-1).astype(np.uint8)  # smooth: shifts are small
    a, b = expand([img], AugmentConfig(per_image=4, seed=3)), expand([img], AugmentConfig(per_image=4, seed=3))
    assert len(a) == 5 and a[0] is img
    assert len(expand([img, img], AugmentConfig())) >= 32  # default: enough views for stable ranges
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    for view in a[1:]:
        assert view.shape == img.shape and view.dtype == np.uint8
        assert 0 < np.abs(view.astype(int) - img).mean() < 20


def test_reader_feeds_uint8_frames_and_rewinds():
    frames = int8_calibration_frames([np.zeros((80, 100, 3), np.uint8)] * 2, 64, AugmentConfig(per_image=2))
    reader = Int8CalibrationReader(frames)
    seen = []
    while (item := reader.get_next()) is not None:
        seen.append(item["image"])
    assert len(seen) == 6 and all(x.shape == (1, 64, 64, 3) and x.dtype == np.uint8 for x in seen)
    reader.rewind()
    assert reader.get_next() is not None


def test_distance_and_head_found_by_structure(fp32_graph):
    model = onnx.load(str(fp32_graph))
    regions = float_regions(model)
    by_name = {n.name: n for n in model.graph.node}
    distance_ops = {by_name[n].op_type for n in regions.distance}
    assert {"MatMul", "TopK", "ReduceSum"} <= distance_ops
    assert "Conv" not in distance_ops
    tail_ops = [by_name[n].op_type for n in regions.tail]
    assert tail_ops.count("Conv") == 2 and "ReduceMax" in tail_ops and "Resize" in tail_ops  # blur + max
    backbone_convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in regions.tail]
    assert len(backbone_convs) >= 20


def _distance_nodes(features: str) -> list:
    """features NCHW -> per-position queries -> GEMM against bankT -> TopK (k smallest) -> map "d"
    (initializers "qshape", "bankT", "k", "dshape"): the distance path the export keeps float."""
    return [
        helper.make_node("Transpose", [features], ["ft"], perm=[0, 2, 3, 1], name="to_nhwc"),
        helper.make_node("Reshape", ["ft", "qshape"], ["q"], name="queries"),
        helper.make_node("MatMul", ["q", "bankT"], ["dots"], name="dist_gemm"),
        helper.make_node("TopK", ["dots", "k"], ["vals", "idx"], largest=0, name="topk"),
        helper.make_node("Transpose", ["vals"], ["vt"], perm=[0, 2, 1], name="vt"),
        helper.make_node("Reshape", ["vt", "dshape"], ["d"], name="to_map"),
    ]


def _decoder_graph() -> onnx.ModelProto:
    """image -> Conv -> TopK over a bank -> decoder Conv(4->8) -> Conv(8->8) -> Conv(8->1) -> outputs."""
    rng = np.random.default_rng(0)
    w = lambda name, *shape: numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)  # noqa: E731
    inits = [w("w0", 6, 3, 1, 1), w("bankT", 6, 10), w("w1", 8, 4, 1, 1), w("w2", 8, 8, 3, 3), w("w3", 1, 8, 1, 1),
             numpy_helper.from_array(np.array([4], np.int64), "k"), numpy_helper.from_array(np.array([1, 16, 6], np.int64), "qshape"),
             numpy_helper.from_array(np.array([1, 4, 4, 4], np.int64), "dshape"), numpy_helper.from_array(np.array([0, 2, 1], np.int64), "unused")]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["f"], name="backbone_conv"),
        *_distance_nodes("f"),
        helper.make_node("Conv", ["d", "w1"], ["h1"], name="dec1"),
        helper.make_node("Conv", ["h1", "w2"], ["h2"], pads=[1, 1, 1, 1], name="dec2"),
        helper.make_node("Conv", ["h2", "w3"], ["y"], name="dec_last"),
    ]
    graph = helper.make_graph(nodes, "dec", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_stem_layers_kept_float(fp32_graph):
    model = onnx.load(str(fp32_graph))
    regions = float_regions(model, float_stem=3)
    by_name = {n.name: n for n in model.graph.node}
    assert len(regions.stem) == 3 and {by_name[n].op_type for n in regions.stem} == {"Conv"}
    first_conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert first_conv.name in regions.stem
    assert float_regions(_decoder_graph(), float_stem=1).stem == {"backbone_conv"}


@pytest.mark.parametrize("tail, float_convs", [(1, {"dec_last"}), (2, {"dec2", "dec_last"}), (0, set())])
def test_decoder_tail_kept_float(tail, float_convs):
    model = _decoder_graph()
    regions = float_regions(model, float_tail=tail)
    assert regions.distance == {"dist_gemm", "topk"}
    convs_float = {n for n in regions.tail if n.startswith("dec")}
    assert convs_float == float_convs
    assert "backbone_conv" not in regions.all


def test_int8_graph_has_tensorrt_qdq_placement(int8_result, fp32_graph):
    result, _, _ = int8_result
    q = onnx.load(str(result.path))
    props = {p.key: p.value for p in q.metadata_props}
    assert props["protospect.precision"] == "int8"
    assert props["protospect.threshold"] == {p.key: p.value for p in onnx.load(str(fp32_graph)).metadata_props}["protospect.threshold"]
    regions = float_regions(onnx.load(str(fp32_graph)), float_stem=3)
    report = check_qdq(q, float_nodes=result.float_nodes, strict_nodes=regions.distance)
    assert report.ok, report.problems
    assert len(regions.stem) == 3 and set(report.float_layers) >= regions.stem
    n_backbone = sum(1 for n in q.graph.node if n.op_type == "Conv" and n.name not in result.float_nodes)
    assert len([n for n in report.quantized if "Conv" in n]) == n_backbone >= 20
    assert set(report.float_layers) >= {n.name for n in q.graph.node if n.op_type == "MatMul"}
    assert any(t.data_type == TensorProto.INT8 for t in q.graph.initializer)
    assert {n.domain for n in q.graph.node} == {""} and [(o.domain, o.version) for o in q.opset_import] == [("", 17)]
    assert result.n_frames == fx.SHOTS * (FAST.per_image + 1)


def test_qdq_check_catches_what_tensorrt_rejects(int8_result):
    result, _, _ = int8_result
    q = onnx.load(str(result.path))
    # Pretend a quantized backbone conv had to stay float: it reads Q/DQ tensors -> reported.
    conv = next(n for n in q.graph.node if n.op_type == "Conv" and n.name not in result.float_nodes)
    assert any(conv.name in p for p in check_qdq(q, float_nodes=[*result.float_nodes, conv.name]).problems)
    # An asymmetric zero point is reported.
    zp_name = next(n.input[2] for n in q.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2)
    for t in q.graph.initializer:
        if t.name == zp_name:
            t.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(t).shape, 3, np.int8), zp_name))
    assert any("zero point" in p for p in check_qdq(q, float_nodes=result.float_nodes).problems)


def _pairs_in_order(scores, labels) -> float:
    """Image AUROC: the share of (defective, normal) pairs where the defective part scores higher (ties half)."""
    bad, good = scores[labels == 1][:, None], scores[labels == 0][None, :]
    return float((bad > good).mean() + 0.5 * (bad == good).mean())


def test_int8_keeps_decisions_on_generated_parts(int8_result, fp32_graph, demo_category):
    result, _, _ = int8_result
    frames, labels = fx.test_set(demo_category)
    # Q/DQ simulated in float (what TensorRT emulates); ORT's own s8s8 kernels saturate on AVX2 CPUs.
    fp32, int8 = cpu_session(fp32_graph), cpu_session(result.path, simulate_qdq=True)
    s32 = np.array([fp32.run(["image_score"], {"image": f[None]})[0][0] for f in frames])
    s8 = np.array([int8.run(["image_score"], {"image": f[None]})[0][0] for f in frames])
    labels = np.array(labels)
    # INT8 changes scores but must rank defective parts above normal ones as FP32 does: the share of
    # (defective, normal) pairs in the right order (image AUROC) may not drop.
    a32, a8 = _pairs_in_order(s32, labels), _pairs_in_order(s8, labels)
    assert a32 > 0.5 and a8 >= a32 - 0.02, (a32, a8)
    assert np.abs(s8 / s32 - 1).max() < 0.15


def test_cache_hit_and_miss(int8_result, fp32_graph, tmp_path):
    result, shots, cache = int8_result
    again = int8_from_onnx(fp32_graph, tmp_path / "again.onnx", shots, augment=FAST, cache_dir=cache)
    assert again.cache_hit and again.path.read_bytes() == result.path.read_bytes()
    other = int8_from_onnx(fp32_graph, tmp_path / "other.onnx", shots, augment=AugmentConfig(per_image=2), cache_dir=cache)
    assert not other.cache_hit
    assert len(list(cache.glob("*.onnx"))) == 2


def test_truncated_cache_entry_is_rebuilt_not_taken_as_a_hit(int8_result, fp32_graph, tmp_path):
    """An interrupted copy into the cache (a kill, a full disk) leaves part of a graph: the next run
    must rebuild it, not load half a graph as a cache hit."""
    result, shots, cache = int8_result
    own_cache = tmp_path / "cache"
    shutil.copytree(cache, own_cache)
    entry = next(p for p in own_cache.glob("*.onnx") if p.read_bytes() == result.path.read_bytes())
    entry.write_bytes(result.path.read_bytes()[: entry.stat().st_size // 2])
    again = int8_from_onnx(fp32_graph, tmp_path / "again.onnx", shots, augment=FAST, cache_dir=own_cache)
    assert not again.cache_hit
    assert again.path.read_bytes() == result.path.read_bytes() == entry.read_bytes()  # rebuilt, cache mended
    assert int8_from_onnx(fp32_graph, tmp_path / "third.onnx", shots, augment=FAST, cache_dir=own_cache).cache_hit
    assert not list(own_cache.glob("*.part")) and not list(tmp_path.glob("*.part"))


def test_cache_key_covers_exclusion_rule_quantize_options_and_version(int8_result, fp32_graph, tmp_path, monkeypatch):
    """Same CLI settings, but another float-node rule, quantize_static option or protospect: never a stale hit."""
    from protospect.calibration import quantize

    _, shots, cache = int8_result
    frames = [np.zeros((8, 8, 3), np.uint8)]

    def key(nodes=("a",)):
        return quantize._cache_key(fp32_graph, frames, FAST, quantize.quantize_settings("minmax", nodes), (1, 3, 4))

    base = key()
    assert key(("a", "b")) != base
    monkeypatch.setitem(quantize.EXTRA_OPTIONS, "QuantizeBias", True)
    assert key() != base
    monkeypatch.undo()
    monkeypatch.setattr(quantize, "__version__", "0.0.0-older")
    assert key() != base
    monkeypatch.undo()
    assert key() == base
    # end to end: a rule that keeps one more conv float misses the cache an older rule filled
    own_cache = tmp_path / "cache"
    shutil.copytree(cache, own_cache)
    assert int8_from_onnx(fp32_graph, tmp_path / "same.onnx", shots, augment=FAST, cache_dir=own_cache).cache_hit
    real = quantize.float_regions

    def one_more_float(model, **kw):
        regions = real(model, **kw)
        regions.stem.add(next(n.name for n in model.graph.node if n.op_type == "Conv" and n.name not in regions.all))
        return regions

    monkeypatch.setattr(quantize, "float_regions", one_more_float)
    assert not int8_from_onnx(fp32_graph, tmp_path / "rule.onnx", shots, augment=FAST, cache_dir=own_cache).cache_hit


def test_refuses_non_fp32_and_bank_input(int8_result, tmp_path, patchcore):
    result, shots, _ = int8_result
    with pytest.raises(ConfigError, match="FP32"):
        int8_from_onnx(result.path, tmp_path / "x.onnx", shots)
    from protospect.export.onnx_export import onnx_from_model

    model, _ = patchcore
    g = onnx_from_model(model, model.meta, model.calibration, tmp_path / "bank.onnx", bank_as_input=True)
    with pytest.raises(ConfigError, match="bank"):
        int8_from_onnx(g.path, tmp_path / "y.onnx", shots)


def _strided_graph() -> onnx.ModelProto:
    """x [1,3,16,16] -> Conv s2 (stride 2) -> Conv s2 (stride 4) -> Conv s2 (stride 8) -> queries -> TopK
    over a bank -> decoder Conv(4->8) -> Conv(8->1): a backbone whose layers sit at known strides."""
    rng = np.random.default_rng(1)
    w = lambda name, *shape: numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)  # noqa: E731
    c = lambda name, *v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    inits = [w("w1", 4, 3, 3, 3), w("w2", 6, 4, 3, 3), w("w3", 6, 6, 3, 3), w("bankT", 6, 10),
             w("d1", 8, 4, 1, 1), w("d2", 1, 8, 1, 1), c("k", 4), c("qshape", 1, 4, 6), c("dshape", 1, 4, 2, 2)]
    s2 = dict(strides=[2, 2], pads=[1, 1, 1, 1])
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["f1"], name="stride2_conv", **s2),
        helper.make_node("Conv", ["f1", "w2"], ["f2"], name="stride4_conv", **s2),
        helper.make_node("Conv", ["f2", "w3"], ["f3"], name="stride8_conv", **s2),
        *_distance_nodes("f3"),
        helper.make_node("Conv", ["d", "d1"], ["h1"], name="dec1"),
        helper.make_node("Conv", ["h1", "d2"], ["y"], name="dec_last"),
    ]
    graph = helper.make_graph(nodes, "strided", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("stride, fine", [(4, {"stride2_conv", "stride4_conv"}), (2, {"stride2_conv"}),
                                          (8, {"stride2_conv", "stride4_conv", "stride8_conv"}), (0, set())])
def test_stride_rule_keeps_fine_resolution_layers_float(stride, fine):
    """The export default (float_stride=4): layers whose output is at stride <= 4 stay float, found
    from inferred shapes, whatever their number; decoder layers after the TopK are never 'stem'."""
    regions = float_regions(_strided_graph(), float_tail=1, float_stem=0, float_stride=stride)
    assert regions.stem == fine
    assert regions.distance == {"dist_gemm", "topk"}
    assert regions.decoder_int8 == {"dec1"} and "dec_last" in regions.tail
    # union with the count rule: the first layer is float under float_stem=1 whatever the stride rule
    assert float_regions(_strided_graph(), float_stem=1, float_stride=2).stem == {"stride2_conv"}


def test_pseudo_anomaly_frames_only_for_graphs_with_an_int8_decoder(fp32_graph):
    yy, xx = np.mgrid[0:64, 0:64]
    img = np.stack([40 + 2 * xx, 60 + 2 * yy, 100 + xx + yy], axis=-1).astype(np.uint8)
    cfg = AugmentConfig(per_image=3, pseudo_anomalies=2)
    plain = int8_calibration_frames([img], 64, cfg)
    both = int8_calibration_frames([img], 64, cfg, with_anomalies=True)
    assert len(plain) == 4 and len(both) == 6 and all(np.array_equal(a, b) for a, b in zip(plain, both))
    extra = both[4:]
    assert all(x.shape == img.shape and x.dtype == np.uint8 and (x != img).any() for x in extra)
    assert all(np.array_equal(a, b) for a, b in zip(extra, int8_calibration_frames([img], 64, cfg, with_anomalies=True)[4:]))
    # PatchCore (no learned layer after its TopK) gets normal frames only; a decoder graph gets both.
    assert float_regions(onnx.load(str(fp32_graph))).decoder_int8 == set()
    assert float_regions(_decoder_graph()).decoder_int8 == {"dec1", "dec2"}


def test_patchcore_default_int8_keeps_stride4_layers_float(int8_result, fp32_graph):
    result, _, _ = int8_result
    regions = float_regions(onnx.load(str(fp32_graph)), float_stem=0, float_stride=4)
    assert len(regions.stem) > 3 and set(result.float_nodes) >= regions.stem
    # The stride rule (chosen on held-out images) already holds the first 3 layers, which the old
    # default --float-stem 3 (chosen on test images) kept float: dropping that default changed nothing.
    assert float_regions(onnx.load(str(fp32_graph)), float_stem=3).stem <= regions.stem
    assert not result.with_anomalies
