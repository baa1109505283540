"""The engine builder's own logic against a fake `tensorrt` module; real TensorRT tests skip without it.

The fake records what the builder asks for, so these tests pin: the strongly typed flag per
TensorRT version (and the 10.3 minimum), no precision flags or calibrators, timing cache read and
written (an unreadable one refused), workspace limit, parse errors with node info, the graph
contract check, and the sidecar the runtime checks (engine sha256 included).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from protospect.errors import ArtifactError, EngineBuildError
from protospect import metadata
from protospect.gpu import GpuInfo
from protospect.contract import bank_sha256, with_metadata_hash
from protospect.metadata import set_metadata
from protospect.export.trt_builder import engine_from_onnx, network_flags

GPU = GpuInfo("Orin (nvgpu)", "8.7")


class FakeTrt:
    """Enough of the tensorrt API for the builder; records calls in self.calls."""

    def __init__(self, version="10.3.0.30", parse_ok=True, build_ok=True, cache_ok=True):
        self.__version__ = version
        self.calls: list[tuple] = []
        self.parse_ok, self.build_ok, self.cache_ok = parse_ok, build_ok, cache_ok
        fake = self
        self.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=5)  # still defined (deprecated) in 11
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
        self.Logger = type("Logger", (), {"WARNING": 2, "VERBOSE": 4, "__init__": lambda s, sev: fake.calls.append(("logger", sev))})

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("pool", pool, size))

            def create_timing_cache(self, data):
                fake.calls.append(("create_cache", bytes(data)))
                if data and not bytes(data).startswith(b"CACHE:"):
                    return None  # what TensorRT returns for bytes that are no timing cache
                return SimpleNamespace(serialize=lambda: b"CACHE:" + bytes(data))

            def set_timing_cache(self, cache, ignore_mismatch):
                fake.calls.append(("set_cache", ignore_mismatch))
                self._cache = cache
                return fake.cache_ok

            def get_timing_cache(self):
                return self._cache

            def set_flag(self, flag):  # precision flags are deprecated (10.x) / removed (11)
                fake.calls.append(("set_flag", flag))

            def __setattr__(self, name, value):
                if name == "int8_calibrator":
                    fake.calls.append(("int8_calibrator",))
                object.__setattr__(self, name, value)

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("create_network", flags))
                return "network"

            def create_builder_config(self):
                return Config()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build",))
                return b"ENGINE" if fake.build_ok else None

        class Parser:
            num_errors = 1

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                fake.calls.append(("parse", path))
                return fake.parse_ok

            def get_error(self, i):
                return SimpleNamespace(desc=lambda: "Unsupported operator Foo", node_name=lambda: "/model/foo",
                                       node_operator=lambda: "Foo", node=lambda: 7)

        self.Builder, self.OnnxParser = Builder, Parser

    def called(self, name):
        return [c for c in self.calls if c[0] == name]


PROPS = {"protospect.format_version": "1", "protospect.input_layout": "NHWC-uint8-RGB", "protospect.precision": "int8",
         "protospect.threshold": "0.5"}


def _onnx(path, props=PROPS, extra_inputs=()):
    node = helper.make_node("Cast", ["image"], ["anomaly_map"], to=TensorProto.FLOAT)
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 3]) for n in extra_inputs]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 4, 4, 3]), *inputs],
                              [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [1, 4, 4, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    set_metadata(model, props)
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def small_onnx(tmp_path):
    return _onnx(tmp_path / "model.onnx")


@pytest.mark.parametrize("version, flags", [("10.3.0.30", 1 << 5), ("10.16.2", 1 << 5), ("11.1.0", 0), ("11.4.1.2", 0)])
def test_strongly_typed_flag_per_version(version, flags, small_onnx, tmp_path):
    trt = FakeTrt(version)
    assert network_flags(trt) == flags
    engine_from_onnx(small_onnx, tmp_path / "m.engine", trt=trt, gpu=GPU)
    assert trt.called("create_network") == [("create_network", flags)]
    assert not trt.called("set_flag") and not trt.called("int8_calibrator")


@pytest.mark.parametrize("version", ["9.2.0", "10.2.0.19", "8.6.1"])
def test_tensorrt_older_than_10_3_is_refused(version, small_onnx, tmp_path):
    trt = FakeTrt(version)  # 9.x has STRONGLY_TYPED too: the flag alone does not tell
    with pytest.raises(EngineBuildError, match=f"TensorRT {version} is too old; protospect needs TensorRT >= 10.3"):
        engine_from_onnx(small_onnx, tmp_path / "m.engine", trt=trt, gpu=GPU)
    assert not trt.called("create_network") and not (tmp_path / "m.engine").exists()


@pytest.mark.parametrize("key, value, message", [
    ("protospect.format_version", "99", "format_version '99' but this protospect reads '1'"),
    ("protospect.input_layout", "NCHW-float32-BGR", "input_layout 'NCHW-float32-BGR' but this protospect reads 'NHWC-uint8-RGB'"),
    ("protospect.input_layout", None, "input_layout none but this protospect reads"),
])
def test_graph_of_another_contract_is_refused(tmp_path, key, value, message):
    props = {k: v for k, v in PROPS.items() if k != key} | ({key: value} if value else {})
    trt = FakeTrt()
    with pytest.raises(ArtifactError, match=message):
        engine_from_onnx(_onnx(tmp_path / "g.onnx", props), tmp_path / "m.engine", trt=trt, gpu=GPU)
    assert not trt.calls and not (tmp_path / "m.engine").exists()


def test_exported_metadata_and_sidecar_read_back_by_the_runtime(tmp_path):
    """What export writes (graph metadata, engine sidecar, bank hash) is what the runtime's readers parse
    and accept, and a bank other than the exported one is refused."""
    from protospect.runtime.backends.ort import open_session, session_info
    from protospect.runtime.backends.split import check_pieces
    from protospect.runtime.backends.trt import load_sidecar
    from protospect.runtime.model_info import ModelInfo

    bank = np.arange(12, dtype=np.float32).reshape(4, 3)
    props = metadata.build_metadata(
        {"method": "pcsnet", "preset": "edge", "input_size": 4, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.2, 0.2]},
        {"threshold": 0.125, "map_range": [0.0, 0.5]}, artifact_sha256="ab" * 32, precision="int8", graph="features",
        extra={"split_k": "3", "grid": [2, 2], "bank_sha256": bank_sha256(bank)})
    graph = _onnx(tmp_path / "g.onnx", props)
    info = session_info(open_session(graph, device="cpu"), graph)
    assert (info.input_hw, info.threshold, info.map_range) == ((4, 4), 0.125, (0.0, 0.5))
    assert (info.method, info.preset, info.precision, info.graph) == ("pcsnet", "edge", "int8", "features")
    assert (info.artifact_sha256, info.split_k, info.grid) == ("ab" * 32, 3, (2, 2))
    check_pieces(info, info, bank, tmp_path)  # the exported bank hash is the one the runtime computes
    with pytest.raises(ArtifactError, match="bank.npy is not the bank"):
        check_pieces(info, info, bank[::-1].copy(), tmp_path)
    engine = tmp_path / "g.engine"
    engine_from_onnx(graph, engine, trt=FakeTrt(), gpu=GPU)
    from_sidecar = ModelInfo.from_metadata(load_sidecar(engine)["onnx_metadata"], "sidecar")
    assert from_sidecar == info and from_sidecar.props == info.props


def test_timing_cache_read_then_written(small_onnx, tmp_path):
    cache = tmp_path / "timing.cache"
    trt = FakeTrt()
    engine_from_onnx(small_onnx, tmp_path / "m.engine", trt=trt, gpu=GPU, timing_cache=cache)
    assert trt.called("create_cache") == [("create_cache", b"")] and cache.read_bytes() == b"CACHE:"
    trt = FakeTrt()
    engine_from_onnx(small_onnx, tmp_path / "m.engine", trt=trt, gpu=GPU, timing_cache=cache)
    assert trt.called("create_cache") == [("create_cache", b"CACHE:")]
    assert trt.called("set_cache") == [("set_cache", False)]  # a mismatching cache is never silently used
    assert cache.read_bytes() == b"CACHE:CACHE:"


def test_mismatching_cache_and_failures_raise(small_onnx, tmp_path):
    (tmp_path / "t.cache").write_bytes(b"CACHE:other gpu")
    with pytest.raises(EngineBuildError, match="timing cache .* was made on another GPU"):
        engine_from_onnx(small_onnx, tmp_path / "m.engine", trt=FakeTrt(cache_ok=False), gpu=GPU, timing_cache=tmp_path / "t.cache")
    with pytest.raises(EngineBuildError, match=r"node /model/foo, op Foo, index 7\] Unsupported operator Foo"):
        engine_from_onnx(small_onnx, tmp_path / "m.engine", trt=FakeTrt(parse_ok=False), gpu=GPU)
    with pytest.raises(EngineBuildError, match="failed to build"):
        engine_from_onnx(small_onnx, tmp_path / "m.engine", trt=FakeTrt(build_ok=False), gpu=GPU)
    assert not (tmp_path / "m.engine").exists()


def test_unreadable_timing_cache_is_an_engine_build_error_and_kept(small_onnx, tmp_path):
    cache = tmp_path / "t.cache"
    cache.write_bytes(b"\x00corrupt")
    trt = FakeTrt()
    with pytest.raises(EngineBuildError, match="timing cache .* cannot be read by TensorRT 10.3.0.30"):
        engine_from_onnx(small_onnx, tmp_path / "m.engine", trt=trt, gpu=GPU, timing_cache=cache)
    assert not trt.called("set_cache") and not trt.called("build")
    assert cache.read_bytes() == b"\x00corrupt" and not (tmp_path / "m.engine").exists()


def test_workspace_limit_in_bytes(small_onnx, tmp_path):
    trt = FakeTrt()
    engine_from_onnx(small_onnx, tmp_path / "m.engine", trt=trt, gpu=GPU, workspace_mb=512)
    assert trt.called("pool") == [("pool", "WORKSPACE", 512 << 20)]
    trt = FakeTrt()
    engine_from_onnx(small_onnx, tmp_path / "m.engine", trt=trt, gpu=GPU)
    assert not trt.called("pool")


def test_sidecar_is_what_the_runtime_checks(small_onnx, tmp_path):
    built = engine_from_onnx(small_onnx, tmp_path / "m.engine", trt=FakeTrt("10.3.0.30"), gpu=GPU)
    assert built.engine.read_bytes() == b"ENGINE"
    assert built.sidecar.name == "m.engine.json"
    side = json.loads(built.sidecar.read_text())
    assert side["tensorrt_version"] == "10.3.0.30" and side["gpu_name"] == GPU.name and side["compute_capability"] == "8.7"
    assert side["onnx_sha256"] == hashlib.sha256(small_onnx.read_bytes()).hexdigest()
    assert side["engine_sha256"] == hashlib.sha256(b"ENGINE").hexdigest()
    assert side["onnx_metadata"] == with_metadata_hash(PROPS)  # every protospect.* key, the metadata hash included
    # The runtime's own check (contract section 7) accepts it here and refuses another TensorRT or GPU.
    trt_backend = pytest.importorskip("protospect.runtime.backends.trt")
    loaded = trt_backend.load_sidecar(built.engine)
    trt_backend.check_sidecar(loaded, "10.3.0.30", "8.7", "m.engine")
    trt_backend.check_engine_bytes(loaded, built.engine.read_bytes(), "m.engine")
    with pytest.raises(ArtifactError, match="not the engine its sidecar describes"):
        trt_backend.check_engine_bytes(loaded, b"ENGINE from trtexec", "m.engine")
    with pytest.raises(ArtifactError, match="TensorRT"):
        trt_backend.check_sidecar(loaded, "10.16.2", "8.7", "m.engine")
    with pytest.raises(ArtifactError, match="compute capability"):
        trt_backend.check_sidecar(loaded, "10.3.0.30", "8.9", "m.engine")


def test_refuses_onnx_without_protospect_metadata(tmp_path):
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ArtifactError, match="protospect export"):
        engine_from_onnx(path, tmp_path / "m.engine", trt=FakeTrt(), gpu=GPU)


@pytest.mark.parametrize("inputs, says, never", [((), "next:    protospect serve", "use:"),
                                                  (("bank",), "takes the prototype bank as input 'bank'", "protospect serve m")])
def test_cli_next_step_only_offers_serve_for_servable_graphs(tmp_path, monkeypatch, capsys, inputs, says, never):
    import sys

    import protospect.gpu as gpu_info
    from protospect.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", FakeTrt())
    monkeypatch.setattr(gpu_info, "current_gpu", lambda: GPU)
    graph = _onnx(tmp_path / "m.onnx", extra_inputs=inputs)
    assert main(["build-engine", str(graph), "--no-timing-cache"]) == 0
    out = capsys.readouterr().out
    assert says in out and never not in out


def test_cli_without_tensorrt_names_the_extra(small_onnx, capsys):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; this checks the message when it is not")
    except ImportError:
        pass
    from protospect.cli import main

    assert main(["build-engine", str(small_onnx), "--no-timing-cache"]) == 1
    assert "protospect[trt]" in capsys.readouterr().err


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                    reason="TensorRT is not installed (it cannot be installed on the dev machines)")
def test_real_tensorrt_builds_the_fp32_graph(fp32_graph, tmp_path):
    built = engine_from_onnx(fp32_graph, tmp_path / "m.engine", timing_cache=tmp_path / "t.cache")
    assert built.engine.stat().st_size > 0 and (tmp_path / "t.cache").stat().st_size > 0
    import tensorrt as trt

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(built.engine.read_bytes())
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    assert names[0] == "image" and set(names[1:]) == {"anomaly_map", "image_score"}
