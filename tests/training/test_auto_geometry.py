"""geometry=auto (rule v5, docs/decision.md section 14): planted logical defects, the held-out draw, the choice."""
import numpy as np
import pytest

from protospect.training.data import holdout_good
from protospect.training.logical_defects import erase, logical_sets, misplace, small_nsa_defects, transplant, warp, warp_defects
from protospect.training.methods.pcsnet.auto_geometry import planted

from tests.training.test_pcsnet import TINY, parts

AUTO = {**TINY, "input_size": 128, "grid": 16, "bins": [16, 8, 4], "auto_small": 64, "geometry": "auto"}


def _scene(size=128, seed=0):
    """A part with distinct regions (so a moved rectangle is visibly other content) on a plain background."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 30, np.uint8)
    q = size // 8
    img[q:size - q, q:size - q] = (200, 180, 40)
    img[2 * q:4 * q, 2 * q:6 * q] = rng.integers(0, 255, size=(2 * q, 4 * q, 3))  # a "label"
    return img


@pytest.mark.parametrize("fn", [misplace, erase])
def test_logical_defects_change_only_the_marked_rectangle(fn):
    img = _scene()
    out, mask = fn(img, np.random.default_rng(3), None)
    changed = np.abs(out.astype(int) - img.astype(int)).max(-1) > 0
    assert mask.any() and changed.any()
    assert not (changed & ~mask.astype(bool)).any()  # nothing outside the mask moves
    ys, xs = np.nonzero(mask)
    frac = (np.ptp(ys) + 1) / img.shape[0], (np.ptp(xs) + 1) / img.shape[1]
    lo, hi = (0.15, 0.30) if fn is misplace else (0.10, 0.25)
    assert all(lo - 0.05 <= f <= hi + 0.01 for f in frac)  # sizes are fractions of the side


def test_logical_sets_are_reproducible_and_scale_with_the_image():
    small = [_scene(128, s) for s in range(4)]
    large = [np.repeat(np.repeat(im, 2, 0), 2, 1) for im in small]
    a, b, c = logical_sets(small, None), logical_sets(small, None), logical_sets(large, None)
    for kind in ("misplace", "erase"):
        assert len(a[kind]) == 4
        assert all(np.array_equal(x[0], y[0]) for x, y in zip(a[kind], b[kind]))
        fs, fl = np.mean([m.mean() for _, m in a[kind]]), np.mean([m.mean() for _, m in c[kind]])
        assert fl == pytest.approx(fs, rel=0.2)  # the same defects, relative to the image, at twice the size
    assert len(small_nsa_defects(small, None)) == 4


def test_transplant_pastes_the_other_parts_pixels_in_place_and_skips_identical_parts():
    img, donor = _scene(128, 0), _scene(128, 1)  # the same part, another "label"
    out, mask = transplant(img, donor, np.random.default_rng(5))
    m = mask.astype(bool)
    changed = np.abs(out.astype(int) - img.astype(int)).max(-1) > 0
    assert changed.any() and not (changed & ~m).any()  # only inside the rectangle
    ys, xs = np.nonzero(m)
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2  # the centre, inside the feathered rim
    assert np.abs(out[cy, cx].astype(int) - donor[cy, cx].astype(int)).max() <= 1  # the donor's pixels, same place
    inside = np.abs(out[m].astype(int) - donor[m].astype(int)).mean()
    assert inside < 0.5 * np.abs(img[m].astype(int) - donor[m].astype(int)).mean()  # mostly the donor's content
    assert transplant(img, img.copy(), np.random.default_rng(5)) is None  # nothing differs: no defect
    big = np.repeat(np.repeat(donor, 2, 0), 2, 1)  # a donor at other pixels is resized to the image's
    assert transplant(img, big, np.random.default_rng(5))[0].shape == img.shape
    sets = logical_sets([_scene(128, s) for s in range(4)], None)
    assert len(sets["transplant"]) == 4 and logical_sets([img], None)["transplant"] == []  # needs a second image


def test_warp_moves_a_band_smoothly_without_new_content_or_folds():
    size = 128
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    img = np.stack([np.repeat(ramp[:, None], size, 1), np.repeat(ramp[None, :], size, 0),
                    np.full((size, size), 90, np.float32)], -1).astype(np.uint8)  # rows in red, columns in green
    for seed in range(6):
        out, mask = warp(img, np.random.default_rng(seed))
        m = mask.astype(bool)
        assert out.shape == img.shape and 0 < m.mean() < 1
        assert np.abs(out.astype(int) - img.astype(int))[m].mean() >= 5  # the band really moved
        assert np.array_equal(out[..., 2], img[..., 2])  # nothing foreign pasted in: a flat channel stays flat
        for ch, ax in ((0, 0), (1, 1)):  # each ramp stays monotonic along its own axis: the remap folds nothing
            prof = out[..., ch].astype(int).take(size // 2, axis=1 - ax)
            assert (np.diff(prof) >= -1).all()
    assert warp(np.full((64, 64, 3), 77, np.uint8), np.random.default_rng(0)) is None  # a flat part hides any shift


def test_asking_for_warp_leaves_the_other_kinds_as_they_were():
    imgs = [_scene(96, s) for s in range(3)]
    old, new = planted(imgs, None), planted(imgs, None, ("nsa_small", "misplace", "erase", "transplant", "warp"))
    for kind, pairs in old.items():
        assert all(np.array_equal(a[0], b[0]) for a, b in zip(pairs, new[kind]))
    assert len(new["warp"]) == 3 and all(np.array_equal(a[0], b[0]) for a, b in zip(new["warp"], warp_defects(imgs)))
    alone = planted(imgs, None, ("warp",))  # what the image branch's choice plants after geometry=auto's kinds
    assert list(alone) == ["warp"] and all(np.array_equal(a[0], b[0]) for a, b in zip(alone["warp"], new["warp"]))


def test_holdout_good_draws_non_shots_like_the_study(tmp_path):
    train = [tmp_path / f"{i:03d}.png" for i in range(30)]
    shots = train[5:9]
    held = holdout_good(train, shots, seed=2, n=20)
    assert len(held) == 20 and not set(held) & set(shots)
    rest = [p for p in train if p not in set(shots)]
    assert held == [rest[i] for i in np.random.default_rng(3).permutation(len(rest))[:20]]  # decision_study's draw
    assert held != holdout_good(train, shots, seed=0, n=20)


def test_choose_keeps_the_cheap_model_unless_the_large_one_wins_by_the_margin():
    from protospect.training.methods.pcsnet.auto_geometry import MARGIN, choose

    assert choose({"mean": 90.0}, {"mean": 90.0 + MARGIN}) == "small"
    assert choose({"mean": 90.0}, {"mean": 90.1 + MARGIN}) == "large"
    assert choose({"mean": 95.0}, {"mean": 80.0}) == "small"


@pytest.mark.torch
def test_auto_trains_both_sizes_and_keeps_the_one_it_records(tmp_path):
    pytest.importorskip("torch")
    from protospect.training.artifact import load_artifact, save_artifact
    from protospect.training.methods.pcsnet import fit
    from protospect.training.methods.pcsnet.auto_geometry import choose

    shots = parts(4, size=128, seed=0)
    holdout = parts(10, size=128, seed=1)
    model = fit(shots, "edge", seed=0, config_overrides=AUTO, holdout=holdout, progress=False)
    rec = model.meta["geometry_choice"]
    assert rec["n_holdout"] == 10 and set(rec["scores"]) == {"small", "large"}
    assert rec["scores"]["small"]["input_size"] == 64 and rec["scores"]["large"]["input_size"] == 128
    for s in rec["scores"].values():
        assert set(s) >= {"nsa_small", "misplace", "erase", "transplant", "mean"} and 0 <= s["mean"] <= 100
        kinds = [s[k] for k in ("nsa_small", "misplace", "erase", "transplant")]
        assert s["mean"] == pytest.approx(np.mean(kinds), abs=1e-3)  # rule v11: the mean of four kinds
    assert rec["chosen"] == choose(rec["scores"]["small"], rec["scores"]["large"])
    assert model.cfg.input_size == rec["scores"][rec["chosen"]]["input_size"] == rec["input_size"]
    assert model.cfg.geometry == "fixed"  # the artifact rebuilds the chosen model as it is
    save_artifact(model, tmp_path / "art", shots=["a.png"], seed=0, data={"root": "gen", "category": "part"})
    again, _ = load_artifact(tmp_path / "art")
    assert again.meta["input_size"] == rec["input_size"] and again.meta["geometry_choice"] == rec


def test_upgrade_to_the_third_size_only_when_it_wins_by_the_margin():
    from protospect.training.methods.pcsnet.auto_geometry import MARGIN, upgrade

    scores = {"small": {"mean": 80.0}, "large": {"mean": 90.0}}
    assert upgrade(scores, "large") == "large"  # not trained: nothing to upgrade to
    assert upgrade({**scores, "xlarge": {"mean": 90.0 + MARGIN}}, "large") == "large"
    assert upgrade({**scores, "xlarge": {"mean": 90.1 + MARGIN}}, "large") == "xlarge"
    assert upgrade({**scores, "xlarge": {"mean": 85.0}}, "small") == "xlarge"  # measured against the choice so far


def test_the_third_size_never_upscales_a_shot():
    from protospect.training.methods.pcsnet.auto_geometry import xlarge_config
    from protospect.training.methods.pcsnet.presets import resolve_config

    cfg = resolve_config("edge", {**AUTO, "auto_large": 192, "geometry": "fixed"})
    big, why = xlarge_config(cfg, parts(2, size=192))
    assert why is None and big.input_size == 192 and big.grid == 24 and big.bins == (24, 12, 6)
    none, why = xlarge_config(cfg, [*parts(1, size=192), *parts(1, size=160)])
    assert none is None and "160 px" in why and "upscale" in why
    assert xlarge_config(resolve_config("edge", {**AUTO, "geometry": "fixed", "auto_large": 0}), parts(1, 192)) == (None, None)
    edge = resolve_config("edge")
    assert edge.auto_large == 640 and xlarge_config(edge, parts(1, size=512))[0] is None


@pytest.mark.torch
def test_auto_tries_the_third_size_where_the_shots_have_its_pixels(tmp_path):
    pytest.importorskip("torch")
    from protospect.training.methods.pcsnet import fit
    from protospect.training.methods.pcsnet.auto_geometry import choose, upgrade

    over = {**AUTO, "auto_large": 192}
    model = fit(parts(3, size=192, seed=0), "edge", seed=0, config_overrides=over, holdout=parts(8, size=192, seed=1),
                progress=False)
    rec = model.meta["geometry_choice"]
    assert set(rec["scores"]) == {"small", "large", "xlarge"} and rec["scores"]["xlarge"]["input_size"] == 192
    assert rec["chosen"] == upgrade(rec["scores"], choose(rec["scores"]["small"], rec["scores"]["large"]))
    assert model.cfg.input_size == rec["scores"][rec["chosen"]]["input_size"]
    # 128 px shots: the 192 px model would upscale them, so it is not trained and the record says why
    model = fit(parts(3, size=128, seed=0), "edge", seed=0, config_overrides=over, holdout=parts(8, size=128, seed=1),
                progress=False)
    rec = model.meta["geometry_choice"]
    assert set(rec["scores"]) == {"small", "large"} and "128 px" in rec["xlarge"]


@pytest.mark.torch
def test_auto_without_enough_held_out_images_keeps_the_presets_size_and_says_why():
    pytest.importorskip("torch")
    from protospect.errors import DataError
    from protospect.training.methods.pcsnet import fit

    model = fit(parts(2, size=128), "edge", seed=0, config_overrides=AUTO, holdout=parts(3, size=128, seed=5), progress=False)
    assert model.cfg.input_size == 128 and "3 held-out good images" in model.meta["geometry_choice"]["reason"]
    with pytest.raises(DataError, match="held-out good image 1"):
        fit(parts(2, size=128), "edge", seed=0, config_overrides=AUTO, holdout=[parts(1, 128)[0], np.zeros((9, 9), np.uint8)])


@pytest.mark.torch
def test_the_image_branch_choice_reuses_the_chosen_sizes_scores_and_scores_only_warp(monkeypatch):
    pytest.importorskip("torch")
    from protospect.training.methods.pcsnet import fit, validate

    scored, real = [], validate.image_scores
    monkeypatch.setattr(validate, "image_scores", lambda model, imgs, **kw: scored.append(len(imgs)) or real(model, imgs, **kw))
    holdout = parts(10, size=128, seed=1)
    model = fit(parts(4, size=128), "edge", seed=0, config_overrides={**AUTO, "image_branch": "auto"}, holdout=holdout,
                progress=False)
    geo, branch = model.meta["geometry_choice"], model.meta["image_branch_choice"]
    kinds = ("nsa_small", "misplace", "erase", "transplant")
    assert {k: branch["scores"]["map"][k] for k in kinds} == {k: geo["scores"][geo["chosen"]][k] for k in kinds}
    per_size = [len(holdout)] + [len(pairs) for pairs in planted(holdout, None).values()]
    assert scored == per_size + per_size + [len(planted(holdout, None, ("warp",))["warp"])]  # two sizes, then warp
    assert not hasattr(model, "_planted")  # the shared scores are not kept on the model


@pytest.mark.torch
def test_auto_at_or_below_the_small_size_is_the_plain_model():
    pytest.importorskip("torch")
    from protospect.training.methods.pcsnet import fit

    model = fit(parts(2), "edge", seed=0, config_overrides={**TINY, "geometry": "auto"}, progress=False)  # 64 <= 256
    assert model.cfg.input_size == 64 and "geometry_choice" not in model.meta


@pytest.mark.torch
def test_eval_hands_held_out_train_images_to_the_fit_and_records_its_choice(tmp_path, monkeypatch):
    """eval runs the per-part choice inside every (K, seed) from train/good images that are not shots."""
    import types

    from protospect.imageio import read_rgb
    from protospect.synthetic_parts import write_mvtec_layout
    from protospect.training import fewshot
    from protospect.training.data import MVTecCategory, sample_shots

    cat_dir = write_mvtec_layout(tmp_path / "data", seed=0, n_train=12, n_test_good=3, n_per_defect=2, size=64)
    cat = MVTecCategory(tmp_path / "data", cat_dir.name)
    patchcore = fewshot.get_method("patchcore")
    seen = {}

    def fit(shots, preset, seed, config_overrides, holdout=None):
        seen[seed] = (shots, holdout)
        model = patchcore.fit(shots, preset, seed, config_overrides)
        model.meta["geometry_choice"] = {"chosen": "small", "seed": seed}
        model.meta["image_branch_choice"] = {"chosen": "global" if seed else "none"}
        return model

    monkeypatch.setattr(fewshot, "get_method", lambda name: types.SimpleNamespace(fit=fit))
    (rec,) = fewshot.evaluate(tmp_path / "data", cat_dir.name, "fake", [2], [0, 1], preset="edge",
                              config_overrides={"input_size": 64}, plots=False)
    for seed, (shots, holdout) in seen.items():
        expect = [read_rgb(p) for p in holdout_good(cat.train_good, sample_shots(cat.train_good, 2, seed), seed)]
        assert len(holdout) == 10 and all(np.array_equal(a, b) for a, b in zip(holdout, expect))
        assert not any(np.array_equal(h, s) for h in holdout for s in shots)
    assert rec["input_size"] == "auto" and rec["geometry_choice"] == {"0": {"chosen": "small", "seed": 0},
                                                                      "1": {"chosen": "small", "seed": 1}}
    assert rec["image_branch_choice"] == {"0": {"chosen": "none"}, "1": {"chosen": "global"}}  # rule v13, per seed


def test_native_planting_resizes_the_defect_as_a_frame_is_resized():
    """Rule v6: the defect is planted at the image's own pixels (here 96 x 192, juice-like) and then resized."""
    from protospect.imageio import resize_image
    from protospect.training.methods.pcsnet.auto_geometry import KINDS, planted_native

    imgs = [np.ascontiguousarray(np.concatenate([_scene(96, s), _scene(96, s + 9)], 0)) for s in range(3)]  # H 192, W 96
    sets = planted_native(imgs, 128, None)
    assert set(sets) == set(KINDS)
    for kind, pairs in sets.items():
        assert len(pairs) == 3
        for (img, mask), src in zip(pairs, imgs):
            assert img.shape == (128, 128, 3) and mask.shape == (128, 128)
            diff = np.abs(img.astype(int) - resize_image(src, 128).astype(int)).max(-1) > 8
            assert diff.any() and diff[mask.astype(bool)].mean() > diff[~mask.astype(bool)].mean()
    again = planted_native(imgs, 128, None)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(sets["misplace"], again["misplace"]))
