"""Rule v13's global branch in the product (training/methods/pcsnet/global_branch.py): the in-graph resize, the
fused image score and its calibration, the per-part choice, the artifact round trip and the exported graph."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

from protospect.errors import ConfigError  # noqa: E402
from protospect.training.methods.pcsnet import build, fit  # noqa: E402
from protospect.training.methods.pcsnet.global_branch import resample_matrix  # noqa: E402
from protospect.training.methods.pcsnet.train_loop import to_tensor  # noqa: E402

from tests.training.test_pcsnet import TINY, parts  # noqa: E402
from tests.training.test_pcsnet_decision import assert_onnx_parity, assert_round_trip  # noqa: E402

pytestmark = pytest.mark.torch

GLOBAL = {**TINY, "image_branch": "global"}


@pytest.fixture(scope="module")
def global_model():
    return fit(parts(), "edge", seed=0, config_overrides=GLOBAL, progress=False)


@pytest.mark.parametrize("n_in,interp", [(512, cv2.INTER_AREA), (640, cv2.INTER_AREA), (300, cv2.INTER_AREA),
                                         (64, cv2.INTER_LINEAR), (256, None)])
def test_resample_matrix_is_the_resize_the_study_used(n_in, interp):
    img = np.random.default_rng(0).uniform(0, 255, (n_in, n_in)).astype(np.float32)
    r = resample_matrix(n_in, 256)
    got = r @ img @ r.T
    want = img if interp is None else cv2.resize(img, (256, 256), interpolation=interp)
    assert np.abs(got - want).max() < 1e-2 * 255


def test_image_score_is_the_sum_of_both_standardised_scores(global_model):
    m, gb = global_model, global_model.global_branch
    assert m.meta["global_bank_shape"] == [4, gb.dim] and m.meta["config"]["image_branch"] == "global"
    x = to_tensor(parts(3, seed=7), m.meta["mean"], m.meta["std"])
    with torch.no_grad():
        out = m(x)
        p = out.anomaly_map.flatten(1).amax(1)  # the map is PCSNet's; its maximum is p
        s = gb.stats
        want = (p - s[0]) / s[1] + (gb.scores(x) - s[2]) / s[3]
    assert torch.allclose(out.image_score, want, atol=1e-5)
    assert float(s[1]) > 0 and float(s[3]) > 0 and not torch.equal(out.image_score, p)


def test_calibration_standardises_on_the_leave_one_out_views(global_model):
    normal = np.array(global_model.calibration["normal_scores"])
    assert len(normal) == 4 * TINY["calib_augments"]
    assert abs(normal.mean()) < 1e-4  # z(p) + z(g) over the very views the statistics came from
    assert global_model.calibration["threshold"] > normal.max()


def test_round_trip_restores_the_branch(global_model):
    assert_round_trip(global_model)


def test_split_export_refuses_the_global_branch(global_model):
    with pytest.raises(ConfigError, match="global branch"):
        global_model.split()


def test_global_model_exports_with_parity(global_model, tmp_path):
    # the image score is in z units: 1e-4 of it (or of 1), whatever the map's range
    assert_onnx_parity(global_model, tmp_path / "global.onnx", seeds=(3, 4), score_units=lambda v: max(1.0, abs(v)))


def test_auto_records_both_scores_and_builds_what_it_chose():
    shots, holdout = parts(4, seed=0), parts(10, seed=1)
    m = fit(shots, "edge", seed=0, config_overrides={**TINY, "image_branch": "auto"}, progress=False, holdout=holdout)
    rec = m.meta["image_branch_choice"]
    assert set(rec["scores"]) == {"map", "map+global"}
    for s in rec["scores"].values():
        assert set(s) >= {"nsa_small", "misplace", "erase", "transplant", "warp", "mean"}
    gain = rec["scores"]["map+global"]["mean"] - rec["scores"]["map"]["mean"]
    assert rec["chosen"] == ("global" if gain > rec["margin"] else "none")
    assert (m.global_branch is not None) == (rec["chosen"] == "global") == (m.meta["config"]["image_branch"] == "global")
    rebuilt = build(m.meta)
    rebuilt.load_state_dict(m.state_dict())  # the recorded config makes the same modules
    few = fit(shots, "edge", seed=0, config_overrides={**TINY, "image_branch": "auto"}, progress=False, holdout=holdout[:3])
    assert few.global_branch is None and "need" in few.meta["image_branch_choice"]["reason"]


def test_global_model_quantizes_to_int8_and_runs(global_model, tmp_path):
    pytest.importorskip("onnxruntime")
    from protospect.calibration.quantize import int8_from_onnx  # noqa: PLC0415
    from protospect.export.onnx_export import onnx_from_model  # noqa: PLC0415
    from protospect.export.ort_session import cpu_session  # noqa: PLC0415

    graph = onnx_from_model(global_model, global_model.meta, global_model.calibration, tmp_path / "g.onnx").path
    result = int8_from_onnx(graph, tmp_path / "g.int8.onnx", parts(4, seed=11))
    assert result.qdq.ok
    from protospect.calibration.exclusion import float_regions  # noqa: PLC0415
    import onnx  # noqa: PLC0415

    resample = float_regions(onnx.load(str(graph))).resample
    assert len(resample) == 1 and resample <= set(result.qdq.float_layers)  # the constant-left resize stays float
    amap, score = cpu_session(tmp_path / "g.int8.onnx").run(None, {"image": parts(1, seed=3)[0][None]})
    assert np.isfinite(amap).all() and np.isfinite(score).all()


def test_int8_with_the_package_weights_gives_the_shared_backbone_weights_one_copy_per_layer(tmp_path):
    """With real weights the exporter stores the two backbones' identical weights once; INT8 copies them per layer, so
    a float layer of one backbone never reads the DQ of a quantized layer of the other."""
    pytest.importorskip("onnxruntime")
    import onnx  # noqa: PLC0415

    from protospect.calibration.quantize import int8_from_onnx, unshare_weights  # noqa: PLC0415
    from protospect.export.onnx_export import onnx_from_model  # noqa: PLC0415

    cfg = {**GLOBAL, "input_size": 128, "grid": 16, "bins": [16, 8, 4]}
    cfg.pop("backbone_weights")
    m = fit(parts(size=128), "edge", seed=0, config_overrides=cfg, progress=False)
    graph = onnx_from_model(m, m.meta, m.calibration, tmp_path / "g.onnx").path
    assert unshare_weights(onnx.load(str(graph))) > 0  # the two backbones did share weights
    for stride in (0, 4):
        result = int8_from_onnx(graph, tmp_path / f"g{stride}.int8.onnx", parts(4, size=128, seed=11), float_stride=stride)
        assert result.qdq.ok


@pytest.mark.parametrize("hw", [(512, 512), (256, 256), (512, 768), (640, 640)])
def test_in_graph_resize_is_the_area_resize_whatever_path_it_takes(hw):
    """A whole-number shrink is an average pool and 256 px passes through; both equal the resample matrices."""
    from protospect.training.backbones import create_backbone  # noqa: PLC0415
    from protospect.training.methods.pcsnet.global_branch import G_SIZE, G_STAGES, GlobalBranch  # noqa: PLC0415

    gb = GlobalBranch(create_backbone("efficientnet_lite0", stages=G_STAGES, weights="random", input_size=G_SIZE), hw, 2)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, *hw)).astype(np.float32))
    rows, cols = (torch.from_numpy(resample_matrix(n, G_SIZE)) for n in hw)
    assert torch.allclose(gb.resized(x), rows @ x @ cols.t(), atol=1e-5)


def test_a_256_px_model_reads_stage_3_from_the_main_backbone(tmp_path):
    """At 256 px the branch's frame is the model's, so with the same weights (the package's) its stages 0-3 are the
    main backbone's: the shared trunk gives the same score, and the graph runs the stem once."""
    onnx = pytest.importorskip("onnx")
    from protospect.export.onnx_export import onnx_from_model  # noqa: PLC0415

    cfg = {**GLOBAL, "input_size": 256, "grid": 32, "bins": [32, 16, 8]}
    cfg.pop("backbone_weights")
    m = fit(parts(size=256), "edge", seed=0, config_overrides=cfg, progress=False)
    gb = m.global_branch
    assert gb._trunk and gb._trunk[0] is m.features.backbone
    x = to_tensor(parts(3, size=256, seed=7), m.meta["mean"], m.meta["std"])
    with torch.no_grad():
        shared = gb.scores(x)
        gb._trunk = ()  # the branch's own copy, stem to stage 4
        own = gb.scores(x)
        gb.share_trunk(m.features.backbone)
        m.global_branch = None
        convs_map = _conv_count(onnx, onnx_from_model(m, m.meta, m.calibration, tmp_path / "map.onnx").path)
        m.global_branch = gb
    assert torch.allclose(shared, own, atol=1e-6)
    assert_onnx_parity(m, tmp_path / "shared.onnx", seeds=(3,), score_units=lambda v: max(1.0, abs(v)), size=256)
    stage4 = gb.backbone.body.blocks[gb.backbone.body.tap_after[0] + 1:]
    # the branch adds its stage 4 convolutions and nothing else
    assert _conv_count(onnx, tmp_path / "shared.onnx") == convs_map + sum(isinstance(mod, torch.nn.Conv2d) for mod in stage4.modules())
    # and the artifact does not change: the branch keeps its own stages 0-3, so either version reads it
    assert any(k.startswith("global_branch.backbone.body.conv_stem") for k in m.state_dict())


def test_other_sizes_keep_the_branch_own_trunk(global_model):
    assert global_model.cfg.hw == (64, 64) and not global_model.global_branch._trunk


def _conv_count(onnx, path):
    return sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)
