"""Export, parity, INT8 calibration and deployment configs of a model with a non-square H x W input.

The model is a tiny PatchCore-like net (three stride-2 convs -> queries on an (H/8) x (W/8) grid, a bank,
top-k, a head that upsamples to H x W); its meta says input_size [H, W] as a non-square model's does. It is
not a trained PCSNet: the graph's shapes, metadata and numbers are what is under test."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from protospect.calibration.augment import AugmentConfig
from protospect.calibration.data_reader import int8_calibration_frames
from protospect.calibration.quantize import int8_from_onnx
from protospect.errors import ArtifactError
from protospect.export.deploy import FullGraph
from protospect.export.onnx_export import onnx_from_model, split_from_model
from protospect.export.ort_session import cpu_session
from protospect.export.parity import load_images, parity_from_model
from protospect.imageio import resize_image
from protospect.training.methods.base import ModelOutputs

pytestmark = pytest.mark.torch

H, W = 48, 80                  # input: wider than tall
GH, GW = H // 8, W // 8        # query grid 6 x 10
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class _Features(nn.Module):
    def __init__(self, guide: bool):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(8, 6, 3, 2, 1))
        self.guide = guide

    def forward(self, x):
        f = self.body(x)                                   # (B, 6, H/8, W/8)
        q = f.flatten(2).transpose(1, 2)                   # (B, N, 6), row-major over the grid
        return (q, f[:, :2]) if self.guide else q


class _Head(nn.Module):
    def __init__(self, grid: tuple[int, int], size: tuple[int, int]):
        super().__init__()
        self.grid, self.size = grid, size

    def forward(self, knn_sqdist, guide=None):
        d = knn_sqdist.clamp_min(0).sqrt().mean(dim=-1)                  # (B, N)
        gh, gw = guide.shape[-2:] if guide is not None else self.grid
        m = d.view(-1, 1, gh, gw)
        if guide is not None:
            m = m * (1.5 + torch.tanh(guide.mean(dim=1, keepdim=True)))  # the guide really feeds the head
        m = F.interpolate(m, size=self.size, mode="bilinear", align_corners=False)
        return ModelOutputs(anomaly_map=m, image_score=m.amax(dim=(1, 2, 3)))


class WideModel(nn.Module):
    def __init__(self, guide: bool = True, k: int = 2):
        super().__init__()
        self.features, self.head, self.k = _Features(guide), _Head((GH, GW), (H, W)), k
        self.register_buffer("bank", torch.randn(30, 6, generator=torch.Generator().manual_seed(1)))
        self.meta = {"method": "wide", "preset": "test", "input_size": [H, W], "mean": MEAN, "std": STD}
        self.calibration = {"threshold": 1.0, "map_range": [0.0, 2.0]}
        self.eval()

    def forward(self, x):
        out = self.features(x)
        q, guide = out if isinstance(out, tuple) else (out, None)
        b = self.bank
        d2 = (q * q).sum(-1, keepdim=True) + (b * b).sum(-1)[None, None, :] - 2.0 * (q @ b.t())
        return self.head(torch.topk(d2, self.k, dim=-1, largest=False).values, guide)

    def split(self):
        return self.features, self.bank.clone(), self.k, self.head


def _frames(n: int, size=(60, 90), seed: int = 0) -> list[np.ndarray]:
    """uint8 RGB frames of another size and aspect than the model's (H x W = 60 x 90 by default)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    base = np.stack([xx * 2, yy * 3, xx + yy], axis=-1) % 256
    return [np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8) for _ in range(n)]


def _dims(values) -> dict:
    return {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in values}


@pytest.fixture(scope="module")
def wide_graph(tmp_path_factory):
    model = WideModel()
    path = onnx_from_model(model, model.meta, model.calibration, tmp_path_factory.mktemp("wide") / "wide.onnx",
                           artifact_sha256="ab" * 32).path
    return model, path


def test_full_graph_takes_h_by_w_and_matches_pytorch(wide_graph):
    model, path = wide_graph
    g = onnx.load(str(path))
    assert _dims(g.graph.input) == {"image": [1, H, W, 3]}
    assert _dims(g.graph.output) == {"anomaly_map": [1, 1, H, W], "image_score": [1]}
    props = {p.key: p.value for p in g.metadata_props}
    assert json.loads(props["protospect.input_size"]) == [H, W]
    frames = load_images(_frames(3), model.meta["input_size"])  # 60 x 90 frames resized to 48 x 80
    assert frames.shape == (3, H, W, 3)
    session = cpu_session(path)
    wrapper = FullGraph(model, MEAN, STD).eval()
    for frame in frames:
        o_map, o_score = session.run(["anomaly_map", "image_score"], {"image": frame[None]})
        with torch.no_grad():
            t_map, t_score = wrapper(torch.from_numpy(frame[None]))
        assert o_map.shape == (1, 1, H, W)
        assert np.abs(o_map - t_map.numpy()).max() <= 1e-4 * float(t_map.max() - t_map.min())
        assert float(o_score[0]) == pytest.approx(float(t_score[0]), rel=1e-5)
    report = parity_from_model(model, path, _frames(4, seed=1))
    assert report.n_images == 4 and report.map_max_rel <= 1e-4 and report.ok, report.format()


def test_runtime_serves_the_exported_graph(wide_graph):
    from protospect.runtime.backends.ort import OrtBackend

    model, path = wide_graph
    frame = resize_image(_frames(1, (120, 100))[0], (H, W))
    with OrtBackend(path, device="cpu") as b:
        assert b.info.input_hw == (H, W) and b.info.method == "wide"
        amap, score = b.infer(frame)
    want, want_score = cpu_session(path).run(["anomaly_map", "image_score"], {"image": frame[None]})
    assert amap.shape == (H, W) and np.array_equal(amap, want[0, 0]) and score == pytest.approx(float(want_score[0]))


def test_dynamic_batch_declares_h_and_w(tmp_path):
    model = WideModel()
    path = onnx_from_model(model, model.meta, model.calibration, tmp_path / "dyn.onnx", batch="dynamic").path
    g = onnx.load(str(path))
    assert _dims(g.graph.input) == {"image": ["batch", H, W, 3]}
    assert _dims(g.graph.output) == {"anomaly_map": ["batch", 1, H, W], "image_score": ["batch"]}
    frames = np.stack(load_images(_frames(3), (H, W)))
    maps, scores = cpu_session(path).run(["anomaly_map", "image_score"], {"image": frames})
    assert maps.shape == (3, 1, H, W) and scores.shape == (3,)


def test_split_export_takes_the_grid_from_the_guide(tmp_path):
    from protospect.runtime.backends.split import SplitOrtBackend

    model = WideModel(guide=True)
    paths = split_from_model(model, model.meta, model.calibration, tmp_path / "split", artifact_sha256="cd" * 32)
    feats, head = onnx.load(str(paths["features"])), onnx.load(str(paths["head"]))
    assert _dims(feats.graph.input) == {"image": [1, H, W, 3]}
    assert _dims(feats.graph.output) == {"queries": [1, GH * GW, 6], "guide": [1, 2, GH, GW]}
    assert _dims(head.graph.output) == {"anomaly_map": [1, 1, H, W], "image_score": [1]}
    props = {p.key: p.value for p in feats.metadata_props}
    assert json.loads(props["protospect.grid"]) == [GH, GW] and json.loads(props["protospect.input_size"]) == [H, W]
    frame = load_images(_frames(1, seed=2), (H, W))[0]
    with torch.no_grad():
        full, full_score = FullGraph(model, MEAN, STD).eval()(torch.from_numpy(frame[None]))
    with SplitOrtBackend(tmp_path / "split", device="cpu") as b:
        assert b.info.input_hw == (H, W) and b.info.grid == (GH, GW)
        amap, score = b.infer(frame)
    assert amap.shape == (H, W)
    assert np.abs(amap - full.numpy()[0, 0]).max() <= 1e-4 * float(full.max() - full.min())
    assert score == pytest.approx(float(full_score[0]), rel=1e-4)


def test_split_export_without_a_guide_refuses_to_guess_a_non_square_grid(tmp_path):
    model = WideModel(guide=False)
    with pytest.raises(ArtifactError, match=r"48x80 \(not square\) and no guide gives the shape of the 60-position"):
        split_from_model(model, model.meta, model.calibration, tmp_path / "split")
    # the full graph of the same model exports (its head knows its grid)
    path = onnx_from_model(model, model.meta, model.calibration, tmp_path / "full.onnx").path
    assert _dims(onnx.load(str(path)).graph.output)["anomaly_map"] == [1, 1, H, W]


def test_int8_calibrates_on_h_by_w_frames(wide_graph, tmp_path):
    _, path = wide_graph
    frames = int8_calibration_frames(_frames(2), (H, W), AugmentConfig(per_image=3))
    assert len(frames) == 8 and {f.shape for f in frames} == {(H, W, 3)}
    result = int8_from_onnx(path, tmp_path / "wide.int8.onnx", _frames(2), augment=AugmentConfig(per_image=15))
    assert result.n_frames == 32 and result.qdq.quantized
    g = onnx.load(str(tmp_path / "wide.int8.onnx"))
    assert _dims(g.graph.input) == {"image": [1, H, W, 3]}
    props = {p.key: p.value for p in g.metadata_props}
    assert props["protospect.precision"] == "int8" and json.loads(props["protospect.input_size"]) == [H, W]
    frame = load_images(_frames(1, seed=5), (H, W))
    (m8,) = cpu_session(tmp_path / "wide.int8.onnx", simulate_qdq=True).run(["anomaly_map"], {"image": frame})
    assert m8.shape == (1, 1, H, W) and np.isfinite(m8).all()


def test_deployment_configs_carry_h_and_w(wide_graph, tmp_path):
    from protospect.export.deepstream import config_text as deepstream_config
    from protospect.export.triton_repo import config_text as triton_config
    from protospect.export.triton_repo import plan_config_text
    from protospect.runtime.backends.triton import check_config

    _, path = wide_graph
    ds = deepstream_config(path)
    assert f"infer-dims={H};{W};3" in ds and f"anomaly_map [1,{H},{W}]" in ds
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    plan = plan_config_text(meta, "wide")
    assert f"dims: [ 1, {H}, {W}, 3 ]" in plan and f"dims: [ 1, 1, {H}, {W} ]" in plan
    model = WideModel()
    dyn = onnx.load(str(onnx_from_model(model, model.meta, model.calibration, tmp_path / "d.onnx", batch="dynamic").path))
    text = triton_config(dyn, "wide")
    assert f"dims: [ {H}, {W}, 3 ]" in text and f"dims: [ 1, {H}, {W} ]" in text
    check_config({"max_batch_size": 8, "input": [{"name": "image", "data_type": "TYPE_UINT8", "dims": [H, W, 3]}],
                  "output": [{"name": "anomaly_map"}, {"name": "image_score"}]}, (H, W), "wide")
