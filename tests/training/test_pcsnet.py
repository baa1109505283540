"""PCSNet at toy sizes: shapes, the fixed losses, the bank, frozen BatchNorm, training, round trip."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from protospect.errors import ConfigError, DataError  # noqa: E402
from protospect.training.methods import get_method  # noqa: E402
from protospect.training.methods.pcsnet import build, fit  # noqa: E402
from protospect.training.methods.pcsnet.losses import PCSNetLoss, grid_cell_mask  # noqa: E402
from protospect.training.methods.pcsnet.model import as_queries  # noqa: E402
from protospect.training.methods.pcsnet.presets import resolve_config  # noqa: E402
from protospect.training.methods.pcsnet.train_loop import backbone_features, to_tensor  # noqa: E402

pytestmark = pytest.mark.torch

# Lite0 with random weights at 64 px: stage 2 is 8x8, stage 3 4x4 -> an 8x8 grid (M = 64).
TINY = {"input_size": 64, "grid": 8, "bins": [8, 4, 2], "k": 4, "guide_dim": 8, "cas_width": 8,
        "steps": 4, "batch_size": 2, "backbone_weights": "random", "pdc_topk": 5, "calib_augments": 2, "calib_anomalies": 1}


def parts(n=4, size=64, seed=0):
    """Generated good parts: a textured square on a plain background, slightly moved per image."""
    rng = np.random.default_rng(seed)
    imgs = []
    for _ in range(n):
        img = np.full((size, size, 3), 40, np.uint8)
        o, w = int(rng.integers(size // 8, size // 8 + 6)), size * 9 // 16
        img[o:o + w, o:o + w] = rng.integers(120, 230, size=(w, w, 3))
        imgs.append(img)
    return imgs


@pytest.fixture(scope="module")
def tiny_model():
    return fit(parts(), "edge", seed=0, config_overrides=TINY, progress=False)


def test_registry_exposes_fit_and_build():
    m = get_method("pcsnet")
    assert callable(m.fit) and callable(m.build) and set(m.PRESETS) >= {"edge", "paper"}


def test_forward_shapes_and_score_is_map_max(tiny_model):
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        out = tiny_model(x)
    assert out.anomaly_map.shape == (3, 1, 64, 64) and out.anomaly_map.dtype == torch.float32
    assert out.image_score.shape == (3,)
    torch.testing.assert_close(out.image_score, out.anomaly_map.flatten(1).amax(1))
    assert not tiny_model.training


def test_output_size_follows_input_size(tiny_model):
    # The head upsamples to the size it is given, never a hard-coded one (D13).
    cfg = dict(TINY, input_size=128, grid=16, bins=[16, 8, 4])
    m = build({**tiny_model.meta, "config": {**tiny_model.meta["config"], **cfg}})
    with torch.no_grad():
        assert m(torch.randn(1, 3, 128, 128)).anomaly_map.shape == (1, 1, 128, 128)


def test_meta_and_calibration(tiny_model):
    meta = tiny_model.meta
    assert meta["method"] == "pcsnet" and meta["preset"] == "edge" and meta["input_size"] == 64
    assert meta["backbone"] == "efficientnet_lite0" and len(meta["mean"]) == 3 and len(meta["std"]) == 3
    cal = tiny_model.calibration
    lo, hi = cal["map_range"]
    assert lo < hi and np.isfinite(cal["threshold"])
    assert cal["threshold"] > max(cal["normal_scores"])  # no calibration normal is flagged NG


def test_threshold_rule():
    from protospect.training.methods.pcsnet.threshold import choose_threshold

    normal = np.array([0.1, 0.2, 0.3])
    # separable: halfway between the top normal (0.3) and the pseudo anomalies' lower quartile (0.5)
    assert choose_threshold(normal, np.array([0.5, 0.5, 0.9, 1.0, 1.1])) == pytest.approx(0.4)
    # overlapping: just above the top normal, never inside the normal range
    t = choose_threshold(normal, np.array([0.15, 0.25, 0.35]))
    assert 0.3 < t < 0.31


def _untrained_shot_features(imgs):
    """Per-shot PFA features of the model fit() starts from (same seed, same initial weights)."""
    from protospect.training.methods import pcsnet
    from protospect.training.methods.pcsnet.model import PCSNetModel
    from protospect.training.methods.pcsnet.train_loop import seed_everything
    cfg = resolve_config("edge", TINY)
    seed_everything(0)  # as fit() does before it builds the model
    backbone = pcsnet._create_backbone(cfg, cfg.backbone_weights)
    untrained = PCSNetModel(backbone, cfg, pcsnet._meta(cfg, "edge", backbone.spec)).eval()
    x = to_tensor(imgs, untrained.meta["mean"], untrained.meta["std"])
    with torch.no_grad():
        phi, _ = untrained.features.from_backbone(backbone_features(untrained, x))
    return as_queries(phi)


def test_bank_is_per_position_mean_of_the_untrained_shots(tiny_model):
    imgs = parts()
    per_shot = _untrained_shot_features(imgs)
    assert tiny_model.bank.shape == (64, tiny_model.features.dim) == per_shot.shape[1:]
    # The bank is built once from the *untrained* PFA (PCSNet's _init_centroid) and frozen.
    torch.testing.assert_close(tiny_model.bank, per_shot.mean(0))
    assert not tiny_model.bank.requires_grad
    # ... and training moved the PFA, so the trained features' mean is another bank.
    x = to_tensor(imgs, tiny_model.meta["mean"], tiny_model.meta["std"])
    with torch.no_grad():
        phi, _ = tiny_model.features.from_backbone(backbone_features(tiny_model, x))
    assert not torch.allclose(as_queries(phi).mean(0), tiny_model.bank, atol=1e-4)


def test_calibration_leaves_each_shot_out_of_the_deployed_bank(monkeypatch):
    """Each normal calibration score uses the deployed bank without that shot: the mean of the other
    shots' untrained-PFA features (it used to be rebuilt from the trained PFA: another bank)."""
    from protospect.training.methods.pcsnet import threshold
    imgs = parts()
    per_shot = _untrained_shot_features(imgs)
    banks, real_score, real_held_out = [], threshold._score, threshold._held_out_maps

    def recording_score(model, images):
        banks.append(model.bank.clone())
        return real_score(model, images)

    def recording_held_out(model, x, nn_bank, feats):
        banks.append(model.bank.clone())
        return real_held_out(model, x, nn_bank, feats)

    monkeypatch.setattr(threshold, "_score", recording_score)
    monkeypatch.setattr(threshold, "_held_out_maps", recording_held_out)
    model = fit(imgs, "edge", seed=0, config_overrides=TINY, progress=False)
    k = len(imgs)
    assert len(banks) == k + 1  # K leave-one-out normal passes, then the pseudo anomalies on the full bank
    for i in range(k):
        torch.testing.assert_close(banks[i], (per_shot.sum(0) - per_shot[i]) / (k - 1))
    torch.testing.assert_close(banks[k], model.bank)
    with pytest.raises(ValueError, match="not the features the bank was built from"):
        threshold.calibrate(model, imgs, 0, per_shot[:, :, :1].expand_as(per_shot).clone())


def test_afs_loss_moves_with_pfa_weights():
    """D1 regression: L_AFS must depend on the masked pixels' distances, not only on r."""
    cfg = resolve_config("edge", TINY)
    m = build({"method": "pcsnet", "preset": "edge", "mean": [0.5] * 3, "std": [0.25] * 3,
               "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.__dict__.items()}})
    crit = PCSNetLoss(resolve_config("edge", dict(TINY, alpha=50.0)))  # wide margin: hinge active
    x = to_tensor(parts(2), [0.5] * 3, [0.25] * 3)
    feats = backbone_features(m, x)
    m.set_bank_from_backbone(feats)
    masks = torch.zeros(2, 1, 64, 64)
    masks[:, :, 8:40, 16:48] = 1
    cells = grid_cell_mask(masks, 8, 0.5)
    assert cells.sum() == 2 * 16

    def afs():
        phi, _ = m.features.from_backbone(feats)
        return crit.afs(m.knn(as_queries(phi)), cells)

    loss = afs()
    loss.backward()
    w = m.features.pfa.adapters[0].conv.weight
    assert w.grad is not None and w.grad.abs().sum() > 0
    with torch.no_grad():
        w.mul_(1.5)
    assert abs(float(afs()) - float(loss)) > 1e-3 * abs(float(loss))


def test_pdc_is_a_ranking_loss():
    crit = PCSNetLoss(resolve_config("edge", TINY))
    sq = torch.zeros(2, 10, 4)
    sq[1] = 4.0  # the anomalous image is farther: loss small
    labels = torch.tensor([0, 1])
    good = float(crit.pdc(sq, labels))
    bad = float(crit.pdc(sq, torch.tensor([1, 0])))
    assert good < 0.2 < bad
    assert abs(good - float(torch.nn.functional.softplus(torch.tensor(-2.0)))) < 1e-4  # B=2: softplus(s_n - s_a)


def test_backbone_batchnorm_untouched_by_fit():
    before = {}
    model_holder = {}

    import protospect.training.methods.pcsnet as pcsnet

    orig = pcsnet._create_backbone

    def spy(cfg, weights):
        bb = orig(cfg, weights)
        for name, buf in bb.named_buffers():
            before[name] = buf.clone()
        model_holder["bb"] = bb
        return bb

    pcsnet._create_backbone = spy
    try:
        fit(parts(), "edge", seed=0, config_overrides=TINY, progress=False)
    finally:
        pcsnet._create_backbone = orig
    after = dict(model_holder["bb"].named_buffers())
    assert any("running_mean" in n for n in before)
    for name, buf in before.items():
        assert torch.equal(buf, after[name]), f"backbone buffer {name} changed during fit"


@pytest.mark.slow
def test_fit_lowers_the_loss():
    model = fit(parts(), "edge", seed=1, config_overrides=dict(TINY, steps=30), progress=False)
    total = [s["total"] for s in model.train_log.losses]
    assert np.mean(total[-5:]) < 0.8 * np.mean(total[:5])


def test_deterministic_for_a_seed():
    a = fit(parts(), "edge", seed=3, config_overrides=TINY, progress=False)
    b = fit(parts(), "edge", seed=3, config_overrides=TINY, progress=False)
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(ta, tb), name
    assert a.calibration == b.calibration


def test_build_and_state_dict_round_trip(tiny_model, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(tiny_model.state_dict(), path)
    rebuilt = build(tiny_model.meta)
    rebuilt.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = tiny_model(x), rebuilt(x)
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map)
    torch.testing.assert_close(a.image_score, b.image_score)


def test_split_parts_reproduce_forward(tiny_model):
    features, bank, k, head = tiny_model.split()
    assert bank.shape == (64, tiny_model.features.dim) and k == 4
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        q, guide = features(x)
        assert q.shape == (1, 64, tiny_model.features.dim) and guide.shape == (1, 8, 8, 8)
        from protospect.training.proto_topk import knn_sqdist

        out = head(knn_sqdist(q, bank, k)[0], guide)
        ref = tiny_model(x)
    torch.testing.assert_close(out.anomaly_map, ref.anomaly_map)


def test_exports_to_onnx(tiny_model, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "pcsnet.onnx"
    x = torch.randn(1, 3, 64, 64)
    torch.onnx.export(tiny_model, (x,), str(path), input_names=["x"],
                      output_names=["anomaly_map", "image_score"], dynamo=False)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "TopK" in ops and "AveragePool" in ops
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    with torch.no_grad():
        ref = tiny_model(x)
    np.testing.assert_allclose(got[0], ref.anomaly_map.numpy(), rtol=1e-3, atol=1e-4)


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown config key"):
        resolve_config("edge", {"stepz": 3})
    with pytest.raises(ConfigError, match="do not divide"):
        resolve_config("edge", {"bins": [32, 15]})
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config("tiny")
    with pytest.raises(ConfigError, match="not a pcsnet"):
        build({"method": "patchcore"})


def test_bad_shots_are_data_errors():
    with pytest.raises(DataError, match="no good images"):
        fit([], "edge", config_overrides=TINY, progress=False)
    with pytest.raises(DataError, match="uint8 RGB"):
        fit([np.zeros((64, 64), np.uint8)], "edge", config_overrides=TINY, progress=False)


@pytest.mark.slow
def test_paper_preset_shapes_with_random_weights():
    """The published sizes (WRN-50 layers 1-3, D = 1792, CAS width 896) at a tiny input."""
    over = {"input_size": 32, "grid": 8, "bins": [8, 4, 2, 1], "k": 8, "steps": 1, "batch_size": 1,
            "backbone_weights": "random", "pdc_topk": 5, "calib_augments": 1, "calib_anomalies": 1}
    model = fit(parts(1, size=32), "paper", seed=0, config_overrides=over, progress=False)
    assert model.features.dim == 1792 and model.bank.shape == (64, 1792)
    assert model.head.cas.fuse[0].out_channels == 896
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out.anomaly_map.shape == (1, 1, 32, 32)
    assert np.isfinite(model.train_log.losses[0]["total"])


def test_failed_pseudo_anomaly_draws_do_not_starve_later_steps(monkeypatch):
    """The give-up counter is per draw: with 30 % of NSA draws failing, every step still gets its
    pseudo anomalies (a run-wide counter gave up on every later draw after 40 failures in total)."""
    from protospect.training.methods.pcsnet import train_loop
    rng = np.random.default_rng(0)

    def flaky(img, rng_, params, obj):
        return None if rng.random() < 0.3 else (img, np.ones(img.shape[:2], np.uint8))

    monkeypatch.setattr(train_loop, "make_pseudo_anomaly", flaky)
    source = train_loop.PseudoAnomalySource(parts(), None, np.random.default_rng(1))
    assert all(len(source.draw(2)[0]) == 2 for _ in range(200))
    assert source.dropped > 40  # the old run-wide limit (20 x n) was passed, and nothing starved
