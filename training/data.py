"""Few-shot data in the MVTec-AD layout, the K-shot sampler, and loading at model size.

    <category>/train/good/*                      defect-free images (the K shots come from here)
    <category>/test/good/*                       defect-free test images (label 0, no mask)
    <category>/test/<defect>/<name>              defective test images (label 1)
    <category>/ground_truth/<defect>/<stem>_mask.png

MPDD, VisA and BTAD work once converted to this layout. Images and masks go through
protospect.imageio's resize_image / resize_mask, so they always share one geometry.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from protospect.errors import ConfigError, DataError
from protospect.imageio import IMAGE_SUFFIXES, canonical_size, hw_of, read_mask, read_rgb, resize_image, resize_mask

log = logging.getLogger(__name__)


class TestItem(NamedTuple):
    __test__ = False  # not a pytest test class, despite the name

    path: Path
    label: int  # 0 good, 1 defective
    defect_type: str  # "good" for label 0
    mask_path: Path | None  # None for good images and for defective ones without a mask


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files skipped)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")


def _find_mask(gt_dir: Path, image: Path) -> Path | None:
    # MVTec/MPDD name masks <stem>_mask.png; converted BTAD/VisA sets keep the image's stem (png or bmp).
    for name in (f"{image.stem}_mask", image.stem):
        for suffix in MASK_SUFFIXES:
            if (gt_dir / f"{name}{suffix}").is_file():
                return gt_dir / f"{name}{suffix}"
    return None


def _category_dir(root: Path, category: str | None) -> Path:
    """``root/category``, or ``root`` itself when it already is that category's folder."""
    if not root.is_dir():
        raise DataError(f"data folder not found: {root} (--data must point at an MVTec-layout root or category folder)")
    if category is None or (root.name == category and not (root / category).is_dir()):
        return root
    path = root / category
    if not path.is_dir():
        found = sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())
        hint = f"; categories there: {', '.join(found)}" if found else ""
        raise DataError(f"category folder not found: {path}{hint}")
    return path


class MVTecCategory:
    """One category in MVTec layout. ``MVTecCategory(root, "bottle")`` or ``MVTecCategory(root / "bottle")``.

    ``train_good``: sorted image paths; ``test``: TestItems (sorted by type, then name);
    ``has_masks``: every defective test image has a mask (else image-level metrics only).
    """

    def __init__(self, root: str | Path, category: str | None = None):
        self.root = _category_dir(Path(root), category)
        self.name = self.root.name
        good = self.root / "train" / "good"
        if not good.is_dir():
            raise DataError(f"{self.root} has no train/good folder (expected MVTec layout: train/good, test/<type>)")
        self.train_good = list_images(good)
        if not self.train_good:
            raise DataError(f"no images in {good} (expected {', '.join(sorted(IMAGE_SUFFIXES))} files)")
        self.test, unmasked = self._scan_test()
        if unmasked:
            detail = ", ".join(f"{t}: {n}" for t, n in sorted(unmasked.items()))
            log.warning("%s: defective test images without a mask in ground_truth/ (%s); "
                        "pixel metrics are skipped, image-level metrics only", self.name, detail)
        self.has_masks = not unmasked and any(it.label for it in self.test)

    def __repr__(self) -> str:
        return (f"MVTecCategory({str(self.root)!r}: {len(self.train_good)} train, {len(self.test)} test, "
                f"defects {self.defect_types}, has_masks={self.has_masks})")

    def _scan_test(self) -> tuple[list[TestItem], dict[str, int]]:
        test_dir = self.root / "test"
        if not test_dir.is_dir():
            raise DataError(f"{self.root} has no test folder (expected test/good and test/<defect type>)")
        items: list[TestItem] = []
        unmasked: dict[str, int] = {}
        for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            defect = type_dir.name
            for image in list_images(type_dir):
                if defect == "good":
                    items.append(TestItem(image, 0, defect, None))
                    continue
                mask = _find_mask(self.root / "ground_truth" / defect, image)
                if mask is None:
                    unmasked[defect] = unmasked.get(defect, 0) + 1
                items.append(TestItem(image, 1, defect, mask))
        if not items:
            raise DataError(f"no test images under {test_dir}")
        return items, unmasked

    @property
    def defect_types(self) -> list[str]:
        return sorted({it.defect_type for it in self.test if it.label})


def sample_shots(paths: list[Path], k: int, seed: int) -> list[Path]:
    """K distinct files chosen by ``seed`` (numpy Generator: the same on every platform), in file order."""
    unique = sorted(set(Path(p) for p in paths))
    if k < 1:
        raise ConfigError(f"K must be at least 1 (got {k})")
    if k > len(unique):
        where = unique[0].parent if unique and all(p.parent == unique[0].parent for p in unique) else "the list"
        raise DataError(f"K={k} but only {len(unique)} images in {where}")
    chosen = np.random.default_rng(seed).choice(len(unique), size=k, replace=False)
    return [unique[i] for i in sorted(chosen)]


HOLDOUT_GOOD = 20  # held-out good images a choice at registration reads (the studies' --val)


def holdout_good(paths: list[Path], shot_paths: list[Path], seed: int, n: int = HOLDOUT_GOOD) -> list[Path]:
    """Up to ``n`` of ``paths`` that are not shots, chosen by ``seed``: the held-out good images a choice made
    at registration reads (pcsnet geometry=auto), drawn as studies/decision_study.py draws its normals."""
    shots = set(map(Path, shot_paths))
    rest = [Path(p) for p in paths if Path(p) not in shots]
    return [rest[i] for i in np.random.default_rng(seed + 1).permutation(len(rest))[:n]]


@lru_cache(maxsize=2048)
def _load_resized(path: str, size: int | tuple[int, int], mask_path: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    # Cached so repeated evaluation (several K and seeds) decodes each file once per size.
    img = read_rgb(path)
    mask = read_mask(mask_path, expected_hw=img.shape[:2]) if mask_path else None
    img = resize_image(img, size)
    mask = resize_mask(mask, size) if mask is not None else None
    img.setflags(write=False)
    if mask is not None:
        mask.setflags(write=False)
    return img, mask


def load_image(path: str | Path, size: int | tuple[int, int]) -> np.ndarray:
    """A train/shot image as uint8 RGB at the model input (S, or (H, W)) (a fresh, writable copy)."""
    return _load_resized(str(path), canonical_size(size), None)[0].copy()


def load_item(item: TestItem, size: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """(image uint8 HxWx3, mask uint8 HxW in {0,1}) at the model input (S, or (H, W)) for a test item.

    Good images get an all-zero mask. A defective image without a mask file gets ``None``
    (its category has ``has_masks`` False, so only image-level metrics use it).
    A mask whose size differs from its image's is a DataError.
    """
    img, mask = _load_resized(str(item.path), canonical_size(size), str(item.mask_path) if item.mask_path else None)
    if mask is None:
        return img.copy(), (np.zeros(hw_of(size), np.uint8) if item.label == 0 else None)
    return img.copy(), mask.copy()


def clear_cache() -> None:
    _load_resized.cache_clear()
