"""Defective support images for BPGG-style evaluation, drawn from a split disjoint from the test set.

BPGG's setting needs a few annotated defective images. In MVTec layout the only ones are in test/,
so a few are moved out of the evaluated set: ``split_defect_support`` returns them and the test
items that remain, and the evaluation scores only the remaining ones. The chosen file names are
logged and recorded in the model's meta, so a reader can check that no support image was scored.
"""
from __future__ import annotations

import logging

import numpy as np

from protospect.errors import ConfigError, DataError
from protospect.imageio import read_mask, read_rgb
from protospect.training.methods.base import EvalSplit

log = logging.getLogger(__name__)

DEFAULT_SUPPORT_SIZE = 3  # defective support images per run (spread over the defect types)


def item_name(item) -> str:
    """'<defect type>/<file name>', unique inside a category."""
    return f"{item.defect_type}/{item.path.name}"


def split_defect_support(category, n: int, seed: int) -> tuple[list, list]:
    """(support items, remaining test items): n masked defective test items chosen by ``seed``.

    Spread over the defect types in turn (sorted types, a seeded shuffle inside each), so that with
    n >= number of types every type is represented. ``category`` is an MVTecCategory (anything
    with ``.test``, a list of TestItems, and ``.name``). The remaining list keeps the original order.
    """
    if n < 1:
        raise DataError(f"bpgg needs at least one defective support image (got n={n})")
    name = getattr(category, "name", "category")
    candidates = [it for it in category.test if it.label == 1 and it.mask_path is not None]
    if len(candidates) <= n:
        raise DataError(f"{name}: {len(candidates)} defective test images with masks, need more than n={n} "
                        "(n for the support and at least one left to evaluate); lower the support size")
    rng = np.random.default_rng(seed)
    by_type: dict[str, list] = {}
    for it in candidates:
        by_type.setdefault(it.defect_type, []).append(it)
    queues = {t: [items[i] for i in rng.permutation(len(items))] for t, items in sorted(by_type.items())}
    support = []
    while len(support) < n:
        for t in sorted(queues):
            if queues[t] and len(support) < n:
                support.append(queues[t].pop(0))
    chosen = {it.path for it in support}
    remaining = [it for it in category.test if it.path not in chosen]
    log.info("%s: defective support (seed %d), removed from the evaluated set: %s",
             name, seed, ", ".join(item_name(it) for it in support))
    return support, remaining


def load_defect_support(items) -> list[tuple[np.ndarray, np.ndarray]]:
    """(uint8 RGB image, uint8 {0,1} mask) at file resolution for each support item."""
    out = []
    for it in items:
        img = read_rgb(it.path)
        out.append((img, read_mask(it.mask_path, expected_hw=img.shape[:2])))
    return out


def prepare_eval(category, seed: int, config_overrides: dict | None = None) -> EvalSplit:
    """For the evaluation loop: the overrides, the defective support (for fit's ``defects``/``defect_names``)
    and the test items to score.

    The support comes from the evaluated category's own test split (``support_size`` images, default
    3); the returned items exclude every support image; score only those. ``support_data`` (another
    folder's defects) is for ``train`` only: in an evaluation it would be silently replaced, so refuse it.
    """
    overrides = dict(config_overrides or {})
    if overrides.get("support_data"):
        raise ConfigError("bpgg: support_data applies to `protospect train` only; `eval` draws the defective "
                          "support from the evaluated category (set support_size to change how many)")
    support, remaining = split_defect_support(category, int(overrides.get("support_size", DEFAULT_SUPPORT_SIZE)), seed)
    return EvalSplit(overrides, load_defect_support(support), [item_name(it) for it in support], remaining)
