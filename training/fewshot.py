"""The few-shot evaluation protocol: for every K and seed, sample -> fit -> score the whole test set.

Per (K, seed): ``sample_shots`` draws K distinct train/good files, the method's ``fit`` builds (or
trains) a model and calibrates its threshold on those shots only, then every test image is scored
once by that final model. Metrics are computed at the model resolution S. Nothing is ever chosen
by looking at test images: no checkpoint, threshold or setting depends on them.

The records follow docs/contracts.md section 9 (values in percent, [mean, std] over seeds, std is
the population std so one seed gives 0).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from protospect.errors import DataError
from protospect.imageio import canonical_size, read_rgb, size_record
from protospect.training import metrics
from protospect.training.calibrate import to_model_input
from protospect.training.backbones import FeatureStore, memoize_features
from protospect.errors import ConfigError
from protospect.conformal import n_needed, operating_point
from protospect.training.data import MVTecCategory, TestItem, holdout_good, load_image, load_item, sample_shots
from protospect.training.methods import get_method
from protospect.training.methods.base import takes_holdout

log = logging.getLogger(__name__)

PERCENT_KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "far_at_full_recall",
                "f1_at_threshold", "escape_rate", "false_alarm_rate")
# At the operating point `protospect register` would set (split conformal, protospect/conformal.py) from
# up to OP_GOOD train/good images that were not shots, at false-reject rates A = 5 % and 1 %: the
# false-reject rate measured on test/good and the escape rate on the defective test images. null where too
# few good images are left to certify A (N >= 1/A - 1: 19 for 5 %, 99 for 1 %).
OP_RATES = {"a05": 0.05, "a01": 0.01}
LINE_KEYS = tuple(f"{what}_{tag}" for tag in OP_RATES for what in ("false_reject_rate", "escape_rate"))
OP_GOOD = 40  # new good parts per run for the operating point (the N)
MIN_GOOD = n_needed(max(OP_RATES.values()))


@dataclass
class TestSet:
    """The test images of one category at model size S, decoded once and reused for every K and seed."""

    items: list[TestItem]
    images: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) {0, 1}
    masks: np.ndarray | None  # (N, S, S) {0, 1}, None when the category has no masks

    @classmethod
    def load(cls, cat: MVTecCategory, size: int) -> "TestSet":
        images, masks = [], []
        for item in tqdm(cat.test, desc=f"{cat.name}: load test @{size}", leave=False, unit="img"):
            img, mask = load_item(item, size)
            images.append(img)
            masks.append(mask)
        use_masks = cat.has_masks and all(m is not None for m in masks)
        return cls(list(cat.test), np.stack(images), np.array([it.label for it in cat.test], np.int8),
                   np.stack(masks) if use_masks else None)

    def without(self, excluded_paths: set) -> "TestSet":
        """The same set minus the items at ``excluded_paths`` (e.g. a method's defective support images)."""
        keep = np.array([it.path not in excluded_paths for it in self.items], bool)
        return TestSet([it for it, k in zip(self.items, keep) if k], self.images[keep], self.labels[keep],
                       None if self.masks is None else self.masks[keep])


@torch.no_grad()
def score_images(model, images: np.ndarray, batch_size: int = 4, desc: str = "score") -> tuple[np.ndarray, np.ndarray]:
    """(image scores (N,), maps (N, S, S)) of uint8 SxS RGB images, in batches, no grad."""
    mean, std, size = model.meta["mean"], model.meta["std"], canonical_size(model.meta["input_size"])
    device = next(iter(model.buffers()), torch.zeros(0)).device  # a method may return a CUDA model
    scores, maps = [], []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, leave=False, unit="batch"):
        out = model(to_model_input(images[start:start + batch_size], size, mean, std).to(device))
        scores.append(out.image_score.float().cpu().numpy())
        maps.append(out.anomaly_map[:, 0].float().cpu().numpy())
    return np.concatenate(scores), np.concatenate(maps)


def seed_metrics(test: TestSet, scores: np.ndarray, maps: np.ndarray, threshold: float) -> dict:
    """Every metric of one (K, seed) run, as fractions (pixel metrics None without masks)."""
    at_thr = metrics.threshold_stats(test.labels, scores, threshold)
    result = {
        "image_auroc": metrics.image_auroc(test.labels, scores),
        "pixel_auroc": metrics.pixel_auroc(test.masks, maps) if test.masks is not None else None,
        "aupro": metrics.aupro(test.masks, maps) if test.masks is not None else None,
        "f1_max": metrics.f1_max(test.labels, scores)[0],
        "far_at_full_recall": metrics.far_at_full_recall(test.labels, scores),
        "f1_at_threshold": at_thr["f1"],
        "escape_rate": at_thr["escape_rate"],
        "false_alarm_rate": at_thr["false_alarm_rate"],
    }
    return result


def line_good_images(train_good: list[Path], shot_paths: list[Path], seed: int, n: int = OP_GOOD) -> list[Path]:
    """Up to ``n`` train/good files that are not shots, chosen by ``seed``: the new good parts a station
    would set its thresholds on. Empty when fewer than MIN_GOOD remain (not even A = 5 % is certifiable)."""
    rest = sorted(set(map(Path, train_good)) - set(map(Path, shot_paths)))
    if len(rest) < MIN_GOOD:
        return []
    chosen = np.random.default_rng([seed, 7]).choice(len(rest), size=min(n, len(rest)), replace=False)
    return [rest[i] for i in sorted(chosen)]


def line_metrics(labels: np.ndarray, scores: np.ndarray, good_scores: np.ndarray | None) -> dict:
    """False-reject / escape rates on the test set at the conformal NG threshold set on ``good_scores`` for each
    rate in OP_RATES (None where not available or not certifiable with that many good images)."""
    out = {"line_threshold": {}, **{k: None for k in LINE_KEYS}}
    if good_scores is None:
        return out
    for tag, rate in OP_RATES.items():
        try:
            thr = operating_point(good_scores, frr=rate, review_frr=None).ng_threshold
        except ConfigError:  # too few good images to certify this rate
            continue
        at = metrics.threshold_stats(labels, scores, thr)
        out["line_threshold"][tag] = thr
        out[f"false_reject_rate_{tag}"] = at["false_alarm_rate"]
        out[f"escape_rate_{tag}"] = at["escape_rate"]
    return out


def _mean_std(values: list) -> list[float] | None:
    """[mean, population std], or None when any seed's value is undefined (e.g. AUROC without defects)."""
    if any(v is None or not np.isfinite(v) for v in values):
        return None
    arr = np.asarray(values, dtype=np.float64)
    return [round(float(np.mean(arr)), 3), round(float(np.std(arr)), 3)]


def aggregate(category: str, method: str, preset: str, k: int, runs: list[dict], command: str | None,
              overrides: dict | None = None) -> dict:
    """Per-seed runs -> one results.json record (contracts section 9 plus the documented extra keys).

    ``overrides``: the user's --set values; they are part of the record's identity in results.json.
    """
    record = {"category": category, "method": method, "preset": preset, "K": k, "seeds": [r["seed"] for r in runs]}
    if overrides:
        record["overrides"] = {key: overrides[key] for key in sorted(overrides)}
    for key in PERCENT_KEYS + LINE_KEYS:
        record[key] = _mean_std([None if r.get(key) is None else 100.0 * r[key] for r in runs])
    record["train_seconds"] = _mean_std([r["train_seconds"] for r in runs])
    # only runs that computed their backbone features: the others read them from the evaluation's cache
    record["test_ms_per_image"] = _mean_std([r["test_ms_per_image"] for r in runs if not r.get("test_features_cached")])
    record["input_size"] = runs[0]["input_size"]
    record["threshold"] = [r["threshold"] for r in runs]
    record["line_threshold"] = [r.get("line_threshold") for r in runs]
    record["shots"] = {str(r["seed"]): r["shots"] for r in runs}
    if any("geometry_choice" in r for r in runs):  # pcsnet geometry=auto: each seed's input size and its evidence
        record["geometry_choice"] = {str(r["seed"]): r.get("geometry_choice") for r in runs}
        record["input_size"] = "auto"  # one results.json identity for the rule, whatever each seed chose
    if any("image_branch_choice" in r for r in runs):  # pcsnet image_branch=auto (rule v13): each seed's choice
        record["image_branch_choice"] = {str(r["seed"]): r.get("image_branch_choice") for r in runs}
    if any("defect_support" in r for r in runs):  # which test images a method learned from, per seed (not scored)
        record["defect_support"] = {str(r["seed"]): r.get("defect_support", []) for r in runs}
    record["per_seed"] = [{k2: _percent(r.get(k2)) for k2 in PERCENT_KEYS + LINE_KEYS} | {"seed": r["seed"]} for r in runs]
    record["command"] = command
    return record


def evaluate(data_root, category: str | None, method: str, shots_list: list[int], seeds: list[int], preset: str = "edge",
             out_dir=None, *, config_overrides: dict | None = None, batch_size: int = 4, command: str | None = None,
             plots: bool = True) -> list[dict]:
    """Run the protocol for one category; append its records to ``out_dir``/results.json (+ md, plots).

    Returns the records. Fails early (DataError) when a K exceeds the available train/good images.
    """
    from protospect.training import results as results_io  # noqa: PLC0415 (matplotlib only when writing)

    cat = MVTecCategory(data_root, category)
    too_many = [k for k in shots_list if k > len(cat.train_good)]
    if too_many:
        raise DataError(f"K={max(too_many)} but only {len(cat.train_good)} images in {cat.root / 'train' / 'good'}")
    module = get_method(method)
    # Every method takes the category name (pcsnet/prn pick their pseudo-anomaly table row with it).
    user_overrides = {key: v for key, v in (config_overrides or {}).items() if key != "category"}
    config_overrides = {"category": cat.name, **(config_overrides or {})}
    tests: dict[int, TestSet] = {}
    # The frozen backbone sees the same test pixels for every (K, seed): compute its features once.
    feature_store = FeatureStore()
    records, roc_curves, out = [], {}, Path(out_dir) if out_dir is not None else None
    for k in shots_list:
        runs = []
        for seed in seeds:
            shot_paths = sample_shots(cat.train_good, k, seed)
            shots_rgb = [read_rgb(p) for p in shot_paths]
            run_overrides, excluded, data = config_overrides, set(), {}
            if hasattr(module, "prepare_eval"):
                # bpgg learns from a few *defective* images: they come out of the test split for this
                # seed, and only the remaining items are scored (never evaluate on a support image).
                # The images go to fit as its own argument, never through config_overrides.
                split = module.prepare_eval(cat, seed, config_overrides)
                run_overrides, data = split.overrides, {"defects": split.defects, "defect_names": split.defect_names}
                excluded = {it.path for it in cat.test} - {it.path for it in split.remaining}
            t0 = time.perf_counter()
            if takes_holdout(module.fit):  # a choice made on good images only
                data = {**data, "holdout": [read_rgb(p) for p in holdout_good(cat.train_good, shot_paths, seed)]}
            model = module.fit(shots_rgb, preset=preset, seed=seed, config_overrides=run_overrides, **data)
            train_seconds = time.perf_counter() - t0
            size = canonical_size(model.meta["input_size"])
            if size not in tests:
                tests[size] = TestSet.load(cat, size)
            test = tests[size].without(excluded) if excluded else tests[size]
            # The first seed of every K scores end to end (its own throwaway cache): one honest time per
            # record. Later seeds reuse the frozen backbone's test features, so their time is not comparable.
            cached = seed != seeds[0]
            t0 = time.perf_counter()
            with memoize_features(feature_store if cached else None):
                scores, maps = score_images(model, test.images, batch_size, desc=f"{cat.name} {method} K={k} seed={seed}")
            test_ms = 1000.0 * (time.perf_counter() - t0) / len(scores)
            threshold = float(model.calibration["threshold"])
            run = seed_metrics(test, scores, maps, threshold)
            line_paths = line_good_images(cat.train_good, shot_paths, seed)
            good_scores = (score_images(model, np.stack([load_image(p, size) for p in line_paths]), batch_size,
                                        desc="line good parts")[0] if line_paths else None)
            run.update(line_metrics(test.labels, scores, good_scores))
            if "geometry_choice" in model.meta:  # what geometry=auto chose, and on what
                run["geometry_choice"] = model.meta["geometry_choice"]
            if "image_branch_choice" in model.meta:  # and whether the global branch joined the image score
                run["image_branch_choice"] = model.meta["image_branch_choice"]
            if excluded:
                run["defect_support"] = sorted(str(p) for p in excluded)
            run.update(seed=seed, shots=[p.name for p in shot_paths], train_seconds=round(train_seconds, 3),
                       test_ms_per_image=round(test_ms, 2), test_features_cached=cached, input_size=size_record(size),
                       threshold=threshold)
            runs.append(run)
            log.info("%s %s K=%d seed=%d: image AUROC %.1f, pixel AUROC %s, AUPRO %s, fit %.1f s", cat.name, method, k, seed,
                     100 * run["image_auroc"], _pct(run["pixel_auroc"]), _pct(run["aupro"]), train_seconds)
            if out is not None and plots and seed == seeds[0]:
                from protospect.training import visualize  # noqa: PLC0415

                visualize.heatmap_grid(test, scores, maps, model.calibration,
                                       out / f"heatmaps_{cat.name}_{method}_K{k}.png", title=f"{cat.name} {method} K={k} seed={seed}")
                roc_curves[k] = (test.labels.copy(), scores)
            del model, maps
        records.append(aggregate(cat.name, method, preset, k, runs, command, user_overrides))
    if out is not None:
        results_io.append_records(out, records)
        if plots and roc_curves:
            from protospect.training import visualize  # noqa: PLC0415

            visualize.roc_plot(roc_curves, out / f"roc_{cat.name}_{method}.png", title=f"{cat.name} {method} (seed {seeds[0]})")
    return records


def _percent(v) -> float | None:
    return None if v is None or not np.isfinite(v) else round(100.0 * v, 3)


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"
