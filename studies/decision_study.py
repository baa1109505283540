"""Study for issue [decision]: which image-level score, measured without choosing on test images.

One PCSNet edge model is trained per (category, K, seed) -- training does not depend on any of the
candidates -- and every candidate decision is computed from the same backbone pass:

  branches  pcs (the CAS map), nn1 (nearest neighbour over every shot patch), nn4 (the same with the
            shots rotated by 0/90/180/270 degrees in the bank)
  fusion    pcs | nn1 | nn4 | pcs+nn1 | pcs+nn4
  normalise none | global | position (normal statistics: leave-one-out + jitter on the shots, as
            threshold.calibrate computes them)
  score     max | top (mean of the top 1 % of the map) | peak (max of the map minus its local mean)

Selection columns (``val_*``): held-out train/good images that were not shots (up to --val) against
planted defects on copies of them (NSA self-swap and DTD texture blends, pcsnet.validate). Report
columns (``test_*``): the test split, written to the same JSON line but never read by the selection
(select_decision.py reads only ``val_*``). Output: one JSON line per (category, K, seed).

    OMP_NUM_THREADS=1 python studies/decision_study.py --data ../shared/data --category bottle \
        --shots 2 4 8 --seeds 0 1 2 --textures ../shared/data/textures --out runs/decision/bottle.jsonl
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from protospect.imageio import read_rgb, resize_image, size_record
from protospect.runtime import line_threshold
from protospect.training import metrics
from protospect.training.calibrate import CALIB_SEED_OFFSET, jitter
from protospect.training.data import MVTecCategory, load_image, sample_shots
from protospect.training.layers import patch_grid
from protospect.training.logical_defects import logical_sets, small_nsa_defects as small_defects
from protospect.training.fewshot import TestSet, line_good_images, line_metrics
from protospect.training.methods.pcsnet import PCSNetModel, _check_shots, _create_backbone, _meta, nn_shot_patches, with_aspect
from protospect.training.methods.pcsnet.auto_geometry import KINDS, planted_native
from protospect.training.methods.pcsnet.model import as_queries
from protospect.training.methods.pcsnet.presets import resolve_config
from protospect.training.methods.pcsnet.scoring import MapFusion, NearestNeighbourBranch
from protospect.training.methods.pcsnet.train_loop import seed_everything, to_tensor, train
from protospect.training.methods.pcsnet.validate import _parse_set, planted_sets

FUSIONS = {"pcs": ["pcs"], "nn1": ["nn1"], "nn4": ["nn4"], "pcs+nn1": ["pcs", "nn1"], "pcs+nn4": ["pcs", "nn4"]}
NORMALISE = ("none", "global", "position")
SCORES = ("max", "top", "peak")
PIXEL_VARIANTS = (("pcs", "none"), ("nn1", "none"), ("pcs+nn1", "global"), ("pcs+nn1", "position"),
                  ("pcs+nn4", "global"), ("pcs+nn4", "position"), ("pcs", "position"))


class Branches:
    """The trained model plus both nn banks; maps() gives every branch for a batch."""

    def __init__(self, model: PCSNetModel, images: list[np.ndarray], branches=("pcs", "nn1", "nn4")):
        self.model = model
        self.rotations = [int(b[2:]) for b in branches if b.startswith("nn")]  # the nn banks to compute
        # the nn branch materialises (batch, N, K*V*N) distances: 8 images at 256 px, 1 at 512 (about 1 GB each)
        self.batch = 8 if model.cfg.hw[0] * model.cfg.hw[1] <= 256 * 256 or not self.rotations else 1
        if self.rotations:  # the shots' patches, only for the banks asked for (4 backbone passes per shot for nn4)
            views = max(self.rotations)
            patches = nn_shot_patches(model, images, rotations=views)  # (K, V*N, D), views in rotation order
            self.shot_nn = patches.reshape(len(images), views, -1, patches.shape[-1])  # (K, V, N, D)
            self.nn = NearestNeighbourBranch(0, self.shot_nn.shape[-1], model.cfg.blur_sigma)

    def nn_bank(self, rotations: int, leave_out: int | None = None) -> torch.Tensor:
        keep = [i for i in range(self.shot_nn.shape[0]) if i != leave_out]
        return self.shot_nn[keep, :rotations].reshape(-1, self.shot_nn.shape[-1])

    @torch.no_grad()
    def tensors(self, x: torch.Tensor, leave_out: int | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every branch map (B,1,S,S) of a batch, and the patch grid they were read from (for studies that add maps)."""
        m = self.model
        size = (int(x.shape[-2]), int(x.shape[-1]))
        feats = m.features.backbone(x)
        phi, guide = m.features.from_backbone(feats)
        grid = patch_grid(feats)
        out = {"pcs": m.head(m.knn(as_queries(phi)), guide, out_size=size).anomaly_map}
        for r in self.rotations:
            out[f"nn{r}"] = self.nn.from_grid(grid, size, self.nn_bank(r, leave_out))
        return out, grid

    def maps(self, x: torch.Tensor, leave_out: int | None = None) -> dict[str, np.ndarray]:
        return {k: v[:, 0].numpy() for k, v in self.tensors(x, leave_out)[0].items()}


def batched_maps(br: Branches, images, batch=None, desc=""):
    batch = batch or br.batch
    parts = []
    for i in tqdm(range(0, len(images), batch), desc=desc, leave=False, disable=not desc):
        x = to_tensor(list(images[i:i + batch]), br.model.meta["mean"], br.model.meta["std"])
        parts.append(br.maps(x))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def calib_views(images, seed, augments) -> list[list[np.ndarray]]:
    """Each shot's jittered views, drawn from the stream and in the order threshold.calibrate draws them."""
    rng = np.random.default_rng(seed + CALIB_SEED_OFFSET)
    return [[jitter(img, rng) for _ in range(augments)] for img in images]


def held_out_paths(cat, shot_paths, seed, val):
    """Up to ``val`` train/good images that are not shots, in the seed's order (the held-out normals)."""
    rest = [p for p in cat.train_good if p not in set(shot_paths)]
    return [rest[i] for i in np.random.default_rng(seed + 1).permutation(len(rest))[:val]]


def normal_maps(br: Branches, images, seed, augments):
    """Leave-one-out + jitter maps of the shots, in the order threshold.calibrate draws them."""
    model, k = br.model, len(images)
    per_shot = br.per_shot_protos
    full = model.bank.clone()
    parts = []
    for i, (img, views) in enumerate(zip(images, calib_views(images, seed, augments))):
        if k > 1:
            model.bank.copy_(model.bank_from_shots(per_shot[[j for j in range(k) if j != i]]))
        step = min(augments, br.batch)
        for j in range(0, augments, step):
            x = to_tensor(views[j:j + step], model.meta["mean"], model.meta["std"])
            parts.append(br.maps(x, leave_out=i if k > 1 else None))
    model.bank.copy_(full)
    return {b: np.concatenate([p[b] for p in parts]) for b in parts[0]}


def decisions(normal: dict, evaluated: dict[str, dict], size: int) -> dict:
    """variant name -> {set name: (scores, fused maps or None)}, for every fusion whose branches were computed."""
    out = {}
    for fusion, names in FUSIONS.items():
        if any(n not in normal for n in names):
            continue
        for norm in NORMALISE:
            mf = MapFusion(len(names), size, norm, "max", 0.01)
            if norm != "none":
                mf.set_statistics([torch.from_numpy(normal[n][:, None]) for n in names])
            for score in SCORES:
                mf.image_score = score
                res = {}
                for set_name, maps in [("normal_calib", normal)] + list(evaluated.items()):
                    with torch.no_grad():
                        fused = mf.fuse([torch.from_numpy(maps[n][:, None]) for n in names])
                        s = mf.score(fused).numpy()
                    keep_map = score == "max" and (fusion, norm) in PIXEL_VARIANTS and set_name == "test"
                    res[set_name] = (s, fused[:, 0].numpy() if keep_map else None)
                out[f"{fusion}|{norm}|{score}"] = res
    return out


def at_size(maps: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Maps (N, H, W) area-resampled to hw, so models of different input sizes are scored on the same masks."""
    if tuple(maps.shape[-2:]) == tuple(hw):
        return maps
    return np.stack([cv2.resize(m, (hw[1], hw[0]), interpolation=cv2.INTER_AREA) for m in maps])


def run_one(cat, category, k, seed, args, tests, metric_masks: np.ndarray | None = None):
    """``tests(size)``: the test set at a model input size (None with --no-test)."""
    shot_paths = sample_shots(cat.train_good, k, seed)
    shots_rgb = [read_rgb(p) for p in shot_paths]
    cfg = with_aspect(resolve_config("edge", {"category": category, **_parse_set(args.set)}), shots_rgb)
    images = _check_shots(shots_rgb, cfg.size)
    test = tests(cfg.size)
    seed_everything(seed)
    backbone = _create_backbone(cfg, None)
    model = PCSNetModel(backbone, cfg, _meta(cfg, "edge", backbone.spec))
    t0 = time.perf_counter()
    log = train(model, images, seed, progress=False)
    fit_s = time.perf_counter() - t0
    model.eval()
    br = Branches(model, images, args.branches)
    br.per_shot_protos = log.shot_prototypes
    size = cfg.size

    held_out = [read_rgb(p) for p in held_out_paths(cat, shot_paths, seed, args.val)]
    normals = [resize_image(img, size) for img in held_out]
    planted = planted_sets(normals, category, args.textures)
    if args.small:
        planted["nsa_small"] = small_defects(normals, category)
    if args.logical:  # misplaced / missing normal content (training/logical_defects.py, rule v5)
        planted.update(logical_sets(normals, category))
    native = {}
    if args.native_plant:  # rule v6: the same kinds planted at the images' own pixels, then resized (valn_*)
        native = planted_native(held_out, size, category, KINDS + (("warp",) if args.warp else ()))
    sets = {"val_normal": batched_maps(br, normals)}
    for kind, pairs in planted.items():
        sets[f"val_{kind}"] = batched_maps(br, [p[0] for p in pairs])
    for kind, pairs in native.items():
        sets[f"valn_{kind}"] = batched_maps(br, [p[0] for p in pairs])
    line_paths = line_good_images(cat.train_good, shot_paths, seed) if test is not None else []
    if line_paths:
        sets["line_good"] = batched_maps(br, [load_image(p, size) for p in line_paths])
    if test is not None:
        sets["test"] = batched_maps(br, test.images, desc=f"{category} K={k} s={seed} test")
    normal = normal_maps(br, images, seed, cfg.calib_augments)
    dec = decisions(normal, sets, size)

    row = {"category": category, "K": k, "seed": seed, "shots": [p.name for p in shot_paths], "fit_s": round(fit_s, 1),
           "input_size": size_record(size), "grid": cfg.grid, "prototypes": cfg.n_prototypes,
           "n_val_normal": len(normals),
           "variants": {}}
    for name, res in dec.items():
        v = {}
        nrm = res["val_normal"][0]
        for col in [f"val_{kind}" for kind in planted] + [f"valn_{kind}" for kind in native]:
            s = res[col][0]
            v[col] = 100 * metrics.image_auroc(np.r_[np.zeros(len(nrm)), np.ones(len(s))], np.r_[nrm, s])
        if test is not None:
            s, fmap = res["test"]
            v["test_image_auroc"] = 100 * metrics.image_auroc(test.labels, s)
            masks = test.masks if metric_masks is None else metric_masks
            if fmap is not None and masks is not None:
                fmap = at_size(fmap, masks.shape[-2:])
                v["test_pixel_auroc"] = 100 * metrics.pixel_auroc(masks, fmap)
                if args.aupro:
                    v["test_aupro"] = 100 * metrics.aupro(masks, fmap)
            if "line_good" in res:
                thr = line_threshold.choose(res["line_good"][0])
                at = metrics.threshold_stats(test.labels, s, thr)
                v["test_escape_line"] = 100 * at["escape_rate"]
                v["test_false_alarm_line"] = 100 * at["false_alarm_rate"]
                # the station's operating point (conformal, A = 5 % / 1 %) on the same good images
                for key, val in line_metrics(test.labels, s, res["line_good"][0]).items():
                    if key != "line_threshold" and val is not None:
                        v[f"test_{key}"] = 100 * val
        row["variants"][name] = {key: round(float(val), 3) for key, val in v.items()}
    if args.save_scores:  # per-image scores, for fusions of models trained in separate jobs (rule v8)
        save_scores(Path(args.out), k, seed, dec, test)
    if test is not None and args.diagnose and seed == args.seeds[0]:
        row["diagnosis"] = diagnose(test, dec, category, k, args)
    return row


SAVED_VARIANTS = ("pcs|none|max", "nn1|none|max")


def save_scores(out: Path, k: int, seed: int, dec: dict, test: TestSet | None) -> Path:
    """``<out>.k<K>s<seed>.npz``: every set's image scores of the plain-maximum decisions (keys ``variant::set``,
    sets as in decisions(): normal_calib, val_normal, val_* / valn_* kinds, line_good, test) and the test labels.
    The image order is fixed by the seed, so two jobs of one cell at different input sizes line up image by image."""
    arrays = {f"{name}::{set_name}": np.asarray(res[0], np.float64)
              for name in SAVED_VARIANTS if name in dec for set_name, res in dec[name].items()}
    if test is not None:
        arrays["test_labels"] = np.asarray(test.labels, np.int8)
    path = out.with_name(f"{out.name}.k{k}s{seed}.npz")
    np.savez_compressed(path, **arrays)
    return path


def diagnose(test: TestSet, dec, category, k, args) -> dict:
    """Where the old default's maximum sits on good vs defective test images (docs/decision.md part 1)."""
    from decision_report import hottest_pixels  # noqa: PLC0415 (studies/ is on sys.path when run as a script)
    s_old, m_old = dec["pcs|none|max"]["test"]
    info = {}
    for label, name in ((0, "good"), (1, "defective")):
        idx, border, in_mask = hottest_pixels(test, m_old, label)
        info[name] = {"n": int(len(idx)), "max_mean": float(np.mean(s_old[idx])), "max_std": float(np.std(s_old[idx])),
                      "argmax_in_border_band": float(np.mean(border)) if len(idx) else None}
        if in_mask is not None:
            info[name]["argmax_inside_defect"] = in_mask
    if args.figures:
        _figure(test, s_old, m_old, category, k, Path(args.figures))
    return info


def _figure(test, scores, maps, category, k, folder):
    from decision_report import figures  # noqa: PLC0415 (studies/ is on sys.path when run as a script)

    figures(test, {"old": (scores, maps)}, category, k, folder)


def main(argv=None):
    from decision_report import add_run_arguments  # noqa: PLC0415 (studies/ is on sys.path when run as a script)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(ap)
    ap.add_argument("--val", type=int, default=20)
    ap.add_argument("--textures", default=None)
    ap.add_argument("--no-test", action="store_true", help="validation columns only")
    ap.add_argument("--small", action="store_true", help="also plant small NSA defects (val_nsa_small)")
    ap.add_argument("--native-plant", action="store_true",
                    help="also plant nsa_small / misplace / erase at the images' own pixels, then resize (valn_*)")
    ap.add_argument("--warp", action="store_true", help="with --native-plant: also the warp kind (valn_warp, rule v13)")
    ap.add_argument("--logical", action="store_true", help="also plant logical defects (val_misplace, val_erase)")
    ap.add_argument("--aupro", action="store_true", help="AUPRO of the kept maps (the pixel variants)")
    ap.add_argument("--save-scores", action="store_true",
                    help="also write each run's per-image scores (pcs / nn1, plain maximum) to <out>.k<K>s<seed>.npz")
    ap.add_argument("--diagnose", action="store_true")
    ap.add_argument("--figures", default=None)
    ap.add_argument("--set", action="append", help="PCSNet config override key=value (e.g. input_size=384)")
    ap.add_argument("--branches", nargs="+", choices=("pcs", "nn1", "nn4"), default=["pcs", "nn1", "nn4"],
                    help="maps to compute (at 512 px the nn branches cost ~1 GB per image): fusions of the others are skipped")
    ap.add_argument("--metric-size", type=int, default=None,
                    help="pixel metrics on maps area-resampled to this size (compare input sizes on the same masks)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cat = MVTecCategory(args.data, args.category)
    loaded: dict = {}

    def tests(size):  # the test split at each input size a run needs (aspect=keep: the shots decide it)
        if args.no_test:
            return None
        if size not in loaded:
            loaded[size] = TestSet.load(cat, size)
        return loaded[size]
    metric_masks = None
    if not args.no_test and args.metric_size and cat.has_masks:
        metric_masks = tests(args.metric_size).masks
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for k in args.shots:
        for seed in args.seeds:
            row = run_one(cat, cat.name, k, seed, args, tests, metric_masks)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            best = max(row["variants"], key=lambda n: np.mean([v for key, v in row["variants"][n].items() if key.startswith("val_")]))
            print(f"{cat.name} K={k} seed={seed} fit {row['fit_s']} s; old val "
                  f"{[round(v, 1) for key, v in row['variants']['pcs|none|max'].items() if key.startswith('val_')]}; "
                  f"best val {best}", flush=True)


if __name__ == "__main__":
    main()
