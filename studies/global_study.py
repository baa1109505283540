"""Rule v12 (docs/decision.md section 32): the training-free global branch `g`, scored on every image set of a cell.

For each (category, K, seed) it takes rule v11's chosen input size from the saved scores (runs/v11 for K = 4,
runs/v11k for K = 2 / 8), rebuilds that cell's images from the seed exactly as decision_study.py drew them (shots,
the 20 held-out normals, the four kinds planted at native pixels, the calibration views, the line images and the
test split when the saved file has it) and writes `g`'s score of every image, in the saved file's order, to
``OUT/<category>_k<K>_s<seed>.npz`` (keys ``g::<set>``, plus ``size``). No model is trained; `g` reads the frozen
backbone only. Array lengths are checked against the saved PCSNet scores, so a set drawn differently stops the run.
The product's branch is training/methods/pcsnet/global_branch.py (it resizes in the graph, on floats); this study
keeps its own uint8 resize so that the tables of sections 33-35 regenerate as recorded.

    cd studies && python global_study.py ../runs/v12 [--k 2 4 8] [--only juice_bottle_loco] [--data ../../shared/data]
    cd studies && python global_study.py ../runs/v13g --k 4 --warp --scores ../runs/v13   (rule v13, section 34)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from protospect.imageio import read_rgb, resize_image
from protospect.training.backbones import create_backbone
from protospect.training.data import MVTecCategory, load_image, sample_shots
from protospect.training.fewshot import TestSet, line_good_images
from protospect.training.methods.pcsnet import _check_shots
from protospect.training.methods.pcsnet.auto_geometry import KINDS, planted_native
from protospect.training.methods.pcsnet.presets import resolve_config
from protospect.training.methods.pcsnet.train_loop import to_tensor

from decision_study import calib_views, held_out_paths
from select_640 import SIZES, load_scores, qualifies
from select_fusion import CATEGORIES, npz_path
from select_v11 import rule_pick

G_SIZE = 256  # the global branch always looks at the whole part at the backbone's home resolution
G_STAGES = (3, 4)  # stride 16 / 32 (112 + 320 channels on Lite0)
VAL = 20  # decision_study.py --val


class GlobalBranch:
    """Mean-pooled, L2-normalised stage 3 / 4 features of the image at 256 px; score = distance to the nearest shot."""

    def __init__(self):
        self.backbone = create_backbone("efficientnet_lite0", stages=G_STAGES, input_size=G_SIZE)
        self.mean, self.std = self.backbone.spec.mean, self.backbone.spec.std

    @torch.no_grad()
    def descriptors(self, images: list[np.ndarray], batch: int = 16) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch):
            x = to_tensor([resize_image(im, G_SIZE) for im in images[i:i + batch]], self.mean, self.std)
            feats = self.backbone(x)
            out.append(torch.cat([torch.nn.functional.normalize(f.mean(dim=(2, 3)), dim=1) for f in feats], 1))
        return torch.cat(out)

    @staticmethod
    def score(desc: torch.Tensor, bank: torch.Tensor) -> np.ndarray:
        return torch.cdist(desc, bank).min(1).values.numpy().astype(np.float64)


def cell_sets(cat: MVTecCategory, c: str, k: int, seed: int, size: int, with_line: bool, with_test: bool,
              kinds: tuple[str, ...] = KINDS):
    """(shots at the model size, {set: images}, calibration views per shot), drawn as decision_study.run_one draws them."""
    shot_paths = sample_shots(cat.train_good, k, seed)
    cfg = resolve_config("edge", {"category": c, "input_size": size})
    shots = _check_shots([read_rgb(p) for p in shot_paths], size)
    held_out = [read_rgb(p) for p in held_out_paths(cat, shot_paths, seed, VAL)]
    sets = {"val_normal": [resize_image(img, size) for img in held_out]}
    for kind, pairs in planted_native(held_out, size, c, kinds).items():
        sets[f"valn_{kind}"] = [p[0] for p in pairs]
    if with_line:
        sets["line_good"] = [load_image(p, size) for p in line_good_images(cat.train_good, shot_paths, seed)]
    if with_test:
        sets["test"] = TestSet.load(cat, size).images
    return shots, sets, calib_views(shots, seed, cfg.calib_augments)


def global_scores(gb: GlobalBranch, shots, sets: dict, views) -> dict[str, np.ndarray]:
    bank = gb.descriptors(shots)
    out = {name: gb.score(gb.descriptors(imgs), bank) for name, imgs in sets.items()}
    calib = []
    for i, vs in enumerate(views):  # leave-one-out: each shot's views against the other shots
        keep = [j for j in range(len(shots)) if j != i] or [i]
        calib.append(gb.score(gb.descriptors(vs), bank[keep]))
    out["normal_calib"] = np.concatenate(calib)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--k", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--only", nargs="+", default=list(CATEGORIES))
    ap.add_argument("--data", default="../../shared/data")
    ap.add_argument("--runs", default="..", help="the folder holding runs/v11 and runs/v11k")
    ap.add_argument("--scores", default=None,
                    help="where the chosen size's saved PCSNet scores are (default: runs/v11 or v11k; rule v13: runs/v13)")
    ap.add_argument("--warp", action="store_true", help="also the warp kind (valn_warp, rule v13)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gb = GlobalBranch()
    cells = [(c, k, s) for k in args.k for c in args.only for s in (0, 1, 2)]
    for c, k, s in tqdm(cells, desc="rule v12 cells"):
        dest = out / f"{c}_k{k}_s{s}.npz"
        if dest.exists():
            continue
        folder = Path(args.runs) / "runs" / ("v11" if k == 4 else "v11k")
        sc = load_scores(folder, c, k, s)
        if sc is None:
            raise SystemExit(f"global_study: no saved scores for {c} K={k} seed {s} in {folder}")
        key = rule_pick(sc, qualifies(args.data, c, k, s), "v11")
        size = SIZES[key]
        scores_dir = Path(args.scores) if args.scores else folder
        if not npz_path(scores_dir, c, k, s, size).exists():  # a queue still running: rerun to complete
            print(f"global_study: {c} K={k} seed {s}: no {npz_path(scores_dir, c, k, s, size).name} yet, skipped")
            continue
        saved = np.load(npz_path(scores_dir, c, k, s, size))
        saved_sets = {n.split("::")[1]: saved[n] for n in saved.files if n.startswith("pcs|none|max::")}
        cat = MVTecCategory(args.data, c)
        shots, sets, views = cell_sets(cat, c, k, s, size, "line_good" in saved_sets, "test" in saved_sets,
                                       KINDS + (("warp",) if args.warp else ()))
        g = global_scores(gb, shots, sets, views)
        for name, arr in g.items():
            if name in saved_sets and len(saved_sets[name]) != len(arr):
                raise SystemExit(f"global_study: {c} K={k} seed {s}: {name} has {len(arr)} images here, "
                                 f"{len(saved_sets[name])} in {npz_path(scores_dir, c, k, s, size)}")
        np.savez_compressed(dest, size=size, **{f"g::{n}": a for n, a in g.items()})


if __name__ == "__main__":
    main()
