"""Study for issue [decision]: the label-free foreground mask (``foreground=pca``), alone and with the others.

For each (category, K, seed) the mask is fitted on the shots first (scoring.ForegroundMask: PC1 of the
shots' patch features, Otsu cut). When it switches itself off, every decision is unchanged and the run
records only that. When it is on, one PCSNet edge model is trained as decision_study.py trains it and a
few decisions are scored with and without the mask, from the same backbone pass.

Selection columns (``val_*``: held-out train/good normals against planted texture blends and small NSA
patches, the kinds of rule v2 in docs/decision.md) and report columns (``test_*``) as in decision_study.py.

    OMP_NUM_THREADS=1 python studies/foreground_study.py --data ../shared/data --category mpdd_metal_plate \
        --shots 4 --seeds 0 1 2 --textures ../shared/data/textures --out runs/foreground/mpdd_metal_plate.jsonl
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from decision_report import add_run_arguments
from decision_study import Branches, batched_maps, normal_maps, small_defects
from protospect.imageio import read_rgb, resize_image
from protospect.training import metrics
from protospect.training.data import MVTecCategory, sample_shots
from protospect.training.fewshot import TestSet
from protospect.training.layers import patch_grid
from protospect.training.methods.pcsnet import PCSNetModel, _check_shots, _create_backbone, _meta
from protospect.training.methods.pcsnet.presets import resolve_config
from protospect.training.methods.pcsnet.scoring import ForegroundMask, MapFusion
from protospect.training.methods.pcsnet.train_loop import seed_everything, to_tensor, train
from protospect.training.methods.pcsnet.validate import planted_sets

DECISIONS = (("pcs", "none", "max"), ("pcs", "none", "peak"), ("pcs", "global", "top"), ("pcs", "position", "max"),
             ("pcs+nn4", "global", "max"), ("pcs+nn4", "global", "top"), ("pcs+nn4", "global", "peak"))
BRANCHES = {"pcs": ["pcs"], "pcs+nn4": ["pcs", "nn4"]}


class MaskedBranches(Branches):
    """decision_study's branches plus the foreground mask of each image, from the same backbone pass."""

    def __init__(self, model: PCSNetModel, images, fg: ForegroundMask):
        super().__init__(model, images)
        self.fg = fg

    @torch.no_grad()
    def maps(self, x: torch.Tensor, leave_out: int | None = None) -> dict[str, np.ndarray]:
        out, grid = self.tensors(x, leave_out)
        out["fg"] = self.fg.from_grid(grid, (int(x.shape[-2]), int(x.shape[-1])))
        return {k: v[:, 0].numpy() for k, v in out.items()}


def scores(normal: dict, maps: dict, fusion: str, norm: str, score: str, masked: bool, size: int) -> np.ndarray:
    names = BRANCHES[fusion]
    mf = MapFusion(len(names), size, norm, score, 0.01)
    if norm != "none":
        mf.set_statistics([torch.from_numpy(normal[n][:, None]) for n in names])
    with torch.no_grad():
        fused = mf.fuse([torch.from_numpy(maps[n][:, None]) for n in names])
        mask = torch.from_numpy(maps["fg"][:, None]) if masked else None
        return mf.score(fused, mask).numpy()


def run_one(cat, k, seed, args, test):
    shot_paths = sample_shots(cat.train_good, k, seed)
    cfg = resolve_config("edge", {"category": cat.name})
    images = _check_shots([read_rgb(p) for p in shot_paths], cfg.input_size)
    seed_everything(seed)
    backbone = _create_backbone(cfg, None)
    model = PCSNetModel(backbone, cfg, _meta(cfg, "edge", backbone.spec))
    fg = ForegroundMask(sum(backbone.spec.channels))
    with torch.no_grad():
        info = fg.fit(patch_grid(backbone(to_tensor(images, model.meta["mean"], model.meta["std"]))))
    row = {"category": cat.name, "K": k, "seed": seed, "foreground": info, "variants": {}}
    if not info["active"]:
        return row  # the mask is off: every decision is exactly decision_study's
    log = train(model, images, seed, progress=False)
    model.eval()
    br = MaskedBranches(model, images, fg)
    br.per_shot_protos = log.shot_prototypes
    size = cfg.input_size
    rest = [p for p in cat.train_good if p not in set(shot_paths)]
    rest = [rest[i] for i in np.random.default_rng(seed + 1).permutation(len(rest))[: args.val]]
    normals = [resize_image(read_rgb(p), size) for p in rest]
    planted = planted_sets(normals, cat.name, args.textures)
    planted.pop("nsa")
    planted["nsa_small"] = small_defects(normals, cat.name)
    sets = {"val_normal": batched_maps(br, normals), "test": batched_maps(br, test.images)}
    for kind, pairs in planted.items():
        sets[f"val_{kind}"] = batched_maps(br, [p[0] for p in pairs])
    normal = normal_maps(br, images, seed, cfg.calib_augments)
    for fusion, norm, score in DECISIONS:
        for masked in (False, True):
            s = {name: scores(normal, maps, fusion, norm, score, masked, size) for name, maps in sets.items()}
            v = {f"val_{kind}": 100 * metrics.image_auroc(np.r_[np.zeros(len(s["val_normal"])), np.ones(len(s[f"val_{kind}"]))],
                                                          np.r_[s["val_normal"], s[f"val_{kind}"]]) for kind in planted}
            v["test_image_auroc"] = 100 * metrics.image_auroc(test.labels, s["test"])
            row["variants"][f"{fusion}|{norm}|{score}|{'fg' if masked else 'all'}"] = {a: round(float(b), 3) for a, b in v.items()}
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(ap)
    ap.set_defaults(shots=[4])
    ap.add_argument("--val", type=int, default=20)
    ap.add_argument("--textures", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cat = MVTecCategory(args.data, args.category)
    test = TestSet.load(cat, resolve_config("edge", {}).input_size)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for k in args.shots:
        for seed in args.seeds:
            row = run_one(cat, k, seed, args, test)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            val = {n: round(float(np.mean([x for key, x in v.items() if key.startswith("val_")])), 1)
                   for n, v in row["variants"].items()}
            print(cat.name, k, seed, row["foreground"], val, flush=True)


if __name__ == "__main__":
    main()
