"""MVTec-layout reader, K-shot sampler and load_item on small generated folders (plus dev data when present)."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from devdata import dev_category
from protospect.errors import ConfigError, DataError
from protospect.training.data import MVTecCategory, TestItem, clear_cache, load_image, load_item, sample_shots


def write_png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def make_category(root: Path, name="widget", n_train=5, size=(40, 60), masks=True) -> Path:
    """A tiny MVTec-layout category: H x W = size; one defect type 'crack' with a square mask."""
    h, w = size
    rng = np.random.default_rng(0)
    cat = root / name
    for i in range(n_train):
        write_png(cat / "train" / "good" / f"{i:03d}.png", rng.integers(0, 255, (h, w, 3), np.uint8))
    for i in range(2):
        write_png(cat / "test" / "good" / f"{i:03d}.png", rng.integers(0, 255, (h, w, 3), np.uint8))
    for i in range(3):
        write_png(cat / "test" / "crack" / f"{i:03d}.png", rng.integers(0, 255, (h, w, 3), np.uint8))
        if masks:
            m = np.zeros((h, w), np.uint8)
            m[10:20, 20:40] = 255
            write_png(cat / "ground_truth" / "crack" / f"{i:03d}_mask.png", m)
    (cat / "train" / "good" / "notes.txt").write_text("not an image")
    return cat


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def test_reads_layout_from_root_and_category(tmp_path):
    make_category(tmp_path)
    cat = MVTecCategory(tmp_path, "widget")
    assert [p.name for p in cat.train_good] == ["000.png", "001.png", "002.png", "003.png", "004.png"]
    assert cat.has_masks and cat.defect_types == ["crack"] and cat.name == "widget"
    goods = [it for it in cat.test if it.label == 0]
    bads = [it for it in cat.test if it.label == 1]
    assert len(goods) == 2 and all(it.mask_path is None and it.defect_type == "good" for it in goods)
    assert len(bads) == 3 and all(it.mask_path.name == f"{it.path.stem}_mask.png" for it in bads)
    assert isinstance(cat.test[0], TestItem)
    # The category folder itself works too, with or without repeating its name.
    for other in (MVTecCategory(tmp_path / "widget"), MVTecCategory(tmp_path / "widget", "widget")):
        assert other.train_good == cat.train_good and other.test == cat.test


def test_missing_masks_mean_image_level_only(tmp_path, caplog):
    make_category(tmp_path, masks=False)
    with caplog.at_level(logging.WARNING):
        cat = MVTecCategory(tmp_path, "widget")
    assert not cat.has_masks
    assert "crack: 3" in caplog.text and "image-level" in caplog.text
    bad = next(it for it in cat.test if it.label)
    img, mask = load_item(bad, 32)
    assert img.shape == (32, 32, 3) and mask is None


def test_masks_named_like_the_image_are_found(tmp_path):
    """BTAD/VisA conversions keep the image's stem for the mask (png or bmp)."""
    cat_dir = make_category(tmp_path)
    gt = cat_dir / "ground_truth" / "crack"
    (gt / "000_mask.png").rename(gt / "000.png")
    m = cv2.imread(str(gt / "001_mask.png"), cv2.IMREAD_GRAYSCALE)
    write_png(gt / "001.bmp", m)
    (gt / "001_mask.png").unlink()
    cat = MVTecCategory(cat_dir)
    assert cat.has_masks
    names = {it.path.name: it.mask_path.name for it in cat.test if it.label}
    assert names == {"000.png": "000.png", "001.png": "001.bmp", "002.png": "002_mask.png"}
    assert all(load_item(it, 32)[1].sum() > 0 for it in cat.test if it.label)


@pytest.mark.parametrize("breakage,message", [
    (lambda c: None, "category folder not found"),
    (lambda c: (c / "train" / "good").rename(c / "train" / "ok"), "no train/good"),
    (lambda c: [p.unlink() for p in (c / "train" / "good").iterdir()], "no images in"),
    (lambda c: (c / "test").rename(c / "tests"), "no test folder"),
])
def test_broken_layouts_are_one_line_data_errors(tmp_path, breakage, message):
    cat_dir = make_category(tmp_path)
    name = "widget"
    if message == "category folder not found":
        name = "widgte"
    breakage(cat_dir)
    with pytest.raises(DataError, match=message) as err:
        MVTecCategory(tmp_path, name)
    assert "\n" not in str(err.value)


def test_missing_root_and_hint_of_categories(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        MVTecCategory(tmp_path / "absent", "widget")
    make_category(tmp_path)
    with pytest.raises(DataError, match="categories there: widget"):
        MVTecCategory(tmp_path, "gadget")


def test_sample_shots_distinct_deterministic_and_seeded(tmp_path):
    paths = [tmp_path / f"{i:03d}.png" for i in range(20)]
    a = sample_shots(paths, 8, seed=0)
    assert len(a) == len(set(a)) == 8 and set(a) <= set(paths)
    assert a == sample_shots(list(reversed(paths)), 8, seed=0)  # input order does not matter
    seeds = {tuple(sample_shots(paths, 8, seed=s)) for s in range(5)}
    assert len(seeds) > 1
    assert sample_shots(paths, 20, seed=3) == sorted(paths)
    # Duplicates in the input do not produce duplicate shots.
    assert len(set(sample_shots(paths[:3] * 4, 3, seed=1))) == 3


def test_sample_shots_errors(tmp_path):
    cat = MVTecCategory(make_category(tmp_path, n_train=5))
    with pytest.raises(DataError, match=r"K=8 but only 5 images in .*widget/train/good"):
        sample_shots(cat.train_good, 8, seed=0)
    with pytest.raises(ConfigError, match="at least 1"):
        sample_shots(cat.train_good, 0, seed=0)


def test_load_item_same_geometry_for_image_and_mask(tmp_path):
    cat = MVTecCategory(make_category(tmp_path, size=(40, 60)))
    bad = next(it for it in cat.test if it.label)
    img, mask = load_item(bad, 32)
    assert img.dtype == np.uint8 and img.shape == (32, 32, 3)
    assert mask.dtype == np.uint8 and mask.shape == (32, 32) and set(np.unique(mask)) == {0, 1}
    # The 40x60 mask's box rows 10:20, cols 20:40 land at rows 8:16, cols ~10.7:21.3 after the square resize.
    ys, xs = np.nonzero(mask)
    assert (ys.min(), ys.max()) == (8, 15) and 10 <= xs.min() <= 11 and 20 <= xs.max() <= 21
    good = next(it for it in cat.test if it.label == 0)
    _, gmask = load_item(good, 32)
    assert gmask.shape == (32, 32) and gmask.sum() == 0
    # Callers get their own copies: editing one does not change what the cache returns next time.
    img[:] = 0
    assert load_item(bad, 32)[0].any()
    assert load_image(cat.train_good[0], 16).shape == (16, 16, 3)


@pytest.mark.parametrize("src, size", [(900, 256), (1024, 256), (512, 224), (40, 32)])
def test_mask_and_image_resize_share_one_centre(src, size):
    """A defect's mask must land where the defect's pixels land (the published code's masks were shifted)."""
    from protospect.imageio import resize_mask, resize_image
    rng, grid, offsets = np.random.default_rng(0), np.mgrid[0:size, 0:size], []
    for _ in range(40):  # random boxes: one box's binary edges alone can move its centroid by ~0.4 px
        m = np.zeros((src, src), np.uint8)
        (y, x), (h, w) = rng.integers(0, src // 2, 2), rng.integers(src // 10, src // 3, 2)
        m[y:y + h, x:x + w] = 1
        img = resize_image(np.repeat(m[..., None] * 255, 3, axis=2), size)[..., 0].astype(np.float64)
        mask = resize_mask(m, size)
        offsets.append([(g * img).sum() / img.sum() - (g * mask).sum() / mask.sum() for g in grid])
    # INTER_NEAREST (top-left sampling) gave a mean offset of 0.36-0.53 px at these sizes
    assert np.abs(np.mean(offsets, axis=0)).max() < 0.25, np.mean(offsets, axis=0)


def test_zero_one_masks_are_not_read_as_empty(tmp_path):
    from protospect.imageio import read_mask
    m = np.zeros((20, 30), np.uint8)
    m[5:9, 3:12] = 1  # a converted set's 0/1 mask
    assert read_mask(write_png(tmp_path / "a_mask.png", m)).sum() == 36
    m[5:9, 3:12] = 255  # MVTec's 0/255, with a grey anti-aliased rim that stays out
    m[4, 3:12] = 60
    assert read_mask(write_png(tmp_path / "b_mask.png", m)).sum() == 36


def test_mask_of_wrong_size_and_unreadable_image(tmp_path):
    cat_dir = make_category(tmp_path)
    write_png(cat_dir / "ground_truth" / "crack" / "001_mask.png", np.zeros((10, 10), np.uint8))
    (cat_dir / "test" / "crack" / "002.png").write_bytes(b"garbage")
    cat = MVTecCategory(cat_dir)
    items = {it.path.name: it for it in cat.test if it.label}
    with pytest.raises(DataError, match="mask .*001_mask.png is 10x10 but its image is 60x40"):
        load_item(items["001.png"], 32)
    with pytest.raises(DataError, match="cannot decode image"):
        load_item(items["002.png"], 32)


def test_gray_and_odd_sized_images_load(tmp_path):
    cat_dir = make_category(tmp_path)
    write_png(cat_dir / "train" / "good" / "gray.png", np.full((50, 52), 128, np.uint8))
    write_png(cat_dir / "train" / "good" / "tall.png", np.full((522, 512, 3), 7, np.uint8))
    cat = MVTecCategory(cat_dir)
    for p in cat.train_good:
        assert load_image(p, 32).shape == (32, 32, 3)


@pytest.mark.devdata
@pytest.mark.parametrize("name", ["bottle", "hazelnut_toy", "deeppcb_00041", "deeppcb_44000"])
def test_dev_categories_load(name):
    cat = MVTecCategory(dev_category(name))
    assert cat.has_masks and cat.train_good and any(it.label for it in cat.test)
    # Every train image (hazelnut_toy's 512x522 one, DeepPCB's gray JPEGs) and a few test items load at 64 px.
    for p in cat.train_good[:40]:
        assert load_image(p, 64).shape == (64, 64, 3)
    for it in cat.test[:2] + cat.test[-2:]:
        img, mask = load_item(it, 64)
        assert img.shape == (64, 64, 3) and mask.shape == (64, 64)
        assert (mask.sum() > 0) == bool(it.label)
