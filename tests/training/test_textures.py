"""DRAEM-style texture pseudo anomalies (training/textures.py): P1 and P10 regressions, masks, errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from protospect.errors import DataError
from protospect.training.textures import (
    DraemSynthesizer,
    TextureFolder,
    augment_texture,
    draem_blend,
    perlin_mask,
    perlin_noise_2d,
)


def _checker(size: int, period: int = 8) -> np.ndarray:
    """A bright, high-contrast RGB texture (red/cyan checks): impossible to miss if it is blended in."""
    yy, xx = np.mgrid[:size, :size]
    on = ((yy // period + xx // period) % 2).astype(bool)
    img = np.zeros((size, size, 3), np.uint8)
    img[on] = (255, 0, 0)
    img[~on] = (0, 255, 255)
    return img


@pytest.fixture()
def texture_dir(tmp_path):
    d = tmp_path / "textures" / "checks"
    d.mkdir(parents=True)
    # Written with OpenCV (BGR on disk), so a loader that forgets BGR->RGB swaps red and blue.
    cv2.imwrite(str(d / "red_checks.png"), _checker(40)[:, :, ::-1])
    return tmp_path / "textures"


def test_blend_keeps_the_texture_visible_P1():
    """PRNet blended a 0-255 image with a /255 texture, leaving only beta*I (a dark blob). Here the
    blended region must follow the texture, not beta*I."""
    image = np.full((32, 32, 3), 120, np.uint8)
    texture = _checker(32)
    mask = np.zeros((32, 32), np.float32)
    mask[8:24, 8:24] = 1
    beta = 0.3
    out = draem_blend(image, texture, mask, beta).astype(np.float32)
    region = out[8:24, 8:24]
    i, t = image[8:24, 8:24].astype(np.float32), texture[8:24, 8:24].astype(np.float32)
    prnet_bug = beta * i + (1 - beta) * t / 255.0  # image 0-255 but texture /255: ~= beta*I
    assert np.abs(prnet_bug - beta * i).max() < 1.0
    assert np.abs(region - prnet_bug).mean() > 50
    # and equals the DRAEM formula in [0,1] scaled back to 0..255
    expected = (1 - beta) * texture[8:24, 8:24] + beta * image[8:24, 8:24]
    assert np.abs(region - expected).max() <= 1.0
    # the texture pattern is visible: the red channel alternates between checks
    assert region[..., 0].std() > 50
    # outside the mask nothing changes
    assert np.array_equal(out[:8], image[:8].astype(np.float32))


def test_texture_folder_decodes_rgb_P10(texture_dir):
    folder = TextureFolder(texture_dir)
    assert len(folder) == 1
    tex = folder.load(0, 40)
    # the first check is red in RGB (255, 0, 0); a BGR read would give (0, 0, 255)
    assert tuple(tex[0, 0]) == (0, 255, 255) or tuple(tex[0, 0]) == (255, 0, 0)
    red_checks = tex[..., 0] > 200
    assert red_checks.any()
    assert (tex[red_checks][:, 2] < 50).all(), "red checks must have no blue: texture was read as BGR"


def test_texture_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        TextureFolder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        TextureFolder(tmp_path / "empty")


def test_perlin_noise_and_mask_are_seeded_and_non_empty():
    n1 = perlin_noise_2d(50, (4, 8), np.random.default_rng(3))
    n2 = perlin_noise_2d(50, (4, 8), np.random.default_rng(3))
    assert n1.shape == (50, 50) and np.array_equal(n1, n2)
    assert n1.std() > 0.05
    rng = np.random.default_rng(0)
    for _ in range(10):
        m = perlin_mask(64, rng)
        assert m.shape == (64, 64) and set(np.unique(m)) <= {0.0, 1.0}
        assert m.sum() > 0


def test_augment_texture_keeps_shape_and_dtype():
    rng = np.random.default_rng(1)
    tex = _checker(24)
    for _ in range(5):
        out = augment_texture(tex, rng)
        assert out.shape == tex.shape and out.dtype == np.uint8


@pytest.mark.parametrize("hw", [(64, 64), (96, 48)])  # (96, 48): a non-square input (aspect=keep)
def test_synthesizer_changes_only_the_masked_pixels(texture_dir, hw):
    synth = DraemSynthesizer(texture_dir)
    image = np.full((*hw, 3), 128, np.uint8)
    out, mask = synth(image, np.random.default_rng(5))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert mask.shape == hw and mask.sum() > 0
    changed = np.abs(out.astype(int) - image.astype(int)).sum(-1) > 0
    assert not changed[mask == 0].any()
    assert changed[mask == 1].mean() > 0.5
    again, mask2 = DraemSynthesizer(texture_dir)(image, np.random.default_rng(5))
    assert np.array_equal(out, again) and np.array_equal(mask, mask2)
