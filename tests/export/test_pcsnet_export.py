"""PCSNet (learned CAS decoder after the top-k, guide tensor) through full, split and INT8 export."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import export_fixtures as fx
from protospect.calibration.exclusion import float_regions
from protospect.calibration.quantize import int8_from_onnx
from protospect.export.onnx_export import onnx_from_model, split_from_model
from protospect.export.ort_session import cpu_session
from protospect.export.parity import parity_from_model
from protospect.imageio import read_rgb

pytestmark = pytest.mark.torch

TINY = {"input_size": fx.SIZE, "grid": 8, "bins": [8, 4, 2, 1], "steps": 2, "k": 4, "loss_k": 2,
        "guide_dim": 16, "cas_width": 16}


@pytest.fixture(scope="module")
def pcsnet(demo_category, tmp_path_factory):
    from protospect.training.methods import get_method

    shots = sorted((demo_category / "train" / "good").glob("*.png"))[: fx.SHOTS]
    model = get_method("pcsnet").fit([read_rgb(p) for p in shots], preset="edge", seed=0, config_overrides=TINY)
    graph = onnx_from_model(model, model.meta, model.calibration, tmp_path_factory.mktemp("pcs") / "pcs.onnx").path
    return model, graph, shots


def test_full_graph_parity(pcsnet, demo_category):
    model, graph, _ = pcsnet
    frames, labels = fx.test_set(demo_category)
    report = parity_from_model(model, graph, frames, labels)
    assert report.ok and report.map_max_rel <= 1e-4, report.format()


def test_split_with_guide_reproduces_full(pcsnet, demo_category, tmp_path):
    model, graph, _ = pcsnet
    paths = split_from_model(model, model.meta, model.calibration, tmp_path)
    feats, head, full = cpu_session(paths["features"]), cpu_session(paths["head"]), cpu_session(graph)
    assert [o.name for o in feats.get_outputs()] == ["queries", "guide"]
    assert [i.name for i in head.get_inputs()] == ["knn_sqdist", "guide"]
    bank = np.load(paths["bank"])
    frame = fx.test_set(demo_category)[0][-1]
    queries, guide = feats.run(None, {"image": frame[None]})
    d = (queries ** 2).sum(-1, keepdims=True) + (bank ** 2).sum(-1) - 2 * queries @ bank.T
    knn = np.sort(d, axis=-1)[..., :TINY["k"]].astype(np.float32)
    m_split, _ = head.run(None, {"knn_sqdist": knn, "guide": guide})
    m_full, _ = full.run(None, {"image": frame[None]})
    assert np.abs(m_split - m_full).max() <= 1e-4 * (m_full.max() - m_full.min()) + 1e-6


def test_int8_quantizes_decoder_but_not_its_last_layer(pcsnet, tmp_path):
    _, graph, shots = pcsnet
    model = onnx.load(str(graph))
    regions = float_regions(model, float_tail=1)
    cas_convs = [n.name for n in model.graph.node if n.op_type == "Conv" and "/head/cas/" in n.name]
    float_cas = [n for n in cas_convs if n in regions.tail]
    assert len(float_cas) == 1 and len(cas_convs) > 10  # only the classifier's last conv stays float
    result = int8_from_onnx(graph, tmp_path / "pcs.int8.onnx", shots)
    assert result.qdq.ok
    assert float_cas[0] in result.qdq.float_layers
    assert sum(1 for n in result.qdq.quantized if "/head/cas/" in n) == len(cas_convs) - 1


def test_a_non_square_pcsnet_exports_with_parity_and_serves(tmp_path):
    """aspect=keep (docs/decision.md section 17): a 1:2 part's H x W model through the full and split graphs and
    the ORT backend, every frame resized to H x W as the station does."""
    from protospect.export.onnx_export import split_from_model
    from protospect.runtime.backends.ort import OrtBackend
    from protospect.training.methods import get_method
    from tests.training.test_aspect import KEEP, tall_parts

    model = get_method("pcsnet").fit(tall_parts(2), preset="edge", seed=0, config_overrides=KEEP, progress=False)
    assert model.cfg.hw == (192, 96)
    graph = onnx_from_model(model, model.meta, model.calibration, tmp_path / "tall.onnx").path
    frames = tall_parts(3, seed=7)
    frames[2][120:150, 20:60] = (255, 0, 255)
    report = parity_from_model(model, graph, frames, [0, 0, 1])
    assert report.ok and report.map_max_rel <= 1e-4, report.format()
    from protospect.imageio import resize_image
    with OrtBackend(graph, device="cpu") as backend:
        assert backend.info.input_hw == (192, 96)
        amap, score = backend.infer(resize_image(frames[2], backend.info.input_hw))
    assert np.asarray(amap).squeeze().shape == (192, 96) and np.isfinite(score)
    paths = split_from_model(model, model.meta, model.calibration, tmp_path / "split")
    queries, guide = cpu_session(paths["features"]).run(None, {"image": resize_image(frames[0], (192, 96))[None]})
    assert queries.shape[1] == 24 * 12 and guide.shape[-2:] == (24, 12)
