"""The TensorRT backends' data path on a CPU machine, with API-faithful fakes of tensorrt and
cuda-python (tests/runtime/fake_gpu.py): the plumbing is exercised, TensorRT itself is not."""
from __future__ import annotations

import ctypes
import hashlib
import importlib.machinery
import json
import sys
import types

import numpy as np
import pytest

import fake_gpu
from fixture_models import build_diff_model, build_split_model, reference_rgb, render_part
from protospect.errors import ArtifactError
from protospect.imageio import resize_image, to_rgb_uint8
from protospect.runtime.backends import select_backend
from protospect.runtime.backends.ort import OrtBackend
from protospect.runtime.backends.split import SplitOrtBackend, SplitTrtBackend
from protospect.runtime.backends.trt import TrtBackend


@pytest.fixture()
def fake_stack(monkeypatch):
    rt = fake_gpu.make_cudart()
    trt = fake_gpu.make_tensorrt()
    bindings = types.ModuleType("cuda.bindings")
    bindings.__spec__ = importlib.machinery.ModuleSpec("cuda.bindings", None)  # find_spec() needs one
    bindings.runtime = rt
    cuda_pkg = types.ModuleType("cuda")
    cuda_pkg.bindings = bindings
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cuda", cuda_pkg)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    return rt, trt


@pytest.fixture()
def fake_kernel_toolchain(fake_stack, monkeypatch):
    """What the split-TensorRT path's top-k kernel needs besides TensorRT: cuda-python's NVRTC and driver
    bindings (faked, NVRTC answering) and the CUDA headers NVRTC compiles against (a folder named here)."""
    import protospect.cpp_ext.kernel_build as kernel_build

    nvrtc, driver = fake_gpu.make_nvrtc_and_driver()
    bindings = sys.modules["cuda.bindings"]
    bindings.nvrtc, bindings.driver = nvrtc, driver
    monkeypatch.setitem(sys.modules, "cuda.bindings.nvrtc", nvrtc)
    monkeypatch.setitem(sys.modules, "cuda.bindings.driver", driver)
    monkeypatch.setattr(kernel_build, "cuda_include_dirs", lambda: ["/fake/cuda/include"])
    return nvrtc


def _tie(engine):
    """Record the engine file's sha256 in its sidecar, as build-engine does."""
    sidecar = engine.with_name(engine.name + ".json")
    data = json.loads(sidecar.read_text())
    data["engine_sha256"] = hashlib.sha256(engine.read_bytes()).hexdigest()
    sidecar.write_text(json.dumps(data))
    return engine


def _engine(path, onnx_path, **kw):
    return _tie(fake_gpu.write_fake_engine(path, onnx_path, **kw))


def _frame(seed=1, defect=True):
    return resize_image(to_rgb_uint8(render_part(np.random.default_rng(seed), (160, 120), defect=defect)), 64)


def test_trt_backend_data_path_matches_ort_and_frees_everything(fx, tmp_path, fake_stack):
    rt, _ = fake_stack
    engine = _engine(tmp_path / "model.engine", fx.model)
    img = _frame()
    with OrtBackend(fx.model) as ort_b:
        want_map, want_score = ort_b.infer(img)
    backend = select_backend(engine)
    assert isinstance(backend, TrtBackend)
    with backend:
        assert backend.info.threshold == pytest.approx(fx.threshold)
        for _ in range(2):  # buffers are reused frame to frame
            amap, score = backend.infer(img)
            assert np.array_equal(amap, want_map) and score == want_score
        # the events bracket the engine's run only, not the frame's upload and the two downloads
        assert backend.last_device_ms == fake_gpu.ENGINE_MS
        amap2, _ = backend.infer(_frame(2, defect=False))
        assert not np.array_equal(amap2, amap)  # a new frame really went through the "device"
        assert np.array_equal(amap, want_map)   # and the returned arrays are copies, not pinned views
        assert len(rt.allocs) == 3 + 3  # device: image, anomaly_map, image_score; pinned: the same three
    assert rt.allocs == {}  # every allocation freed on exit
    kinds = [k for op, k in rt.calls if op == "memcpy"]
    assert kinds[:3] == [1, 2, 2]  # upload the frame, download map and score


def test_trt_backend_refuses_engine_from_other_gpu_or_version(fx, tmp_path, fake_stack):
    rt, _ = fake_stack
    other_gpu = _engine(tmp_path / "a.engine", fx.model, cc="9.0")
    with pytest.raises(ArtifactError, match="compute capability 9.0"):
        with TrtBackend(other_gpu):
            pass
    other_trt = _engine(tmp_path / "b.engine", fx.model, trt_version="11.1.0")
    with pytest.raises(ArtifactError, match="TensorRT 11.1.0 but this is TensorRT 10.3.0.30"):
        with TrtBackend(other_trt):
            pass
    corrupt = _engine(tmp_path / "c.engine", fx.model)
    _tie(corrupt).write_bytes(b"\x00not an engine")
    with pytest.raises(ArtifactError, match="not the engine its sidecar describes"):
        with TrtBackend(corrupt):
            pass
    _tie(corrupt)
    with pytest.raises(ArtifactError, match="could not deserialize"):
        with TrtBackend(corrupt):
            pass
    assert rt.allocs == {}


def test_trt_backend_refuses_engine_replaced_after_build(fx, tmp_path, fake_stack):
    rt, _ = fake_stack
    engine = _engine(tmp_path / "model.engine", fx.model)
    other = build_diff_model(tmp_path / "other.onnx", fx.ref, threshold=fx.threshold, blur=3)
    engine.write_text(json.dumps({"onnx": str(other)}))  # e.g. trtexec --saveEngine over the old file
    with pytest.raises(ArtifactError, match="model.engine is not the engine its sidecar describes"):
        with TrtBackend(engine):
            pass
    assert rt.allocs == {}


@pytest.mark.parametrize("build, message", [
    (dict(map_pool=8), r"output 'anomaly_map' has shape \[1, 1, 8, 8\]"),
    (dict(props_override={"protospect.format_version": "99"}), "format_version '99' but this protospect reads '1'"),
    (dict(props_override={"protospect.threshold": "nan"}), "threshold nan is not a finite number"),
])
def test_trt_backend_checks_metadata_and_output_shapes_at_load(fx, tmp_path, fake_stack, build, message):
    rt, _ = fake_stack
    model = build_diff_model(tmp_path / "m.onnx", fx.ref, threshold=fx.threshold, **build)
    with pytest.raises(ArtifactError, match=message):
        with TrtBackend(_engine(tmp_path / "m.engine", model)):
            pass
    assert rt.allocs == {}


class FakeProtoTopK:
    """protospect.cpp_ext.launcher.ProtoTopK's interface over host pointers, via the numpy reference."""

    instances = []
    MS = 0.125  # its fake device time

    def __init__(self, bank, M=None, D=None, dtype=None):
        self.bank = np.array(bank)
        self.closed = False
        FakeProtoTopK.instances.append(self)

    def run(self, q_ptr, Q, k, out_dist_ptr, out_idx_ptr=0, stream=0):
        from protospect.cpp_ext.reference import knn_sqdist

        d = self.bank.shape[1]
        q = np.frombuffer((ctypes.c_float * (Q * d)).from_address(q_ptr), np.float32).reshape(Q, d)
        out = np.frombuffer((ctypes.c_float * (Q * k)).from_address(out_dist_ptr), np.float32).reshape(Q, k)
        out[...] = knn_sqdist(q, self.bank, k)
        assert out_idx_ptr == 0  # the head needs distances only
        fake_gpu.CLOCK.ms += self.MS

    def close(self):
        self.closed = True


def _split_engines(folder, ref, img):
    """A split model (k = 3, 8 px cells) with fake engines for both graphs: (folder, the TRT backend selected for it,
    and the split ORT backend's map and score for ``img``, the reference)."""
    folder = build_split_model(folder, ref, k=3, cell=8, threshold=0.1,
                               bank=np.random.default_rng(0).uniform(0, 1, (40, 3)).astype(np.float32))
    with SplitOrtBackend(folder) as cpu:
        want_map, want_score = cpu.infer(img)
    _engine(folder / "features.engine", folder / "features.onnx")
    _engine(folder / "head.engine", folder / "head.onnx")
    backend = select_backend(folder)
    assert isinstance(backend, SplitTrtBackend)
    return folder, backend, want_map, want_score


def test_split_trt_path_matches_split_ort(tmp_path, fake_stack, fake_kernel_toolchain, monkeypatch):
    import protospect.cpp_ext.launcher as launcher

    monkeypatch.setattr(launcher, "ProtoTopK", FakeProtoTopK)
    img = _frame()
    folder, backend, want_map, want_score = _split_engines(tmp_path / "split", reference_rgb(64), img)
    rt, _ = fake_stack
    with backend:
        amap, score = backend.infer(img)
        # each stage's events bracket that stage's work only (copies outside, top-k between the engines)
        assert backend.last_stage_ms == {"features": fake_gpu.ENGINE_MS, "topk": FakeProtoTopK.MS, "head": fake_gpu.ENGINE_MS}
        assert backend.last_device_ms == 2 * fake_gpu.ENGINE_MS + FakeProtoTopK.MS
    assert np.abs(amap - want_map).max() < 1e-6 and score == pytest.approx(want_score)
    assert FakeProtoTopK.instances[-1].closed and rt.allocs == {}
    np.save(folder / "bank.npy", np.load(folder / "bank.npy")[::-1].copy())  # a bank from another export
    with pytest.raises(ArtifactError, match="bank.npy is not the bank"):
        with select_backend(folder):
            pass


def test_trt_backends_take_a_non_square_input(tmp_path, fake_stack, fake_kernel_toolchain, monkeypatch):
    """An H x W = 48 x 80 model: the engines' input shape is (1, H, W, 3), maps come back H x W, same as ORT."""
    import protospect.cpp_ext.launcher as launcher

    monkeypatch.setattr(launcher, "ProtoTopK", FakeProtoTopK)
    rt, _ = fake_stack
    h, w = 48, 80
    ref = reference_rgb((h, w))
    img = resize_image(to_rgb_uint8(render_part(np.random.default_rng(1), (160, 120), defect=True)), (h, w))
    model = build_diff_model(tmp_path / "wide.onnx", ref, threshold=0.1)
    with OrtBackend(model) as o:
        want_map, want_score = o.infer(img)
    with TrtBackend(_engine(tmp_path / "wide.engine", model)) as t:
        assert t.info.input_hw == (h, w) and t._engine.plan["image"].shape == (1, h, w, 3)
        amap, score = t.infer(img)
    assert amap.shape == (h, w) and np.array_equal(amap, want_map) and score == want_score

    _, backend, want_map, want_score = _split_engines(tmp_path / "split", ref, img)
    with backend:
        assert backend._features.plan["image"].shape == (1, h, w, 3) and backend._n == (h // 8) * (w // 8)
        amap, score = backend.infer(img)
    assert amap.shape == (h, w) and np.abs(amap - want_map).max() < 1e-6 and score == pytest.approx(want_score)
    assert rt.allocs == {}


def test_serve_and_bench_report_the_tensorrt_version(fx, tmp_path, fake_stack):
    """summary.json and bench.json carry the engine's TensorRT version: the report is taken while the
    backend is still open (it was taken after Pipeline.run had torn down serve's backend)."""
    from protospect.cli import main as cli_main

    rt, trt = fake_stack
    engine = _engine(tmp_path / "model.engine", fx.model)
    assert cli_main(["serve", str(engine), "--source", str(fx.video), "--sink", str(tmp_path / "s"),
                     "--max-frames", "4"]) == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["backend"]["backend"] == "trt" and summary["backend"]["tensorrt_version"] == trt.__version__
    assert cli_main(["bench", str(engine), "--frames", "3", "--warmup", "1", "--out", str(tmp_path / "b")]) == 0
    bench = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert bench["backend"]["tensorrt_version"] == trt.__version__
    assert rt.allocs == {}  # and the backend was closed once, by the command that opened it


def _split_with_engines(tmp_path):
    folder = build_split_model(tmp_path / "split", reference_rgb(64), k=3, cell=8, threshold=0.1,
                               bank=np.random.default_rng(0).uniform(0, 1, (40, 3)).astype(np.float32))
    _engine(folder / "features.engine", folder / "features.onnx")
    _engine(folder / "head.engine", folder / "head.onnx")
    return folder


@pytest.mark.parametrize("broken,reason", [
    ("no_nvrtc", "NVRTC bindings"),             # cuda-python without its nvrtc module
    ("nvrtc_library", "NVRTC library"),         # the binding imports, libnvrtc is missing
    ("no_headers", "CUDA headers"),             # nothing for NVRTC to compile the kernel against
])
def test_split_folder_falls_back_to_ort_when_the_kernel_cannot_be_built(tmp_path, fake_stack, fake_kernel_toolchain,
                                                                        monkeypatch, caplog, broken, reason):
    """select_backend's split-TensorRT path needs the top-k kernel, which the NVRTC launcher compiles on first
    use: with TensorRT, cuda-python and both engines present but the kernel's toolchain broken, it picks
    split-ort and says why (the check used to be that protospect.cpp_ext.launcher imports: always true)."""
    import protospect.cpp_ext.launcher as launcher
    import protospect.cpp_ext.kernel_build as kernel_build

    folder = _split_with_engines(tmp_path)
    if broken == "no_nvrtc":
        monkeypatch.setitem(sys.modules, "cuda.bindings.nvrtc", None)  # import raises ImportError
    elif broken == "nvrtc_library":
        nvrtc, _ = fake_gpu.make_nvrtc_and_driver(working=False)
        monkeypatch.setitem(sys.modules, "cuda.bindings.nvrtc", nvrtc)
    else:
        monkeypatch.setattr(kernel_build, "cuda_include_dirs", lambda: [])
    with caplog.at_level("INFO", logger="protospect.runtime.backends"):
        backend = select_backend(folder)
    assert isinstance(backend, SplitOrtBackend)
    assert "backend: split-ort" in caplog.text and reason in caplog.text, caplog.text
    assert launcher.unavailable_reason() is not None and reason in launcher.unavailable_reason()


def test_kernel_toolchain_check_passes_with_everything_present(fake_kernel_toolchain):
    import protospect.cpp_ext.launcher as launcher

    assert launcher.unavailable_reason() is None
