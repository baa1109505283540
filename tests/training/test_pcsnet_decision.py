"""PCSNet's image-level decision (scoring.py): nn branch, normal statistics, fusion, export, round trip."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from protospect.errors import ConfigError  # noqa: E402
from protospect.training.methods.pcsnet import build, fit  # noqa: E402
from protospect.training.methods.pcsnet.presets import native_geometry, resolve_config  # noqa: E402
from protospect.training.methods.pcsnet.scoring import ForegroundMask, MapFusion  # noqa: E402
from protospect.training.methods.pcsnet.train_loop import to_tensor  # noqa: E402

from tests.training.test_pcsnet import TINY, parts  # noqa: E402

pytestmark = pytest.mark.torch

FUSED = {**TINY, "fusion": "pcsnet+nn", "normalise": "position", "image_score": "max", "nn_rotations": 1}


@pytest.fixture(scope="module")
def fused_model():
    return fit(parts(), "edge", seed=0, config_overrides=FUSED, progress=False)


def test_position_statistics_silence_a_spot_that_is_always_hot():
    """A place every normal map is hot at stops deciding; a new hot spot elsewhere does."""
    rng = np.random.default_rng(0)
    normal = torch.from_numpy(rng.normal(0, 0.1, size=(8, 1, 16, 16)).astype(np.float32))
    normal[:, :, 2, 2] += 3.0  # e.g. a screw hole every good part has
    mf = MapFusion(1, 16, "position", "max", 0.01)
    mf.set_statistics([normal])
    good = torch.from_numpy(rng.normal(0, 0.1, size=(1, 1, 16, 16)).astype(np.float32))
    good[:, :, 2, 2] += 3.0
    bad = good.clone()
    bad[:, :, 10, 10] += 1.5  # a defect weaker than the hole, where normals are quiet
    s_good, s_bad = (mf.score(mf.fuse([m])).item() for m in (good, bad))
    assert s_bad > s_good + 3.0
    plain = MapFusion(1, 16, "none", "max", 0.01)
    assert plain.score(plain.fuse([bad])).item() == pytest.approx(plain.score(plain.fuse([good])).item())


def test_top_fraction_score_is_the_mean_of_the_largest_pixels():
    mf = MapFusion(1, 10, "none", "top", 0.05)  # 5 of 100 pixels
    m = torch.zeros(1, 1, 10, 10)
    m.view(-1)[:5] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    m.view(-1)[50] = -7.0
    assert mf.score(m).item() == pytest.approx(3.0)


def test_peak_score_ignores_broad_heat_and_keeps_a_small_peak():
    """Unseen content heats a large area (docs/decision.md); a defect is a small peak above its surroundings."""
    mf = MapFusion(1, 128, "none", "peak", 0.01)
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    broad = torch.exp(-((yy - 64) ** 2 + (xx - 64) ** 2) / (2 * 25.0 ** 2))[None, None]  # smooth, image-wide
    small = torch.zeros(1, 1, 128, 128)
    small[..., 60:66, 60:66] = 0.6  # a defect, weaker than the broad heat
    plain = MapFusion(1, 128, "none", "max", 0.01)
    assert plain.score(broad).item() > plain.score(small).item()
    assert mf.score(small).item() > 2 * mf.score(broad).item()


def test_fused_forward_is_the_fusion_of_the_branches(fused_model):
    m = fused_model
    x = to_tensor(parts(2, seed=5), m.meta["mean"], m.meta["std"])
    with torch.no_grad():
        out = m(x)
        maps = m.branch_maps(x)
        pcs, nn_map = maps
        expected = (pcs - m.fusion.mean[0]) / m.fusion.std[0] + (nn_map - m.fusion.mean[1]) / m.fusion.std[1]
    assert len(maps) == 2 and out.anomaly_map.shape == (2, 1, 64, 64)
    assert torch.allclose(out.anomaly_map, expected, atol=1e-5)
    assert torch.allclose(out.image_score, expected.flatten(1).amax(1), atol=1e-5)


def test_nn_bank_holds_every_patch_of_every_shot(fused_model):
    grid_cells = 8 * 8  # Lite0 stage 2 at 64 px
    assert tuple(fused_model.nn.bank.shape) == (4 * grid_cells, 40 + 112)
    assert fused_model.meta["nn_bank_shape"] == [4 * grid_cells, 152]


def test_nn_statistics_come_from_shots_left_out_of_the_bank(fused_model):
    """Scored against a bank that contains them, the shots' nn distances are ~0 (GEMM rounding); the statistics are not."""
    m = fused_model
    with torch.no_grad():
        own = m.branch_maps(to_tensor(parts(), m.meta["mean"], m.meta["std"]))[1]
    assert float(m.fusion.mean[1].mean()) > 10 * float(own.mean())


def test_rotated_bank_recognises_a_rotated_part():
    imgs = parts(3, seed=1)
    cfg = {**FUSED, "normalise": "global"}
    plain = fit(imgs, "edge", seed=0, config_overrides=cfg, progress=False)
    rotated = fit(imgs, "edge", seed=0, config_overrides={**cfg, "nn_rotations": 4}, progress=False)
    assert rotated.nn.bank.shape[0] == 4 * plain.nn.bank.shape[0]
    turned = [np.ascontiguousarray(np.rot90(imgs[0], 1))]
    with torch.no_grad():
        d_plain = plain.branch_maps(to_tensor(turned, plain.meta["mean"], plain.meta["std"]))[1].max()
        d_rot = rotated.branch_maps(to_tensor(turned, rotated.meta["mean"], rotated.meta["std"]))[1].max()
    assert float(d_rot) < 0.5 * float(d_plain)


def assert_round_trip(model):
    """build(meta) + the state_dict give the same map and image score, bit for bit (banks, statistics, branches)."""
    rebuilt = build(model.meta)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    x = to_tensor(parts(2, seed=9), model.meta["mean"], model.meta["std"])
    with torch.no_grad():
        a, b = model(x), rebuilt(x)
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.image_score, b.image_score)


def test_round_trip_restores_banks_and_statistics(fused_model):
    assert_round_trip(fused_model)


def test_split_export_refuses_a_fused_model(fused_model):
    with pytest.raises(ConfigError, match="split export"):
        fused_model.split()


def assert_onnx_parity(model, path, seeds=(3,), score_units=None, size=64):
    """The exported graph's map within 1e-4 of the map's range and its image score within 1e-4 of ``score_units``
    (default: the map's range; a standardised score passes max(1, |score|)), with the same OK / NG, per frame."""
    ort = pytest.importorskip("onnxruntime")
    from protospect.export.onnx_export import onnx_from_model  # noqa: PLC0415

    onnx_from_model(model, model.meta, model.calibration, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    thr = model.calibration["threshold"]
    for seed in seeds:
        img = parts(1, size=size, seed=seed)[0]
        got_map, got_score = sess.run(None, {"image": img[None]})
        with torch.no_grad():
            ref = model(to_tensor([img], model.meta["mean"], model.meta["std"]))
        span = float(ref.anomaly_map.max() - ref.anomaly_map.min())
        ref_score = float(ref.image_score[0])
        assert np.abs(got_map - ref.anomaly_map.numpy()).max() <= 1e-4 * span
        assert abs(float(got_score[0]) - ref_score) <= 1e-4 * (span if score_units is None else score_units(ref_score))
        assert (float(got_score[0]) >= thr) == (ref_score >= thr)


def test_fused_model_exports_with_parity(fused_model, tmp_path):
    assert_onnx_parity(fused_model, tmp_path / "fused.onnx")


def _object_grids(k=4, size=24, dim=6, seed=0, blob=True):
    """Patch-feature grids (k, dim, size, size): noise, plus a part (a shifted block with other features)."""
    rng = np.random.default_rng(seed)
    g = rng.normal(0, 0.2, size=(k, dim, size, size)).astype(np.float32)
    g[:, :, :2] += 1.5  # zero padding makes the outermost rows differ from everything else
    if blob:
        for i in range(k):
            o = 7 + i  # the part moves from shot to shot
            g[i, :3, o:o + 9, o - 2:o + 8] += 2.0
    return torch.from_numpy(g)


def test_foreground_mask_finds_the_part_and_switches_off_without_one():
    g = _object_grids()
    fm = ForegroundMask(g.shape[1])
    info = fm.fit(g)
    assert info["active"]
    mask = fm.grid_mask(g, dilate=False)[:, 0]
    for i in range(g.shape[0]):
        o = 7 + i
        assert mask[i, o:o + 9, o - 2:o + 8].mean() > 0.95  # the part is in
        assert mask[i, 3:5, 3:21].sum() == 0 and mask[i, 19:21, 3:21].sum() == 0  # background bands are out
    texture = ForegroundMask(g.shape[1])
    assert not texture.fit(_object_grids(blob=False))["active"]
    assert torch.equal(texture.grid_mask(g), torch.ones(4, 1, 24, 24))  # off: every pixel counts


def test_masked_score_ignores_heat_on_the_background():
    mf = MapFusion(1, 16, "none", "max", 0.01)
    m = torch.zeros(1, 1, 16, 16)
    m[..., 1, 1] = 5.0  # e.g. a corner the shots never showed
    m[..., 8, 8] = 1.0  # a defect on the part
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1.0
    assert mf.score(m).item() == pytest.approx(5.0)
    assert mf.score(m, mask).item() == pytest.approx(1.0)


def test_foreground_model_scores_the_part_only_and_exports_with_parity(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from protospect.export.onnx_export import onnx_from_model  # noqa: PLC0415

    m = fit(parts(), "edge", seed=0, config_overrides={**TINY, "foreground": "pca", "normalise": "global"}, progress=False)
    assert set(m.meta["foreground"]) == {"active", "cover", "border"}
    # force a mask that keeps the left half of the grid, to exercise the masked graph whatever the fit found
    fm = m.foreground
    fm.axis.zero_()
    fm.axis[0] = 1.0
    fm.centre.zero_()
    fm.threshold.fill_(-1e9)
    fm.active.fill_(1.0)
    img = parts(1, seed=3)[0]
    x = to_tensor([img], m.meta["mean"], m.meta["std"])
    with torch.no_grad():
        everything = m(x).image_score.item()
        fm.threshold.fill_(1e9)  # nothing is part: the score is the map's minimum
        out = m(x)
    assert out.image_score.item() == pytest.approx(out.anomaly_map.min().item())
    assert everything == pytest.approx(out.anomaly_map.max().item())
    fm.threshold.fill_(float(np.median(m.features.backbone(x)[0].detach().numpy()[0, 0])))  # a mixed mask
    path = tmp_path / "fg.onnx"
    onnx_from_model(m, m.meta, m.calibration, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got_map, got_score = sess.run(None, {"image": img[None]})
    with torch.no_grad():
        ref = m(x)
    span = float(ref.anomaly_map.max() - ref.anomaly_map.min())
    assert np.abs(got_map - ref.anomaly_map.numpy()).max() <= 1e-4 * span
    assert abs(float(got_score[0]) - float(ref.image_score[0])) <= 1e-4 * span


@pytest.mark.parametrize("side,size,grid,bins", [(640, 512, 64, (64, 32, 16, 8)), (384, 384, 48, (48, 24, 12, 6)),
                                                  (300, 256, 32, (32, 16, 8, 4)), (100, 64, 8, (8, 4, 2, 1))])
def test_native_geometry_follows_the_shots_pixels_and_never_upscales(side, size, grid, bins):
    cfg = native_geometry(resolve_config("edge"), side)
    assert (cfg.input_size, cfg.grid, cfg.bins) == (size, grid, bins)
    with pytest.raises(ConfigError, match="native"):  # WRN at 224 with a 64 grid: its strides do not scale to 512
        native_geometry(resolve_config("paper"), 640)


def test_a_size_alone_keeps_the_presets_cells_per_pixel():
    """Rule v3 made 512 px the edge default; `--size 256` is the old 256 px model (grid 32), an explicit grid stays."""
    assert resolve_config("edge").input_size == 512 and resolve_config("edge").grid == 64
    old = resolve_config("edge", {"input_size": 256})
    assert (old.grid, old.bins) == (32, (32, 16, 8, 4))
    assert resolve_config("edge", {"input_size": 256, "grid": 16, "bins": [16, 8]}).grid == 16


def test_native_geometry_model_is_trained_and_saved_at_the_shots_size(tmp_path):
    from protospect.training.artifact import load_artifact, save_artifact  # noqa: PLC0415

    shots = [np.ascontiguousarray(np.pad(p, ((40, 30), (70, 70), (0, 0)), mode="edge")) for p in parts()]  # 134 x 204
    model = fit(shots, "edge", seed=0, config_overrides={**TINY, "geometry": "native"}, progress=False)
    assert (model.meta["input_size"], model.cfg.grid, model.cfg.bins) == (128, 16, (16, 8, 4))
    with torch.no_grad():
        out = model(to_tensor([shots[0][:128, :128]], model.meta["mean"], model.meta["std"]))
    assert out.anomaly_map.shape[-2:] == (128, 128)
    save_artifact(model, tmp_path / "art", shots=["a.png"], seed=0, data={"root": "gen", "category": "part"})
    again, _ = load_artifact(tmp_path / "art")
    assert again.meta["input_size"] == 128 and again.cfg.grid == 16


@pytest.mark.parametrize("key,value", [("foreground", "otsu"), ("geometry", "square"),
                                       ("fusion", "nn"), ("normalise", "zscore"), ("image_score", "mean"), ("image_score", "median"),
                                       ("nn_rotations", 8), ("score_top_fraction", 0.0)])
def test_decision_config_errors(key, value):
    with pytest.raises(ConfigError, match=key):
        resolve_config("edge", {key: value})


def test_greedy_coreset_keeps_one_prototype_per_cluster():
    from protospect.training.methods.pcsnet.model import greedy_coreset  # noqa: PLC0415

    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], np.float32)
    x = torch.from_numpy(np.repeat(centres, 25, axis=0) + rng.normal(0, 0.1, (100, 2)).astype(np.float32))
    idx = greedy_coreset(x, 4)
    assert sorted(int(i) // 25 for i in idx) == [0, 1, 2, 3]  # four distinct clusters, one row each
    assert torch.equal(idx, greedy_coreset(x, 4))  # deterministic


def test_coreset_bank_is_a_subset_of_the_position_means_and_exports(tmp_path):
    """prototypes=M thins the bank (top-k cost grows with M); calibration, the split export and the
    artifact all carry the thinned bank."""
    ort = pytest.importorskip("onnxruntime")
    from protospect.export.onnx_export import onnx_from_model  # noqa: PLC0415
    from protospect.training.artifact import load_artifact, save_artifact  # noqa: PLC0415
    from tests.training.test_pcsnet import _untrained_shot_features  # noqa: PLC0415

    model = fit(parts(), "edge", seed=0, config_overrides={**TINY, "prototypes": 16}, progress=False)
    mean = _untrained_shot_features(parts()).mean(0)  # (64, D): one row per grid position
    assert model.bank.shape == (16, mean.shape[1])
    hits = ((model.bank[:, None] - mean[None]) ** 2).sum(-1).min(dim=1).values  # exact, not cdist's GEMM form
    assert float(hits.max()) < 1e-8 and len({tuple(r) for r in model.bank.tolist()}) == 16
    assert model.split()[1].shape == (16, mean.shape[1])
    save_artifact(model, tmp_path / "art", shots=["a.png"], seed=0, data={"root": "gen", "category": "part"})
    again, _ = load_artifact(tmp_path / "art")
    assert torch.equal(again.bank, model.bank)
    path = tmp_path / "m.onnx"
    onnx_from_model(model, model.meta, model.calibration, path)
    img = parts(1, seed=3)[0]
    got_map, _ = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": img[None]})
    with torch.no_grad():
        ref = model(to_tensor([img], model.meta["mean"], model.meta["std"])).anomaly_map.numpy()
    assert np.abs(got_map - ref).max() <= 1e-4 * float(ref.max() - ref.min())


def test_prototypes_cap_the_bank_and_are_at_least_k():
    with pytest.raises(ConfigError, match="prototypes"):
        resolve_config("edge", {**TINY, "prototypes": 2})  # k = 4
    assert resolve_config("edge", {**TINY, "prototypes": 65}).n_prototypes == 64  # grid 8: 64 positions
    assert resolve_config("edge", {**TINY, "prototypes": 0}).n_prototypes == 64


def test_edge_default_is_512_px_with_a_1024_prototype_coreset():
    """Rule v4 (docs/decision.md section 11): the 4,096 grid positions of 512 px thinned to 1,024 prototypes;
    at 256 px the grid has exactly 1,024 positions, so `--size 256` stays the old model."""
    cfg = resolve_config("edge")
    assert (cfg.input_size, cfg.grid, cfg.n_prototypes) == (512, 64, 1024)
    assert resolve_config("edge", {"input_size": 256}).n_prototypes == 32 * 32
    assert resolve_config("edge", {"prototypes": 0}).n_prototypes == 4096
