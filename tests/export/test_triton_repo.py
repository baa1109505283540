"""export --triton-repo (issue 18): the repository layout, config.pbtxt parsed into Triton's ModelConfig protobuf,
the protospect metadata as parameters, the python-backend model.py run against a stand-in pb_utils, the
tensorrt_plan variant from a build-engine sidecar (no TensorRT here: a stand-in engine file), the DeepStream
nvinfer config, refusals. A real Triton server answers in tests/runtime/test_rt_triton.py."""
from __future__ import annotations

import importlib.util
import json
import sys
import types

import numpy as np
import onnx
import pytest

from protospect.cli import main
from protospect.contract import check_contract

pytestmark = pytest.mark.torch


def _model_config(path):
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as err:
        pytest.skip(f"tritonclient[grpc] not importable ({err}); pip install -e .[triton]")
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def repo(patchcore, tmp_path_factory):
    root = tmp_path_factory.mktemp("triton")
    assert main(["export", str(patchcore[1]), "--triton-repo", str(root / "gpu"), "--name", "flange", "--version", "3",
                 "--triton-max-batch", "4", "--triton-instances", "2"]) == 0
    assert main(["export", str(patchcore[1]), "--triton-repo", str(root / "cpu"), "--triton-backend", "python",
                 "--triton-python-env", "/opt/stub-env"]) == 0
    return root


def test_onnxruntime_repo_layout_and_config_parse_into_modelconfig(repo):
    assert sorted(p.relative_to(repo / "gpu").as_posix() for p in (repo / "gpu").rglob("*") if p.is_file()) == \
        ["flange/3/model.onnx", "flange/config.pbtxt"]
    cfg = _model_config(repo / "gpu" / "flange" / "config.pbtxt")
    from tritonclient.grpc import model_config_pb2 as mc

    assert (cfg.name, cfg.platform, cfg.max_batch_size) == ("flange", "onnxruntime_onnx", 4)
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("image", mc.TYPE_UINT8, [64, 64, 3])]
    outs = {o.name: o for o in cfg.output}
    assert list(outs["anomaly_map"].dims) == [1, 64, 64] and outs["anomaly_map"].data_type == mc.TYPE_FP32
    assert list(outs["image_score"].dims) == [1] and list(outs["image_score"].reshape.shape) == []
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds > 0
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, mc.ModelInstanceGroup.KIND_GPU)]
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    graph_props = {p.key: p.value for p in onnx.load(str(repo / "gpu" / "flange" / "3" / "model.onnx")).metadata_props}
    assert params == {k: v for k, v in graph_props.items() if k.startswith("protospect.")}
    assert params["protospect.batch"] == "dynamic" and float(params["protospect.threshold"]) > 0
    check_contract(params, "config.pbtxt parameters")  # a client can check the hash from the config alone


def test_python_backend_variant_config_and_model_py(repo, patchcore):
    name = patchcore[1].resolve().name
    model_dir = repo / "cpu" / name
    cfg = _model_config(model_dir / "config.pbtxt")
    from tritonclient.grpc import model_config_pb2 as mc

    assert cfg.backend == "python" and not cfg.platform and cfg.max_batch_size == 8
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert cfg.parameters["EXECUTION_ENV_PATH"].string_value == "/opt/stub-env"  # where the stub finds onnxruntime
    assert (model_dir / "1" / "model.py").is_file() and (model_dir / "1" / "model.onnx").is_file()
    model = _load_model_py(model_dir / "1" / "model.py")
    model.initialize({"model_repository": str(model_dir), "model_version": "1"})
    rng = np.random.default_rng(0)
    reqs = [{"image": rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)} for n in (1, 3)]
    responses = model.execute(reqs)
    from protospect.export.ort_session import cpu_session

    session = cpu_session(model_dir / "1" / "model.onnx")
    for req, resp in zip(reqs, responses):
        amap, score = session.run(["anomaly_map", "image_score"], {"image": req["image"]})
        got = {t.name: t.value for t in resp.output_tensors}
        assert got["anomaly_map"].shape == (len(req["image"]), 1, 64, 64)
        np.testing.assert_allclose(got["anomaly_map"], amap, atol=1e-4 * float(np.ptp(amap)))
        np.testing.assert_allclose(got["image_score"], score, rtol=1e-5)


def _load_model_py(path):
    """model.py with a stand-in for Triton's triton_python_backend_utils (only the calls it makes)."""
    class Tensor:
        def __init__(self, name, value):
            self.name, self.value = name, value

    class InferenceResponse:
        def __init__(self, output_tensors):
            self.output_tensors = output_tensors

    class Input:
        def __init__(self, value):
            self.value = value

        def as_numpy(self):
            return self.value

    utils = types.SimpleNamespace(Tensor=Tensor, InferenceResponse=InferenceResponse,
                                  get_input_tensor_by_name=lambda req, name: Input(req[name]))
    sys.modules["triton_python_backend_utils"] = utils
    try:
        spec = importlib.util.spec_from_file_location("protospect_triton_model", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        del sys.modules["triton_python_backend_utils"]
    return module.TritonPythonModel()


@pytest.mark.parametrize("extra, message", [
    (["--batch", "4"], "needs --batch dynamic"),
    (["--int8"], "drop --int8"),
    (["--name", "a b"], "not a Triton model name"),
    (["--version", "0"], "not a Triton model version"),
    (["--triton-max-batch", "0"], "must be >= 1"),
    (["--triton-python-env", "/opt/env"], "--triton-python-env is for --triton-backend python"),
])
def test_triton_repo_refusals_are_one_line(patchcore, tmp_path, capsys, extra, message):
    rc = main(["export", str(patchcore[1]), "--triton-repo", str(tmp_path / "repo"), *extra])
    err = capsys.readouterr().err
    assert rc != 0 and message in err and "Traceback" not in err and not (tmp_path / "repo").exists()


@pytest.mark.parametrize("extra", [[], ["--out", "m.onnx", "--triton-repo", "repo"]])
def test_export_needs_exactly_one_of_out_and_triton_repo_usage_error(patchcore, capsys, extra):
    with pytest.raises(SystemExit) as exc:
        main(["export", str(patchcore[1]), *extra])
    assert exc.value.code == 2 and "--out" in capsys.readouterr().err


@pytest.fixture(scope="module")
def batch1(patchcore, tmp_path_factory):
    """export --out m.onnx --deepstream DS, and a stand-in engine beside it (bytes + the sidecar build-engine writes)."""
    root = tmp_path_factory.mktemp("plan")
    assert main(["export", str(patchcore[1]), "--out", str(root / "m.onnx"), "--deepstream", str(root / "ds")]) == 0
    props = {p.key: p.value for p in onnx.load(str(root / "m.onnx")).metadata_props}
    (root / "m.engine").write_bytes(b"not a real engine: TensorRT cannot be installed here")
    (root / "m.engine.json").write_text(json.dumps({"onnx_metadata": props, "tensorrt_version": "10.3",
                                                   "compute_capability": [8, 7], "engine_sha256": "0" * 64}))
    return root, props


def test_tensorrt_plan_repo_from_a_build_engine_sidecar(batch1, patchcore, tmp_path):
    root, props = batch1
    assert main(["export", str(patchcore[1]), "--triton-repo", str(tmp_path), "--name", "flange",
                 "--triton-backend", "tensorrt_plan", "--triton-engine", str(root / "m.engine")]) == 0
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == \
        ["flange/1/model.plan", "flange/config.pbtxt"]
    assert (tmp_path / "flange" / "1" / "model.plan").read_bytes() == (root / "m.engine").read_bytes()
    cfg = _model_config(tmp_path / "flange" / "config.pbtxt")
    from tritonclient.grpc import model_config_pb2 as mc

    assert (cfg.platform, cfg.max_batch_size, cfg.HasField("dynamic_batching")) == ("tensorrt_plan", 0, False)
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("image", mc.TYPE_UINT8, [1, 64, 64, 3])]
    assert {o.name: list(o.dims) for o in cfg.output} == {"anomaly_map": [1, 1, 64, 64], "image_score": [1]}
    assert {k: v.string_value for k, v in cfg.parameters.items()} == {k: v for k, v in props.items()
                                                                    if k.startswith("protospect.")}


def test_tensorrt_plan_refusals_are_one_line(batch1, patchcore, tmp_path, capsys):
    root, props = batch1
    other = tmp_path / "other.engine"
    other.write_bytes(b"x")
    other.with_name("other.engine.json").write_text(json.dumps({"onnx_metadata": {**props, "protospect.artifact_sha256": "f" * 64}}))
    for extra, message in ((["--triton-engine", str(other)], "built from another artifact"),
                           ([], "tensorrt_plan and --triton-engine FILE (from build-engine) go together")):
        rc = main(["export", str(patchcore[1]), "--triton-repo", str(tmp_path / "repo"), "--triton-backend",
                   "tensorrt_plan", *extra])
        err = capsys.readouterr().err
        assert rc == 1 and message in err and "Traceback" not in err and not (tmp_path / "repo").exists()


def test_deepstream_config_matches_the_graph(batch1):
    import configparser

    from protospect.export.deepstream import nvinfer_normalisation

    root, props = batch1
    text = (root / "ds" / "config_infer_primary_protospect.txt").read_text()
    cfg = configparser.ConfigParser()
    cfg.read_string(text)
    p = cfg["property"]
    graph = onnx.load(str(root / "m.onnx"))
    size = graph.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    assert p["onnx-file"] == str((root / "m.onnx").resolve()) and p["model-engine-file"].endswith("m.engine")
    assert (p["batch-size"], p["network-mode"], p["network-type"], p["output-tensor-meta"]) == ("1", "0", "100", "1")
    assert p["infer-dims"] == f"{size};{size};3" and p["output-blob-names"] == "anomaly_map;image_score"
    assert [o.name for o in graph.graph.output] == ["anomaly_map", "image_score"]
    assert f"image_score >= {props['protospect.threshold']}" in text
    norm = nvinfer_normalisation(json.loads(props["protospect.mean"]), json.loads(props["protospect.std"]))
    assert ("not expressible in nvinfer" in text) == (norm is None)
    assert nvinfer_normalisation([0.5, 0.5, 0.5], [0.25, 0.25, 0.25]) == (1 / 63.75, [127.5, 127.5, 127.5])
    assert nvinfer_normalisation([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) is None
