"""The default, bank-as-input and split graphs of a real PatchCore artifact: contract section 6."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

import export_fixtures as fx
from protospect.errors import ArtifactError, ConfigError
from protospect.contract import bank_sha256
from protospect.metadata import build_metadata
from protospect.export.op_census import census
from protospect.export.onnx_export import TRT_MAX_TOPK, onnx_from_model, split_from_model
from protospect.export.ort_session import cpu_session
from protospect.export.parity import parity_from_model
from protospect.training.artifact import artifact_sha256

pytestmark = pytest.mark.torch


def test_graph_io_metadata_and_ops(patchcore, fp32_graph):
    model, art = patchcore
    g = onnx.load(str(fp32_graph))
    onnx.checker.check_model(g, full_check=True)
    assert max(o.version for o in g.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert all(n.domain in ("", "ai.onnx") for n in g.graph.node), "no custom op in the default graph"
    (inp,) = g.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, fx.SIZE, fx.SIZE, 3]
    assert [o.name for o in g.graph.output] == ["anomaly_map", "image_score"]
    first = [n for n in g.graph.node if "image" in n.input]
    assert [n.op_type for n in first] == ["Cast"], "TensorRT takes uint8 only straight into a Cast"
    ops = {n.op_type for n in g.graph.node}
    assert {"MatMul", "ReduceSum", "TopK"} <= ops
    props = {p.key: p.value for p in g.metadata_props}
    assert props["protospect.format_version"] == "1"
    assert props["protospect.method"] == "patchcore" and props["protospect.preset"] == "edge"
    assert props["protospect.input_layout"] == "NHWC-uint8-RGB"
    assert json.loads(props["protospect.input_size"]) == [fx.SIZE, fx.SIZE]
    assert json.loads(props["protospect.mean"]) == pytest.approx(model.meta["mean"])
    assert float(props["protospect.threshold"]) == model.calibration["threshold"]
    assert json.loads(props["protospect.map_range"]) == pytest.approx(model.calibration["map_range"])
    assert props["protospect.artifact_sha256"] == artifact_sha256(art)
    assert props["protospect.precision"] == "fp32" and props["protospect.graph"] == "full"


def test_parity_with_pytorch_on_unseen_images(patchcore, fp32_graph, demo_category):
    model, _ = patchcore
    frames, labels = fx.test_set(demo_category)
    report = parity_from_model(model, fp32_graph, frames + fx.held_out_normals(demo_category),
                               labels + [0, 0])
    assert report.map_max_rel <= 1e-4, report.format()
    assert report.decisions_differ == 0
    assert round(report.auroc_torch, 3) == round(report.auroc_onnx, 3)
    assert report.ok


def _run(session, frame, **extra):
    return session.run(["anomaly_map", "image_score"], {"image": frame[None], **extra})


def test_bank_as_input_swaps_the_bank_without_reexport(patchcore, tmp_path, demo_category):
    model, _ = patchcore
    exported = onnx_from_model(model, model.meta, model.calibration, tmp_path / "bank.onnx", bank_as_input=True)
    session = cpu_session(exported.path)
    bank_input = [i for i in session.get_inputs() if i.name == "bank"][0]
    assert bank_input.shape == list(model.bank.shape)
    frame = fx.test_set(demo_category)[0][-1]
    full = cpu_session(onnx_from_model(model, model.meta, model.calibration, tmp_path / "full.onnx").path)
    same = _run(session, frame, bank=model.bank.numpy())
    np.testing.assert_allclose(same[0], _run(full, frame)[0], rtol=1e-5, atol=1e-4)
    # A different bank (every row shifted) changes the answer exactly as PyTorch with that bank does.
    new_bank = (model.bank + 0.5).contiguous()
    swapped = _run(session, frame, bank=new_bank.numpy())
    kept = model.bank.clone()
    try:
        model.bank.copy_(new_bank)
        with torch.no_grad():
            from protospect.export.deploy import FullGraph

            ref = FullGraph(model, model.meta["mean"], model.meta["std"])(torch.from_numpy(frame[None]))
    finally:
        model.bank.copy_(kept)
    assert not np.allclose(swapped[0], same[0])
    np.testing.assert_allclose(swapped[0], ref[0].numpy(), rtol=1e-4, atol=1e-3)
    # protospect's runtime feeds `image` only: it refuses the graph at load, not on the first frame
    from protospect.runtime.backends.ort import OrtBackend

    with pytest.raises(ArtifactError, match="input 'bank'"):
        with OrtBackend(exported.path):
            pass


def _knn_sqdist(queries, bank, k):
    d = (queries ** 2).sum(-1, keepdims=True) + (bank ** 2).sum(-1)[None, None] - 2 * queries @ bank.T
    return np.sort(d, axis=-1)[..., :k].astype(np.float32)


def test_split_graphs_reproduce_the_full_graph(patchcore, fp32_graph, tmp_path, demo_category):
    model, _ = patchcore
    paths = split_from_model(model, model.meta, model.calibration, tmp_path / "split", artifact_sha256="x")
    feats, head = cpu_session(paths["features"]), cpu_session(paths["head"])
    bank = np.load(paths["bank"])
    assert bank.dtype == np.float32 and bank.shape == tuple(model.bank.shape)
    fprops = {p.key: p.value for p in onnx.load(str(paths["features"])).metadata_props}
    hprops = {p.key: p.value for p in onnx.load(str(paths["head"])).metadata_props}
    assert fprops["protospect.bank_sha256"] == hprops["protospect.bank_sha256"] == bank_sha256(bank)
    assert fprops["protospect.graph"] == "features" and fprops["protospect.split_k"] == "1"
    assert json.loads(fprops["protospect.grid"]) == model.meta["grid"]
    assert [o.name for o in feats.get_outputs()] == ["queries"]
    assert [i.name for i in head.get_inputs()] == ["knn_sqdist"]
    full = cpu_session(fp32_graph)
    for frame in fx.test_set(demo_category)[0][-2:]:
        (queries,) = feats.run(None, {"image": frame[None]})
        knn = _knn_sqdist(queries, bank, 1)
        m_split, s_split = head.run(["anomaly_map", "image_score"], {"knn_sqdist": knn})
        m_full, s_full = _run(full, frame)
        span = m_full.max() - m_full.min()
        assert np.abs(m_split - m_full).max() <= 1e-4 * span + 1e-5
        assert s_split.shape == (1,) and abs(float(s_split[0] - s_full[0])) <= 1e-4 * span + 1e-5


def test_split_folder_is_checked_as_one_export_by_the_runtime(patchcore, tmp_path, demo_category):
    from protospect.runtime.backends.split import SplitOrtBackend

    model, _ = patchcore
    folder = tmp_path / "split"
    split_from_model(model, model.meta, model.calibration, folder, artifact_sha256="x")
    frame = fx.test_set(demo_category)[0][-1]
    with SplitOrtBackend(folder) as b:
        b.infer(frame)
    np.save(folder / "bank.npy", np.load(folder / "bank.npy") + 0.5)  # a bank that is not the exported one
    with pytest.raises(ArtifactError, match="bank.npy is not the bank"):
        with SplitOrtBackend(folder):
            pass


@pytest.mark.parametrize("threshold", [float("nan"), float("inf")])
def test_non_finite_threshold_is_not_exported(threshold):
    meta = {"input_size": 8, "mean": [0.0] * 3, "std": [1.0] * 3}
    with pytest.raises(ArtifactError, match="threshold .* is not finite"):
        build_metadata(meta, {"threshold": threshold, "map_range": [0.0, 1.0]}, artifact_sha256="x")


def test_topk_over_tensorrt_limit_is_refused(tmp_path):
    from standin_model import StandInPatchCore

    model = StandInPatchCore(size=32, k=TRT_MAX_TOPK + 1, bank_rows=TRT_MAX_TOPK + 8)
    with pytest.raises(ConfigError, match=str(TRT_MAX_TOPK)):
        onnx_from_model(model, model.meta, model.calibration, tmp_path / "big_k.onnx")
    with pytest.raises(ConfigError, match=str(TRT_MAX_TOPK)):
        split_from_model(model, model.meta, model.calibration, tmp_path / "split")
    assert not (tmp_path / "big_k.onnx").exists()


def test_split_with_k_above_one_and_old_opset(tmp_path):
    """The stand-in model takes the mean of k=3 neighbours: knn_sqdist carries k columns."""
    from standin_model import StandInPatchCore

    rng = np.random.default_rng(0)
    model = StandInPatchCore(size=32, k=3).fit_bank([rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(2)])
    paths = split_from_model(model, model.meta, model.calibration, tmp_path / "s")
    head = cpu_session(paths["head"])
    assert head.get_inputs()[0].shape == [1, 16, 3]
    with pytest.raises(ConfigError, match="opset"):
        onnx_from_model(model, model.meta, model.calibration, tmp_path / "old.onnx", opset=13)


def test_census_counts_the_graph(fp32_graph):
    c = census(fp32_graph)
    g = onnx.load(str(fp32_graph))
    assert sum(c.ops.values()) == len(g.graph.node)
    assert c.ops["TopK"] == 1 and c.ops["Conv"] >= 20
    assert c.params == sum(int(np.prod(t.dims)) for t in g.graph.initializer)
    text = c.format()
    assert "TopK 1" in text and "image uint8 [1, 64, 64, 3]" in text
