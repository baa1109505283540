"""Backends on real ONNX graphs built with onnx.helper, the automatic choice, and the GPU-side logic
(sidecar check, I/O plan, buffer sizes, CUDA error unpacking) that is testable without a GPU."""
from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fixture_models import build_diff_model, build_split_model, numpy_refdiff, reference_rgb, render_part
from protospect.contract import with_metadata_hash
from protospect.errors import ArtifactError, ConfigError, CudaError, MissingDependencyError
from protospect.imageio import resize_image, to_rgb_uint8
from protospect.runtime import cuda
from protospect.runtime.backends import select_backend
from protospect.runtime.backends.ort import OrtBackend
from protospect.runtime.backends.split import SplitOrtBackend
from protospect.runtime.backends.trt import (TensorSpec, TrtBackend, check_engine_bytes, check_sidecar, load_sidecar,
                                             normalise_cc, plan_io)
from protospect.runtime.model_info import ModelInfo


def test_ort_backend_matches_numpy_and_reads_metadata(fx):
    rng = np.random.default_rng(3)
    img = resize_image(to_rgb_uint8(render_part(rng, (160, 120), defect=True)), 64)
    with OrtBackend(fx.model) as b:
        assert b.info.input_hw == (64, 64) and b.info.threshold == pytest.approx(fx.threshold)
        assert b.info.map_range == (0.0, 0.3) and b.info.method == "refdiff"
        amap, score = b.infer(img)
        assert b.providers[-1] == "CPUExecutionProvider"
        with pytest.raises(ConfigError, match="expects uint8 64x64x3"):
            b.infer(img[:32])
    want = numpy_refdiff(img, fx.ref)
    assert amap.shape == (64, 64) and amap.dtype == np.float32
    assert np.abs(amap - want).max() < 1e-5
    assert score == pytest.approx(float(want.max()), abs=1e-6)


def test_model_without_protospect_metadata_is_refused(tmp_path):
    path = build_diff_model(tmp_path / "m.onnx", reference_rgb(32), threshold=0.1)
    model = onnx.load(str(path))
    del model.metadata_props[:]  # a graph from some other exporter: the right I/O, no protospect.* keys
    onnx.save(model, str(path))
    with pytest.raises(ArtifactError, match=r"m\.onnx carries no protospect\.\* metadata"):
        with OrtBackend(path):
            pass
    malformed = build_diff_model(tmp_path / "bad.onnx", reference_rgb(32), threshold=0.1,
                                 props_override={"protospect.threshold": "not-a-number"})
    with pytest.raises(ArtifactError, match="malformed protospect metadata"):
        with OrtBackend(malformed):
            pass
    with pytest.raises(ArtifactError, match="lacks metadata protospect.threshold"):
        ModelInfo.from_props({"protospect.input_size": "[8, 8]", "protospect.map_range": "[0, 1]"}, "x.onnx")
    for bad in ("[8]", "[8, 16, 3]", "[0, 8]", "[8, -1]", "[8.5, 8]", "\"8\"", "[true, 8]"):
        with pytest.raises(ArtifactError, match=r"malformed protospect metadata: input_size .* is not \[H, W\]"):
            ModelInfo.from_props({"protospect.input_size": bad, "protospect.map_range": "[0, 1]",
                                  "protospect.threshold": "1"}, "x.onnx")


@pytest.mark.parametrize("key, value, message", [
    ("protospect.format_version", "99", "format_version '99' but this protospect reads '1'"),
    ("protospect.input_layout", "NCHW-float32-BGR", "input_layout 'NCHW-float32-BGR' but this protospect reads 'NHWC-uint8-RGB'"),
])
def test_graph_of_another_format_version_or_layout_is_refused(tmp_path, key, value, message):
    path = build_diff_model(tmp_path / "m.onnx", reference_rgb(32), threshold=0.1, props_override={key: value})
    with pytest.raises(ArtifactError, match=message):
        with OrtBackend(path):
            pass
    props = {"protospect.input_size": "[8, 8]", "protospect.map_range": "[0, 1]", "protospect.threshold": "1"}
    with pytest.raises(ArtifactError, match="lacks protospect.format_version"):
        ModelInfo.from_metadata(props, "x.onnx")


@pytest.mark.parametrize("threshold", ["nan", "inf", "-inf"])
def test_non_finite_threshold_is_refused(tmp_path, threshold):
    # score >= nan is False: such a model would pass every part as OK
    path = build_diff_model(tmp_path / "m.onnx", reference_rgb(32), threshold=0.1,
                            props_override={"protospect.threshold": threshold})
    with pytest.raises(ArtifactError, match=f"threshold {threshold} is not a finite number"):
        with OrtBackend(path):
            pass


def test_map_shape_disagreeing_with_metadata_is_refused_at_load(tmp_path):
    path = build_diff_model(tmp_path / "m.onnx", reference_rgb(64), threshold=0.1, map_pool=8)
    with pytest.raises(ArtifactError, match=r"output 'anomaly_map' has shape \[1, 1, 8, 8\] .* says \[1, 1, 64, 64\]"):
        with OrtBackend(path):
            pass


def test_bank_input_graph_is_refused_with_what_it_is_for(fx, tmp_path):
    model = onnx.load(str(fx.model))
    model.graph.input.append(helper.make_tensor_value_info("bank", TensorProto.FLOAT, [4, 3]))
    path = tmp_path / "bank.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ArtifactError, match="input 'bank' .*--bank-as-input"):
        with OrtBackend(path):
            pass


def test_select_backend_by_model_type_and_flag(fx, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        b = select_backend(fx.model)
    assert isinstance(b, OrtBackend) and "backend: ort" in caplog.text and "chosen from the model type" in caplog.text
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not really an engine")
    assert isinstance(select_backend(engine), TrtBackend)
    with pytest.raises(ConfigError, match="build an engine first"):
        select_backend(fx.model, "trt")
    with pytest.raises(ConfigError, match="--backend ort cannot run"):
        select_backend(engine, "ort")
    with pytest.raises(ArtifactError, match="model not found"):
        select_backend(tmp_path / "nothing.onnx")
    split = build_split_model(tmp_path / "split", reference_rgb(32), k=2, cell=8, threshold=0.1)
    with caplog.at_level(logging.INFO):
        assert isinstance(select_backend(split), SplitOrtBackend)
    assert "split-ort" in caplog.text and "GPU path unavailable" in caplog.text


def test_split_cpu_path_equals_direct_computation(tmp_path):
    ref = reference_rgb(64)
    rng = np.random.default_rng(0)
    bank = rng.uniform(0, 1, (40, 3)).astype(np.float32)
    folder = build_split_model(tmp_path / "split", ref, k=3, cell=8, threshold=0.1, bank=bank)
    img = resize_image(to_rgb_uint8(render_part(rng, (160, 120), defect=True)), 64)
    with SplitOrtBackend(folder) as b:
        amap, score = b.infer(img)
        assert b.k == 3 and set(b.last_stage_ms) == {"features", "topk", "head"}
    cells = (img.astype(np.float32) / 255).reshape(8, 8, 8, 8, 3).mean(axis=(1, 3)).reshape(64, 3)
    d2 = ((cells[:, None, :] - bank[None]) ** 2).sum(-1)
    grid = np.sqrt(np.sort(d2, axis=1)[:, :3].mean(axis=1)).reshape(8, 8)
    want = np.kron(grid, np.ones((8, 8)))
    assert np.abs(amap - want).max() < 1e-4
    assert score == pytest.approx(float(grid.max()), rel=1e-4)


def _set_props(path, **props):
    """Rewrite protospect.<key> metadata of an ONNX file in place (None removes the key)."""
    model = onnx.load(str(path))
    kept = {p.key: p.value for p in model.metadata_props}
    for key, value in props.items():
        kept.pop(f"protospect.{key}", None)
        if value is not None:
            kept[f"protospect.{key}"] = value
    del model.metadata_props[:]
    for key, value in with_metadata_hash(kept).items():  # as export would have written them
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def test_split_pieces_from_different_exports_are_refused(tmp_path, caplog):
    folder = build_split_model(tmp_path / "s", reference_rgb(32), k=2, cell=8, threshold=0.1)
    other_bank = np.load(folder / "bank.npy") + 0.5
    np.save(folder / "bank.npy", other_bank)
    with pytest.raises(ArtifactError, match="bank.npy is not the bank the features graph was exported with"):
        with SplitOrtBackend(folder):
            pass
    # an export written before bank hashes still loads (warned), nothing recorded is refused for lacking it
    _set_props(folder / "features.onnx", bank_sha256=None)
    _set_props(folder / "head.onnx", bank_sha256=None)
    with caplog.at_level(logging.WARNING), SplitOrtBackend(folder):
        pass
    assert "bank.npy not checked" in caplog.text
    _set_props(folder / "head.onnx", artifact_sha256="1" * 64)
    with pytest.raises(ArtifactError, match="features and head graphs come from different artifacts"):
        with SplitOrtBackend(folder):
            pass


def test_split_folder_missing_parts(tmp_path):
    folder = build_split_model(tmp_path / "s", reference_rgb(32), k=2, cell=8, threshold=0.1)
    (folder / "head.onnx").unlink()
    with pytest.raises(ArtifactError, match="lacks head.onnx"):
        with SplitOrtBackend(folder):
            pass


# ---- TensorRT side, without TensorRT -----------------------------------------------------------

def _sidecar(tmp_path, **over):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"x")
    data = {"tensorrt_version": "10.3.0.30", "gpu_name": "Orin", "compute_capability": "8.7", "onnx_sha256": "0" * 64,
            "engine_sha256": hashlib.sha256(b"x").hexdigest(),
            "onnx_metadata": with_metadata_hash({"protospect.format_version": "1", "protospect.input_layout": "NHWC-uint8-RGB",
                                                 "protospect.input_size": "[64, 64]", "protospect.threshold": "0.5",
                                                 "protospect.map_range": "[0, 1]"})}
    data.update(over)
    (tmp_path / "model.engine.json").write_text(json.dumps(data))
    return engine


def test_sidecar_accepts_same_build_and_refuses_mismatch(tmp_path):
    engine = _sidecar(tmp_path)
    sc = load_sidecar(engine)
    check_sidecar(sc, "10.3.0.26", (8, 7), "model.engine")  # same major.minor.patch, other build number
    with pytest.raises(ArtifactError, match="built with TensorRT 10.3.0.30 but this is TensorRT 11.1.0"):
        check_sidecar(sc, "11.1.0", "8.7", "model.engine")
    with pytest.raises(ArtifactError, match=r"compute capability 8.7 \(Orin\) but this GPU is 9.0"):
        check_sidecar(sc, "10.3.0", "sm_90", "model.engine")
    assert normalise_cc([8, 7]) == normalise_cc("87") == normalise_cc(8.7) == "8.7"
    (tmp_path / "model.engine.json").unlink()
    with pytest.raises(ArtifactError, match="sidecar .* not found"):
        load_sidecar(engine)


def test_sidecar_ties_the_engine_file(tmp_path):
    engine = _sidecar(tmp_path)
    sc = load_sidecar(engine)
    check_engine_bytes(sc, engine.read_bytes(), "model.engine")
    with pytest.raises(ArtifactError, match="not the engine its sidecar describes"):
        check_engine_bytes(sc, b"rebuilt by trtexec", "model.engine")
    del sc["engine_sha256"]  # a sidecar from before engine hashes: rebuild, never trust the file unchecked
    (tmp_path / "model.engine.json").write_text(json.dumps(sc))
    with pytest.raises(ArtifactError, match="lacks engine_sha256; rebuild"):
        load_sidecar(engine)


def test_trt_backend_without_tensorrt_names_the_extra(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; the missing-dependency path cannot be exercised")
    except ImportError:
        pass
    with pytest.raises(MissingDependencyError, match=r"protospect\[trt\]"):
        with TrtBackend(_sidecar(tmp_path)):
            pass


def test_io_plan_resolves_names_shapes_and_bytes():
    specs = [TensorSpec("image", True, (-1, 64, 64, 3), np.dtype(np.uint8)),
             TensorSpec("anomaly_map", False, (1, 1, 64, 64), np.dtype(np.float32)),
             TensorSpec("image_score", False, (1,), np.dtype(np.float32))]
    plan = plan_io(specs, {"image": (1, 64, 64, 3)}, ("anomaly_map", "image_score"), "m.engine")
    assert plan["image"].shape == (1, 64, 64, 3) and plan["image"].nbytes == 64 * 64 * 3
    assert plan["anomaly_map"].nbytes == 64 * 64 * 4 and plan["image_score"].nbytes == 4
    with pytest.raises(ArtifactError, match="shape"):
        plan_io(specs, {"image": (1, 32, 32, 3)}, ("anomaly_map", "image_score"), "m.engine")
    with pytest.raises(ArtifactError, match="no output tensor 'image_score'"):
        plan_io(specs[:2], {"image": (1, 64, 64, 3)}, ("anomaly_map", "image_score"), "m.engine")
    with pytest.raises(ArtifactError, match="no input tensor 'image'"):
        plan_io(specs[1:], {"image": (1, 64, 64, 3)}, ("anomaly_map", "image_score"), "m.engine")
    guide = TensorSpec("guide", False, (1, 4, 8, 8), np.dtype(np.float32))
    feats = [specs[0], TensorSpec("queries", False, (1, 64, 40), np.dtype(np.float16)), guide]
    fplan = plan_io(feats, {"image": (1, 64, 64, 3)}, ("queries",), "features.engine", optional_outputs=("guide",))
    assert fplan["queries"].nbytes == 64 * 40 * 2 and "guide" in fplan
    with pytest.raises(ArtifactError, match="does not know: guide"):
        plan_io(feats, {"image": (1, 64, 64, 3)}, ("queries",), "features.engine")
    bank = TensorSpec("bank", True, (4, 3), np.dtype(np.float32))
    with pytest.raises(ArtifactError, match="input 'bank' .*--bank-as-input"):
        plan_io([bank, *specs], {"image": (1, 64, 64, 3)}, ("anomaly_map", "image_score"), "m.engine")


def test_cuda_check_unpacks_and_raises():
    class Err:
        def __init__(self, value, name):
            self.value, self.name = value, name

    assert cuda.check((Err(0, "cudaSuccess"), 1234), "cudaMalloc") == 1234
    assert cuda.check((Err(0, "cudaSuccess"),), "cudaFree") is None
    assert cuda.check((Err(0, "cudaSuccess"), 1, 2), "x") == (1, 2)
    with pytest.raises(CudaError, match=r"cudaMalloc\(64\) failed: CUDA error 2 \(cudaErrorMemoryAllocation\)"):
        cuda.check((Err(2, "cudaErrorMemoryAllocation"), 0), "cudaMalloc(64)")
    assert cuda.nbytes((1, 256, 256, 3), np.uint8) == 196608
    assert cuda.nbytes((1, 1, 256, 256), np.float16) == 131072
    with pytest.raises(ValueError, match="dynamic"):
        cuda.nbytes((-1, 3), np.float32)


@pytest.mark.gpu
@pytest.mark.trt
def test_trt_engine_roundtrip_on_gpu(fx, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT not installed (Jetson/GPU machine only)")
    pytest.importorskip("cuda.bindings", reason="cuda-python not installed")
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, trt.Logger(trt.Logger.WARNING))
    assert parser.parse(fx.model.read_bytes())
    engine_bytes = builder.build_serialized_network(network, builder.create_builder_config())
    engine = tmp_path / "model.engine"
    engine.write_bytes(bytes(engine_bytes))
    import onnxruntime as ort

    meta = ort.InferenceSession(str(fx.model)).get_modelmeta().custom_metadata_map
    name, cc = cuda.device_identity()
    (tmp_path / "model.engine.json").write_text(json.dumps(
        {"tensorrt_version": trt.__version__, "gpu_name": name, "compute_capability": cc, "onnx_sha256": "",
         "engine_sha256": hashlib.sha256(engine.read_bytes()).hexdigest(), "onnx_metadata": dict(meta)}))
    img = resize_image(to_rgb_uint8(render_part(np.random.default_rng(1), (160, 120), defect=True)), 64)
    with OrtBackend(fx.model) as o, TrtBackend(engine) as t:
        m_o, s_o = o.infer(img)
        m_t, s_t = t.infer(img)
        assert t.last_device_ms is not None and t.last_device_ms > 0
    assert np.abs(m_o - m_t).max() < 1e-4 and abs(s_o - s_t) < 1e-4


# ---- metadata integrity (issue 20): an edited threshold must not change verdicts silently ---------

@pytest.mark.parametrize("key, value", [("threshold", "-1.0"), ("threshold", "1000.0"), ("map_range", "[0.0, 9.0]"),
                                        ("precision", "int8")])
def test_metadata_edited_after_export_is_refused_naming_the_key(tmp_path, key, value):
    path = build_diff_model(tmp_path / "m.onnx", reference_rgb(32), threshold=0.1)
    model = onnx.load(str(path))
    for p in model.metadata_props:
        if p.key == f"protospect.{key}":
            p.value = value  # edited in place, the hash left as exported
    onnx.save(model, str(path))
    with pytest.raises(ArtifactError, match=rf"protospect\.{key} \(edited\) after export .*re-export"):
        with OrtBackend(path):
            pass


def test_metadata_key_added_or_removed_or_hash_missing_is_refused(tmp_path):
    path = build_diff_model(tmp_path / "m.onnx", reference_rgb(32), threshold=0.1)
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    for change, message in [
        (lambda d: d.pop("protospect.method"), r"protospect\.method \(removed\)"),
        (lambda d: d.update({"protospect.extra": "1"}), r"protospect\.extra \(added\)"),
        (lambda d: d.pop("protospect.metadata_sha256"), "lacks protospect.metadata_sha256 .*re-export"),
    ]:
        edited = dict(props)
        change(edited)
        with pytest.raises(ArtifactError, match=message):
            ModelInfo.from_metadata(edited, "m.onnx")
    ModelInfo.from_metadata(props, "m.onnx")  # as exported: accepted
