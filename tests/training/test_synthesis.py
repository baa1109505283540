"""NSA self-swap: deterministic per seed, mask == changed pixels, object masks, no silent failures."""
import numpy as np
import pytest

from protospect.training.synthesis import (
    DEFAULT_PARAMS, NSA_TABLE, NSAParams, make_pseudo_anomaly, nsa_params_for, object_mask)


def _textured(size=128, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def _disc_on_plain(size=128, bg=(230, 200, 60)):
    """A noisy grey disc (the object) on a flat coloured background."""
    rng = np.random.default_rng(1)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = bg
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.3) ** 2
    img[disc] = rng.integers(60, 140, size=(disc.sum(), 3))
    return img, disc


def test_deterministic_per_seed():
    img = _textured()
    a = make_pseudo_anomaly(img, np.random.default_rng(3), DEFAULT_PARAMS)
    b = make_pseudo_anomaly(img, np.random.default_rng(3), DEFAULT_PARAMS)
    c = make_pseudo_anomaly(img, np.random.default_rng(4), DEFAULT_PARAMS)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("seed", range(5))
def test_mask_matches_changed_pixels(seed):
    img = _textured(seed=seed)
    out, mask = make_pseudo_anomaly(img, np.random.default_rng(seed), DEFAULT_PARAMS)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert mask.shape == img.shape[:2] and set(np.unique(mask)) <= {0, 1}
    changed = np.any(out != img, axis=-1)
    assert mask.any()
    assert not np.any(changed & (mask == 0)), "a changed pixel lies outside the mask"
    assert changed[mask == 1].mean() > 0.8, "most masked pixels must really differ"


def test_uniform_image_is_not_labelled_anomalous():
    img = np.full((64, 64, 3), 128, np.uint8)  # swapping anything changes nothing
    assert make_pseudo_anomaly(img, np.random.default_rng(0), DEFAULT_PARAMS) is None


def test_auto_background_finds_object_and_patches_land_on_it():
    img, disc = _disc_on_plain()
    obj = object_mask(img, DEFAULT_PARAMS)
    assert obj is not None
    assert (obj.astype(bool) == disc).mean() > 0.97
    rng = np.random.default_rng(0)
    for _ in range(5):
        out, mask = make_pseudo_anomaly(img, rng, DEFAULT_PARAMS, obj)
        # patches carry object pixels and must overlap the object (NSA's min_overlap_pct = 0.25)
        assert (mask.astype(bool) & disc).sum() > 0.2 * mask.sum()
        assert np.any(out[mask == 1] != img[mask == 1])


def test_busy_border_means_no_object_mask():
    assert object_mask(_textured(), DEFAULT_PARAMS) is None


def test_table_background_rule():
    img, disc = _disc_on_plain(bg=(200, 200, 200))
    obj = object_mask(img, NSA_TABLE["bottle"])  # (grey 200, threshold 60): dark pixels are object
    assert (obj.astype(bool) == disc).mean() > 0.97
    assert object_mask(img, NSA_TABLE["carpet"]) is None


def test_params_lookup():
    assert nsa_params_for("bottle") is NSA_TABLE["bottle"]
    assert nsa_params_for("Bottle") is NSA_TABLE["bottle"]
    assert nsa_params_for("deeppcb_00041") is DEFAULT_PARAMS
    assert nsa_params_for(None) is DEFAULT_PARAMS


def test_patch_widths_follow_bounds():
    img = _textured(size=200)
    params = NSAParams(((0.05, 0.05), (0.05, 0.05)), 1, None, False)  # half-width exactly 10 px
    out, mask = make_pseudo_anomaly(img, np.random.default_rng(0), params)
    ys, xs = np.nonzero(mask)
    assert 15 <= ys.max() - ys.min() + 1 <= 21 and 15 <= xs.max() - xs.min() + 1 <= 21
