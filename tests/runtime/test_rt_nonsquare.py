"""Models with a non-square H x W input (protospect.input_size "[H, W]"): metadata parsing, every CPU backend,
the pipeline with frames of another size and aspect, bench's default frame, and line-threshold files.

The model is the fixture "difference from a reference" graph (fixture_models.build_diff_model) built on a
reference of H x W = 48 x 80, so its input is uint8 [1, 48, 80, 3] and its map [1, 1, 48, 80]. Torch-free."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from fixture_models import build_diff_model, build_split_model, calibrate_threshold, numpy_refdiff, reference_rgb, render_part

from protospect.cli import main as cli_main
from protospect.conformal import operating_point
from protospect.contract import with_metadata_hash
from protospect.errors import ArtifactError, ConfigError
from protospect.imageio import resize_image, to_rgb_uint8
from protospect.metadata import build_metadata
from protospect.runtime import line_threshold
from protospect.runtime.backends.base import check_output_shapes
from protospect.runtime.backends.ort import OrtBackend
from protospect.runtime.backends.split import SplitOrtBackend
from protospect.runtime.backends.triton import check_config
from protospect.imageio import size_text
from protospect.runtime.model_info import ModelInfo
from protospect.runtime.pipeline import Pipeline
from protospect.runtime.preprocess import preprocess
from protospect.runtime.frames import stamp
from protospect.runtime.sinks import NgImageSink, Sink
from protospect.runtime.sources import ArraySource

H, W = 48, 80          # the model input: wider than tall
FRAME = (160, 120)     # W x H of the camera frames: another size and another aspect (4:3, not 5:3)
DEFECTS = {2, 5}


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A 48 x 80 model with a threshold set on good frames only, and its reference image."""
    root = tmp_path_factory.mktemp("nonsquare")
    ref = reference_rgb((H, W), FRAME)
    assert ref.shape == (H, W, 3)
    rng = np.random.default_rng(21)
    provisional = build_diff_model(root / "model.onnx", ref, threshold=1.0)
    threshold = calibrate_threshold(provisional, [render_part(rng, FRAME) for _ in range(8)])
    model = build_diff_model(root / "model.onnx", ref, threshold=threshold, map_range=(0.0, 0.3))
    return model, ref, threshold, root


def _props(size: str) -> dict:
    return {"protospect.input_size": size, "protospect.map_range": "[0, 1]", "protospect.threshold": "0.5"}


def test_model_info_reads_h_and_w_and_describes_them():
    wide = ModelInfo.from_props(_props("[384, 704]"), "x.onnx")
    assert wide.input_hw == (384, 704)
    assert "384x704px" in wide.describe()
    square = ModelInfo.from_props(_props("[512, 512]"), "x.onnx")
    assert square.input_hw == (512, 512)
    assert " 512px " in square.describe() and "512x512" not in square.describe()
    assert ModelInfo.from_props(_props("64"), "x.onnx").input_hw == (64, 64)  # a bare S is S x S
    assert (size_text((704, 384)), size_text((256, 256))) == ("704x384", "256")
    # what export writes for a model whose meta holds [H, W] is read back as that (H, W)
    props = build_metadata({"method": "m", "preset": "p", "input_size": [704, 384], "mean": [0, 0, 0], "std": [1, 1, 1]},
                           {"threshold": 0.5, "map_range": [0, 1]}, artifact_sha256="a" * 64)
    assert json.loads(props["protospect.input_size"]) == [704, 384]
    info = ModelInfo.from_metadata(with_metadata_hash(props), "x.onnx")
    assert info.input_hw == (704, 384) and "704x384px" in info.describe()


def test_output_shape_check_is_per_axis():
    check_output_shapes({"anomaly_map": [1, 1, H, W], "image_score": [1]}, (H, W), "x")
    check_output_shapes({"anomaly_map": ["batch", 1, H, W]}, (H, W), "x")  # a symbolic dim passes
    with pytest.raises(ArtifactError, match=r"\[1, 1, 80, 48\] but its metadata \(input size 48x80\) says \[1, 1, 48, 80\]"):
        check_output_shapes({"anomaly_map": [1, 1, W, H]}, (H, W), "x")


def test_ort_backend_serves_a_non_square_model(wide):
    model, ref, threshold, _ = wide
    img = resize_image(to_rgb_uint8(render_part(np.random.default_rng(3), FRAME, defect=True)), (H, W))
    assert img.shape == (H, W, 3)
    with OrtBackend(model) as b:
        assert b.info.input_hw == (H, W) and b.info.threshold == pytest.approx(threshold)
        assert b.describe()["input_size"] == (H, W)
        amap, score = b.infer(img)
        with pytest.raises(ConfigError, match=r"expects uint8 48x80x3 RGB \(H x W x 3\), got uint8 \(80, 48, 3\)"):
            b.infer(np.ascontiguousarray(img.transpose(1, 0, 2)))  # W x H: the axes swapped
        with pytest.raises(ConfigError, match="expects uint8 48x80x3"):
            b.infer(np.zeros((64, 64, 3), np.uint8))
    assert amap.shape == (H, W) and amap.dtype == np.float32
    want = numpy_refdiff(img, ref)
    assert np.abs(amap - want).max() < 1e-5
    assert score == pytest.approx(float(want.max()), rel=1e-5)
    assert score >= threshold  # the planted pit is found


def test_graph_whose_metadata_swaps_h_and_w_is_refused_at_load(wide, tmp_path):
    _, ref, _, _ = wide
    path = build_diff_model(tmp_path / "swapped.onnx", ref, threshold=0.1,
                            props_override={"protospect.input_size": json.dumps([W, H])})
    with pytest.raises(ArtifactError, match=r"input 'image' has shape \[1, 48, 80, 3\], metadata says \[1,80,48,3\]"):
        with OrtBackend(path):
            pass


def test_dynamic_batch_of_non_square_frames(wide, tmp_path):
    _, ref, threshold, _ = wide
    dyn = build_diff_model(tmp_path / "dyn.onnx", ref, threshold=threshold, batch="dynamic")
    rng = np.random.default_rng(4)
    frames = np.stack([resize_image(to_rgb_uint8(render_part(rng, FRAME, defect=i == 1)), (H, W)) for i in range(3)])
    with OrtBackend(dyn) as b:
        assert b.batchable
        maps, scores = b.infer_batch(frames)
        singles = [b.infer(f) for f in frames]
    assert maps.shape == (3, H, W) and scores.shape == (3,)
    for i, (m, s) in enumerate(singles):
        assert np.allclose(maps[i], m, atol=1e-6) and scores[i] == pytest.approx(s, rel=1e-6)
        assert np.abs(m - numpy_refdiff(frames[i], ref)).max() < 1e-5


def test_split_path_on_a_non_square_grid(wide, tmp_path):
    _, ref, _, _ = wide
    rng = np.random.default_rng(0)
    bank = rng.uniform(0, 1, (40, 3)).astype(np.float32)
    cell = 8
    folder = build_split_model(tmp_path / "split", ref, k=3, cell=cell, threshold=0.1, bank=bank)
    img = resize_image(to_rgb_uint8(render_part(rng, FRAME, defect=True)), (H, W))
    with SplitOrtBackend(folder) as b:
        assert b.info.input_hw == (H, W) and b.info.grid == (H // cell, W // cell) == (6, 10)
        amap, score = b.infer(img)
    cells = (img.astype(np.float32) / 255).reshape(H // cell, cell, W // cell, cell, 3).mean(axis=(1, 3)).reshape(-1, 3)
    d2 = ((cells[:, None, :] - bank[None]) ** 2).sum(-1)
    grid = np.sqrt(np.sort(d2, axis=1)[:, :3].mean(axis=1)).reshape(H // cell, W // cell)
    want = np.kron(grid, np.ones((cell, cell)))
    assert amap.shape == (H, W) and np.abs(amap - want).max() < 1e-4
    assert score == pytest.approx(float(grid.max()), rel=1e-4)


def test_preprocess_resizes_any_frame_to_h_by_w():
    rng = np.random.default_rng(2)
    for fh, fw in [(120, 160), (200, 90), (48, 80), (20, 30)]:  # other aspect, portrait, identity, growing
        bgr = rng.integers(0, 256, (fh, fw, 3), dtype=np.uint8)
        model_in, full = preprocess(stamp(0, bgr, bgr=True), (H, W))
        assert model_in.shape == (H, W, 3)
        assert np.array_equal(model_in, resize_image(to_rgb_uint8(bgr, bgr=True), (H, W)))
        assert full().shape == (fh, fw, 3)
        gray, _ = preprocess(stamp(0, bgr[:, :, 0], bgr=True), (H, W))
        assert gray.shape == (H, W, 3)


class Collect(Sink):
    name = "collect"

    def __init__(self):
        self.results = []

    def write(self, result) -> None:
        self.results.append((result.seq, result.verdict, result.score, result.anomaly_map.shape))


def test_pipeline_judges_frames_of_another_size_on_a_non_square_model(wide, tmp_path):
    model, _, threshold, _ = wide
    rng = np.random.default_rng(9)
    frames = [render_part(rng, FRAME, defect=i in DEFECTS) for i in range(8)]
    sink, ng_dir = Collect(), tmp_path / "ng"
    report = Pipeline(OrtBackend(model), ArraySource(frames, bgr=True), [sink, NgImageSink(ng_dir, (0.0, 0.3))]).run()
    assert [r[0] for r in sink.results] == list(range(8))
    assert {seq for seq, verdict, _, _ in sink.results if verdict == "NG"} == DEFECTS
    assert all((verdict == "NG") == (score >= threshold) for _, verdict, score, _ in sink.results)
    assert {shape for *_, shape in sink.results} == {(H, W)}
    c = report["counters"]
    assert (c["processed"], c["ng"], c["rejected"]) == (8, len(DEFECTS), 0)
    png = cv2.imread(str(ng_dir / f"ng_{min(DEFECTS):08d}.png"))
    assert png.shape == (FRAME[1], FRAME[0], 3)  # the 48 x 80 map laid over the 120 x 160 frame


def test_bench_and_soak_default_frame_is_the_models_h_by_w(wide, tmp_path):
    model, *_ = wide
    assert cli_main(["bench", str(model), "--frames", "5", "--warmup", "1", "--out", str(tmp_path / "b")]) == 0
    bench = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert bench["source"] == f"host memory {W}x{H}"  # WxH, like --frame-size
    assert bench["counters"]["processed"] == 6 and bench["counters"]["rejected"] == 0
    assert bench["backend"]["input_size"] == [H, W]
    assert cli_main(["soak", str(model), "--frames", "4", "--sink", str(tmp_path / "s")]) == 0
    soak = json.loads((tmp_path / "s" / "soak.json").read_text())
    assert soak["source"] == f"host memory {W}x{H}" and soak["counters"]["processed"] == 4
    assert soak["counters"]["rejected"] == 0


def test_triton_config_check_reads_h_and_w():
    outputs = [{"name": "anomaly_map"}, {"name": "image_score"}]
    batched = {"max_batch_size": 8, "input": [{"name": "image", "data_type": "TYPE_UINT8", "dims": [H, W, 3]}],
               "output": outputs}
    check_config(batched, (H, W), "m")
    check_config({"input": [{"name": "image", "data_type": "TYPE_UINT8", "dims": [1, H, W, 3]}], "output": outputs},
                 (H, W), "m")
    with pytest.raises(ArtifactError, match=r"dims \[48, 80, 3\], its parameters say \[80, 48, 3\]"):
        check_config(batched, (W, H), "m")


def _record(info: ModelInfo) -> dict:
    return line_threshold.record(operating_point(np.linspace(0.1, 0.3, 20), 0.05, 0.1), info, "m.onnx", "good")


def test_line_threshold_files_compare_sizes_as_h_and_w(tmp_path):
    base = {"threshold": "0.5", "map_range": "[0, 1]", "method": "refdiff", "precision": "fp32",
            "artifact_sha256": "a" * 64}
    square = ModelInfo.from_props({**base, "input_size": "[64, 64]"}, "test")
    wide = ModelInfo.from_props({**base, "input_size": "[384, 704]"}, "test")

    rec = _record(square)
    assert rec["model"]["input_size"] == 64  # square: S, as every file before non-square models
    for size in (64, [64, 64]):  # a file written before (int S), or one with S as [S, S]
        path = tmp_path / f"sq_{json.dumps(size)}.json"
        line_threshold.save(path, {**rec, "model": {**rec["model"], "input_size": size}})
        assert line_threshold.apply(square, str(path)).threshold == rec["threshold"]
        with pytest.raises(ArtifactError, match=r"input_size .* \(file\) vs \[384, 704\] \(model\)"):
            line_threshold.apply(wide, str(path))
    v1 = tmp_path / "v1.json"  # the earlier one-threshold format, with the int form
    v1.write_text(json.dumps({"format": "protospect.line_threshold/1", "threshold": 0.42, "model": rec["model"]}))
    assert line_threshold.apply(square, str(v1)).threshold == 0.42

    rec = _record(wide)
    assert rec["model"]["input_size"] == [384, 704]
    path = tmp_path / "wide.json"
    line_threshold.save(path, rec)
    assert json.loads(path.read_text())["model"]["input_size"] == [384, 704]
    assert line_threshold.apply(wide, str(path)).threshold == rec["threshold"]
    for other in ([704, 384], 384, 704, "384x704", [384, 704, 3], None):
        bad = tmp_path / "bad.json"
        line_threshold.save(bad, {**rec, "model": {**rec["model"], "input_size": other}})
        with pytest.raises(ArtifactError, match="input_size"):
            line_threshold.apply(wide, str(bad))
    with pytest.raises(ArtifactError, match=r"input_size \[384, 704\] \(file\) vs 64 \(model\)"):
        line_threshold.apply(square, str(path))
