"""Metrics on hand-computed cases, and AUROC against sklearn."""
import numpy as np
import pytest
from scipy import ndimage

from protospect.training import metrics

LABELS = [0, 0, 1, 1]
SCORES = [0.1, 0.4, 0.35, 0.8]


def test_image_auroc_hand_cases():
    assert metrics.image_auroc(LABELS, SCORES) == pytest.approx(0.75)  # 3 of 4 pos/neg pairs ordered
    assert metrics.image_auroc([0, 0, 1], [0.1, 0.2, 0.9]) == 1.0
    assert metrics.image_auroc([0, 0, 1], [0.9, 0.8, 0.1]) == 0.0
    assert metrics.image_auroc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half
    assert np.isnan(metrics.image_auroc([1, 1], [0.1, 0.2]))


def test_auroc_matches_sklearn_with_ties():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y, 1)  # rounding creates many ties
    assert metrics.image_auroc(y, s) == pytest.approx(sklearn.roc_auc_score(y, s), abs=1e-12)
    masks = (rng.random((3, 16, 16)) > 0.8).astype(np.uint8)
    maps = np.round(rng.random((3, 16, 16)) + masks * 0.5, 2)
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(sklearn.roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


def test_roc_curve_points():
    fpr, tpr, thr = metrics.roc_curve(LABELS, SCORES)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(thr[1:], [0.8, 0.4, 0.35, 0.1])


def test_f1_max_far_and_threshold_stats():
    f1, thr = metrics.f1_max(LABELS, SCORES)
    assert f1 == pytest.approx(0.8) and thr == 0.35  # tp 2, fp 1, fn 0
    assert metrics.far_at_full_recall(LABELS, SCORES) == 0.5  # good 0.4 >= lowest defect 0.35
    assert metrics.far_at_full_recall([0, 0, 1], [0.1, 0.2, 0.9]) == 0.0
    assert metrics.far_at_full_recall([0, 0, 1], [0.9, 0.8, 0.1]) == 1.0
    stats = metrics.threshold_stats(LABELS, SCORES, 0.4)  # NG: 0.4 (good) and 0.8 (defect)
    assert stats == pytest.approx({"f1": 0.5, "escape_rate": 0.5, "false_alarm_rate": 0.5})
    assert metrics.threshold_stats(LABELS, SCORES, 0.35)["escape_rate"] == 0.0  # ">=" decides NG


def test_aupro_two_regions_by_hand():
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0] = 1  # region A, 1 pixel
    mask[0:2, 3] = 1  # region B, 2 pixels, not 8-connected to A
    amap = np.zeros((4, 4))
    amap[0, 0], amap[0, 3], amap[1, 3] = 0.9, 0.8, 0.1
    amap[3, 1] = 0.85  # one of the 13 normal pixels
    # Curve: (0,0) (0,.5) (1/13,.5) (1/13,.75) (1/13,1) (1,1): area to 0.3 = .5/13 + (.3 - 1/13)
    expected = (0.5 / 13 + 0.3 - 1 / 13) / 0.3
    assert metrics.aupro(mask, amap) == pytest.approx(expected)
    assert metrics.aupro(mask[None], amap[None]) == pytest.approx(expected)


def test_aupro_interpolates_at_exactly_max_fpr():
    mask = np.zeros((1, 11), np.uint8)
    mask[0, 0] = 1
    amap = np.zeros((1, 11))
    amap[0, 1:3] = 1.0  # 2 of 10 normal pixels above the single region
    # Curve (0,0) (0.2,0) (1,1): PRO at 0.3 interpolates to 0.125, area 0.5*0.1*0.125
    assert metrics.aupro(mask, amap) == pytest.approx(0.5 * 0.1 * 0.125 / 0.3)


def test_aupro_perfect_and_inverted():
    mask = np.zeros((2, 8, 8), np.uint8)
    mask[0, 2:4, 2:4] = 1
    mask[1, 5:7, 1:3] = 1
    assert metrics.aupro(mask, mask.astype(float)) == pytest.approx(1.0)
    assert metrics.aupro(mask, 1.0 - mask) == pytest.approx(0.0)
    assert np.isnan(metrics.aupro(np.zeros((8, 8)), np.random.rand(8, 8)))


def _aupro_brute_force(masks, maps, max_fpr=0.3):
    regions = []
    for m, a in zip(masks, maps):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [a[lab == r] for r in range(1, n + 1)]
    normal = maps[masks == 0]
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        xs.append(np.mean(normal >= t))
        ys.append(np.mean([np.mean(r >= t) for r in regions]))
    xs, ys = np.array(xs), np.array(ys)
    # The curve has vertical steps: integrate from the last point at one x to the first point at the next.
    last = np.r_[np.flatnonzero(np.diff(xs)), xs.size - 1]
    first = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    area = 0.0
    for a, b in zip(range(len(last) - 1), range(1, len(last))):
        x0, y0, x1, y1 = xs[last[a]], ys[last[a]], xs[first[b]], ys[first[b]]
        if x0 >= max_fpr:
            break
        xe = min(x1, max_fpr)
        ye = y0 + (y1 - y0) * (xe - x0) / (x1 - x0)
        area += (xe - x0) * (y0 + ye) / 2
    return area / max_fpr


def test_aupro_matches_brute_force_on_random_maps():
    rng = np.random.default_rng(1)
    masks = np.zeros((3, 20, 20), np.uint8)
    masks[0, 2:6, 2:9] = 1
    masks[0, 12:14, 15:19] = 1
    masks[1, 8:15, 4:7] = 1
    maps = np.round(rng.random((3, 20, 20)) * 0.6 + masks * rng.random((3, 20, 20)) * 0.5, 2)
    assert metrics.aupro(masks, maps) == pytest.approx(_aupro_brute_force(masks, maps), abs=1e-9)
