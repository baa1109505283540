"""Heatmap grids say what happened (issue 20): the colour scale comes from normal statistics, so a defect the
model scores above every normal pixel is red even when the model's map_range is wide; ground truth is cyan (not
the green of "OK"), and each tile is marked TP / FN / FP / TN at the threshold."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.torch

S = 64


def _test_set():
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 0, 1, 1])
    images = np.full((5, S, S, 3), 128, np.uint8)
    masks = np.zeros((5, S, S), np.uint8)
    masks[3:, 20:40, 20:40] = 1
    maps = rng.normal(1.0, 0.05, (5, S, S)).astype(np.float32)
    maps[3:, 20:40, 20:40] = 3.0  # defects: far above every normal pixel, but tiny against map_range [0, 100]
    scores = np.array([1.2, 1.2, 2.5, 3.0, 1.1])  # good #2 flagged (FP), defect #4 scored low (FN)
    items = [SimpleNamespace(defect_type="good" if lab == 0 else "scratch", path=Path(f"{i:03d}.png"))
             for i, lab in enumerate(labels)]
    return SimpleNamespace(labels=labels, images=images, masks=masks, items=items), scores, maps


def _tiles(path: Path, n: int) -> list[np.ndarray]:
    img = cv2.imread(str(path))[:, :, ::-1]
    from protospect.training.visualize import TILE

    top = img.shape[0] - (TILE + 34)  # one row of tiles under the header
    return [img[top:top + TILE, c * TILE:(c + 1) * TILE] for c in range(n)]


def test_defect_is_red_against_a_scale_from_normal_statistics(tmp_path):
    from protospect.training.visualize import heatmap_grid

    test, scores, maps = _test_set()
    path = heatmap_grid(test, scores, maps, {"threshold": 2.0, "map_range": [0.0, 100.0]}, tmp_path / "g.png",
                        n_good=3, n_defective=2, columns=5)
    tiles = _tiles(path, 5)
    inside = tiles[3][80:110, 80:110].astype(int)   # the defect (tile scale 192/64 = 3)
    outside = tiles[3][140:180, 140:180].astype(int)
    # JET: the defect is red (R high, B low), the normal background blue; with map_range [0, 100] both were blue
    redness = lambda px: px[..., 0].mean() - px[..., 2].mean()  # noqa: E731 (red minus blue)
    assert redness(inside) - redness(outside) > 80, (inside.mean((0, 1)), outside.mean((0, 1)))


def test_ground_truth_is_cyan_and_outcomes_are_marked(tmp_path):
    from protospect.training.visualize import CYAN, GREEN, RED, YELLOW, heatmap_grid, outcome

    test, scores, maps = _test_set()
    path = heatmap_grid(test, scores, maps, {"threshold": 2.0, "map_range": [0.0, 100.0]}, tmp_path / "g.png",
                        n_good=3, n_defective=2, columns=5)
    tiles = _tiles(path, 5)

    def has(tile, colour, tol=40):
        return bool((np.abs(tile.astype(int) - np.array(colour)).sum(-1) < tol).any())

    assert has(tiles[3], CYAN) and has(tiles[4], CYAN) and not has(tiles[0], CYAN)
    badge = lambda t: t[3:5, 10:30].reshape(-1, 3).mean(0)  # noqa: E731 (the verdict badge, above its text)
    assert np.abs(badge(tiles[0]) - GREEN).sum() < 60 and np.abs(badge(tiles[2]) - RED).sum() < 60
    assert [outcome(int(lab), s, 2.0) for lab, s in zip(test.labels, scores)] == ["TN", "TN", "FP", "TP", "FN"]
    frame = lambda t: t[TILE_MID, 0]  # noqa: E731 (left border, mid height)
    assert np.abs(frame(tiles[2]) - YELLOW).sum() < 60 and np.abs(frame(tiles[4]) - YELLOW).sum() < 60
    assert np.abs(frame(tiles[3]) - YELLOW).sum() > 100  # a right verdict has no frame


TILE_MID = 96


def test_a_tall_models_tiles_keep_the_parts_aspect(tmp_path):
    """aspect=keep maps (H x W, here 2:1) are drawn tall, not squashed into squares."""
    from protospect.training.visualize import TILE, heatmap_grid

    test, scores, maps = _test_set()
    test.images = np.repeat(test.images, 2, axis=1)
    test.masks = np.repeat(test.masks, 2, axis=1)
    maps = np.repeat(maps, 2, axis=1)
    path = heatmap_grid(test, scores, maps, {"threshold": 2.0, "map_range": [0.0, 100.0]}, tmp_path / "g.png",
                        n_good=3, n_defective=2, columns=5)
    img = cv2.imread(str(path))
    assert img.shape[1] == 5 * TILE and img.shape[0] - 44 == 2 * TILE + 34  # header, one row of 2:1 tiles, band
