"""aspect=keep (rule v7, docs/decision.md section 17): non-square H x W inputs with the part's aspect ratio."""
import numpy as np
import pytest

from protospect.errors import ConfigError
from protospect.training.methods.pcsnet.presets import aspect_geometry, resolve_config

from tests.training.test_pcsnet import TINY

KEEP = {**TINY, "input_size": 128, "grid": 16, "bins": [16, 8, 4], "aspect": "keep", "geometry": "fixed"}


def tall_parts(n=4, h=200, w=100, seed=0):
    """Generated good parts twice as tall as wide: a textured bar on a plain background, slightly moved."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = np.full((h, w, 3), 40, np.uint8)
        o = int(rng.integers(8, 14))
        img[o:h - o, o:w - o] = rng.integers(120, 230, size=(h - 2 * o, w - 2 * o, 3))
        out.append(img)
    return out


@pytest.mark.parametrize("ratio, size, hw", [(2.0, 512, (704, 384)), (2.0, 256, (384, 192)), (0.5, 512, (384, 704)),
                                             (1 / 2.4, 512, (320, 768)), (1.0, 512, (512, 512)), (1.1, 512, (512, 512))])
def test_aspect_geometry_keeps_the_ratio_at_the_same_pixel_count(ratio, size, hw):
    cfg = aspect_geometry(resolve_config("edge", {"input_size": size}), ratio)
    assert cfg.hw == hw
    assert cfg.input_hw == (() if hw[0] == hw[1] else hw)  # square parts: the S x S model, exactly as before
    h, w = cfg.hw
    assert abs(h * w / size ** 2 - 1) <= 0.125  # about the cost of S x S (64 px steps: 384 x 192 is 1.125 x 256^2)
    assert h % 64 == 0 and w % 64 == 0 and cfg.grid_hw == (h // 8, w // 8)


def test_a_non_square_input_that_breaks_the_grid_or_the_pyramid_is_refused():
    with pytest.raises(ConfigError, match="whole grid cells"):
        resolve_config("edge", {"input_hw": [704, 360]})  # 360 px is 45 cells: the 8-cell pyramid level is not whole
    with pytest.raises(ConfigError, match="nn_rotations=4 needs a square input"):
        resolve_config("edge", {"input_hw": [704, 384], "nn_rotations": 4, "fusion": "pcsnet+nn"})
    with pytest.raises(ConfigError, match="aspect"):
        resolve_config("edge", {"aspect": "stretch"})
    assert resolve_config("edge", {"input_hw": [704, 384]}).n_prototypes == 1024  # 88 x 48 positions, capped


@pytest.mark.torch
def test_a_tall_part_trains_at_its_own_aspect_and_round_trips(tmp_path):
    pytest.importorskip("torch")
    import torch

    from protospect.training.artifact import load_artifact, save_artifact
    from protospect.training.calibrate import to_model_input
    from protospect.training.methods.pcsnet import fit

    shots = tall_parts(3)
    model = fit(shots, "edge", seed=0, config_overrides=KEEP, progress=False)
    assert model.cfg.hw == (192, 96) and model.meta["input_size"] == [192, 96]
    x = to_model_input(tall_parts(2, seed=4), model.meta["input_size"], model.meta["mean"], model.meta["std"])
    assert tuple(x.shape) == (2, 3, 192, 96)
    with torch.no_grad():
        out = model(x)
    assert tuple(out.anomaly_map.shape) == (2, 1, 192, 96) and torch.isfinite(out.image_score).all()
    save_artifact(model, tmp_path / "art", shots=["a.png"], seed=0, data={"root": "gen", "category": "tall"})
    again, _ = load_artifact(tmp_path / "art")
    with torch.no_grad():
        assert torch.allclose(again(x).anomaly_map, out.anomaly_map, atol=1e-6)
    assert again.cfg.hw == (192, 96)


@pytest.mark.torch
def test_the_grid_keeps_the_parts_layout():
    """Nearest-prototype distances come back on an (H/8) x (W/8) grid in the image's own layout: a blob planted
    low on a tall part is farthest from the prototypes low on the grid, not squashed into a square."""
    pytest.importorskip("torch")
    import torch

    from protospect.training.calibrate import to_model_input
    from protospect.training.methods.pcsnet import fit

    model = fit(tall_parts(4, seed=1), "edge", seed=0, config_overrides=KEEP, progress=False)
    bad = tall_parts(1, seed=9)[0].copy()
    bad[140:170, 30:70] = (255, 0, 255)
    x = to_model_input([bad], model.meta["input_size"], model.meta["mean"], model.meta["std"])
    with torch.no_grad():
        queries, _ = model.features(x)
        dist = model.knn(queries)[0, :, 0].reshape(model.cfg.grid_hw).numpy()
    assert dist.shape == (24, 12)
    y, xx = np.unravel_index(dist.argmax(), dist.shape)
    assert 140 / 200 * 24 - 2 <= y <= 170 / 200 * 24 + 2 and 30 / 100 * 12 - 2 <= xx <= 70 / 100 * 12 + 2


@pytest.mark.torch
def test_square_shots_under_aspect_keep_give_exactly_the_squashed_model():
    pytest.importorskip("torch")
    import torch

    from protospect.training.methods.pcsnet import fit
    from tests.training.test_pcsnet import parts

    shots = parts(2, size=128)
    keep = fit(shots, "edge", seed=0, config_overrides=KEEP, progress=False)
    squash = fit(shots, "edge", seed=0, config_overrides={**KEEP, "aspect": "squash"}, progress=False)
    assert keep.cfg.hw == squash.cfg.hw == (128, 128) and keep.meta["input_size"] == 128
    a, b = keep.state_dict(), squash.state_dict()
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert keep.calibration["threshold"] == squash.calibration["threshold"]


@pytest.mark.torch
def test_geometry_auto_gives_both_candidates_the_parts_aspect():
    pytest.importorskip("torch")
    from protospect.training.methods.pcsnet import fit

    over = {**KEEP, "geometry": "auto", "auto_small": 64}
    model = fit(tall_parts(3), "edge", seed=0, config_overrides=over, holdout=tall_parts(8, seed=3), progress=False)
    rec = model.meta["geometry_choice"]
    assert rec["scores"]["small"]["input_size"] == [96, 32] and rec["scores"]["large"]["input_size"] == [192, 96]
    assert rec["input_size"] == model.meta["input_size"] == list(model.cfg.hw)
