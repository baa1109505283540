"""PatchCore on generated parts: shapes, detection, split == forward, calibration from normal images only."""
import numpy as np
import pytest
import torch

from protospect.errors import ConfigError
from protospect.training.calibrate import augment_views, calibration_from_normal, holdout_sets, to_model_input
from protospect.training.methods import get_method
from protospect.training.methods import patchcore

from mvtec_tiny import add_defect, part_image

pytestmark = pytest.mark.torch
S = 64
OVERRIDES = {"input_size": S}


@pytest.fixture(scope="module")
def shots():
    rng = np.random.default_rng(0)
    return [part_image(rng, S) for _ in range(3)]


@pytest.fixture(scope="module")
def model(shots):
    torch.set_num_threads(2)
    return get_method("patchcore").fit(shots, preset="edge", seed=0, config_overrides=OVERRIDES)


def _x(model, images):
    return to_model_input(images, S, model.meta["mean"], model.meta["std"])


def test_outputs_meta_and_bank(model, shots):
    with torch.no_grad():
        out = model(_x(model, shots[:2]))
    assert out.anomaly_map.shape == (2, 1, S, S) and out.anomaly_map.dtype == torch.float32
    assert torch.allclose(out.image_score, out.anomaly_map.amax(dim=(1, 2, 3)))
    # Lite0 stages 2 (40 ch, /8) and 3 (112 ch, /16): D = 152 on an 8x8 grid, every patch of the 3 shots.
    assert model.meta["grid"] == [S // 8, S // 8]
    assert tuple(model.bank.shape) == (3 * (S // 8) ** 2, 152) == tuple(model.meta["bank_shape"])
    assert model.meta["method"] == "patchcore" and model.meta["input_size"] == S
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_shots_score_zero_and_defects_score_high(model, shots):
    rng = np.random.default_rng(5)
    good = [part_image(rng, S) for _ in range(3)]
    bad, masks = zip(*[add_defect(part_image(rng, S), rng) for _ in range(3)])
    with torch.no_grad():
        own = model(_x(model, shots)).image_score
        good_scores = model(_x(model, good)).image_score
        out_bad = model(_x(model, list(bad)))
    assert own.max() < 1e-2 * out_bad.image_score.min()  # a shot is its own nearest neighbour
    assert good_scores.max() < out_bad.image_score.min()
    for amap, mask in zip(out_bad.anomaly_map[:, 0].numpy(), masks):
        # At S=64 the grid is 8x8 (stage 3: 4x4), so localisation is coarse: compare inside vs outside.
        assert amap[mask > 0].mean() > amap[mask == 0].mean()


def test_split_reproduces_forward(model, shots):
    features, bank, k, head = model.split()
    x = _x(model, [add_defect(part_image(np.random.default_rng(9), S), np.random.default_rng(9))[0]])
    with torch.no_grad():
        q = features(x)
        assert q.shape == (1, (S // 8) ** 2, 152) and k == 1
        brute = torch.cdist(q[0].double(), bank.double()).pow(2).min(dim=1).values.float()  # independent NN search
        split_out = head(brute.view(1, -1, 1))
        full = model(x)
    assert torch.allclose(split_out.anomaly_map, full.anomaly_map, rtol=1e-4, atol=1e-3)
    assert torch.allclose(split_out.image_score, full.image_score, rtol=1e-4, atol=1e-3)


def test_calibration_leave_one_out(model):
    cal = model.calibration
    assert len(cal["normal_scores"]) == 3 and cal["holdout"] == "leave-one-out over the shots"
    assert cal["threshold"] == pytest.approx(max(cal["normal_scores"]))
    lo, hi = cal["map_range"]
    assert lo < cal["threshold"] < hi and (lo + hi) / 2 == pytest.approx(cal["threshold"])


def test_single_shot_calibrates_on_augmented_views(shots):
    m = get_method("patchcore").fit(shots[:1], preset="edge", seed=0, config_overrides={**OVERRIDES, "calibration_views": 4})
    assert len(m.calibration["normal_scores"]) == 4 and "augmented" in m.calibration["holdout"]
    assert m.calibration["threshold"] > 0


def test_calibration_helpers():
    img = part_image(np.random.default_rng(1), 48)
    views = augment_views(img, 3, seed=7)
    assert len(views) == 3 and all(v.shape == img.shape and v.dtype == np.uint8 for v in views)
    assert all(np.array_equal(a, b) for a, b in zip(views, augment_views(img, 3, seed=7)))  # deterministic per seed
    assert not np.array_equal(views[0], img)
    sets = holdout_sets([img, img + 1, img + 2], seed=0, n_views=4)
    assert [len(b) for b, _ in sets] == [2, 2, 2] and all(len(q) == 1 for _, q in sets)
    cal = calibration_from_normal(np.array([1.0, 3.0, 2.0]), np.zeros((3, 4, 4)) + 0.5, margin=1.2)
    assert cal["threshold"] == pytest.approx(3.6) and cal["map_range"] == pytest.approx([0.5, 6.7])


def test_config_errors():
    with pytest.raises(ConfigError, match="preset"):
        patchcore.resolve_config("huge")
    with pytest.raises(ConfigError, match="patchcore: unknown config key"):
        patchcore.resolve_config("edge", {"sigmaa": 2})
    assert patchcore.resolve_config("edge", {"sigma": None}).sigma == 4.0  # None keeps the preset's value
    assert patchcore.resolve_config("paper").backbone == "wide_resnet50_2"


def test_paper_preset_builds_with_random_weights(shots):
    m = get_method("patchcore").fit(shots[:2], preset="paper", seed=0,
                                    config_overrides={"input_size": S, "backbone_weights": "random"})
    assert tuple(m.bank.shape) == (2 * (S // 8) ** 2, 512 + 1024)  # WRN-50 layer2 + layer3
    with torch.no_grad():
        out = m(_x(m, shots[2:]))
    assert out.anomaly_map.shape == (1, 1, S, S) and torch.isfinite(out.anomaly_map).all()
