"""Study for issue [decision]: which PatchCore detail matters (normalisation, resize filter, pooling).

The issue reports an independent PatchCore on the same Lite0 weights and stages that averaged 91 image
AUROC on a held-out part where this project's scored 79. It differed in three details; this study
crosses them, training-free, on the same shots:

  norm    tflite ((x - 127) / 128, what Lite0 was trained with, the project's) | imagenet (mean/std)
  resize  area (cv2 INTER_AREA when shrinking, the project's) | pil (PIL bilinear, antialiased)
  pool    nopad (3x3 mean, padding not counted, the project's) | pad (plain 3x3 mean, zero padding counted)

Selection columns (``val_*``): held-out train/good images that were not shots, against planted defects
on copies of them (texture blends and the small NSA kind, as rule v2 of docs/decision.md); report
columns (``test_*``) are written beside them and never read by a choice. Output: one JSON line per
(category, K, seed), one entry per variant.

    OMP_NUM_THREADS=1 python studies/patchcore_detail_study.py --data ../shared/data --category mpdd_metal_plate \
        --shots 4 --seeds 0 1 2 --textures ../shared/data/textures --out runs/patchcore_detail/mpdd_metal_plate.jsonl
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from protospect.imageio import read_rgb, resize_image
from protospect.training import metrics
from protospect.training.backbones import create_backbone
from protospect.training.data import MVTecCategory, sample_shots
from protospect.training.layers import GaussianBlur
from protospect.training.methods.pcsnet.validate import planted_sets
from protospect.training.proto_topk import knn_sqdist

NORMS = {"tflite": ((127 / 255,) * 3, (128 / 255,) * 3), "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
RESIZES = ("area", "pil")
POOLS = ("nopad", "pad")
SIZE = 256


def resize(img: np.ndarray, how: str) -> np.ndarray:
    if how == "area":
        return resize_image(img, SIZE)
    return np.asarray(Image.fromarray(img).resize((SIZE, SIZE), Image.BILINEAR))


def patch_features(backbone, images: np.ndarray, norm: str, pool: str, batch: int = 16) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, D, h, w): 3x3 local mean per stage, resampled to the first stage's grid."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMS[norm])
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch])).permute(0, 3, 1, 2).float() / 255.0
            feats = backbone((x - mean) / std)
            h, w = feats[0].shape[-2:]
            grids = []
            for f in feats:
                f = F.avg_pool2d(f, 3, 1, 1, count_include_pad=(pool == "pad"))
                if f.shape[-2:] != (h, w):
                    f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
                grids.append(f)
            out.append(torch.cat(grids, 1))
    return torch.cat(out)


def scores(bank: torch.Tensor, feats: torch.Tensor, blur: GaussianBlur) -> np.ndarray:
    n, d, h, w = feats.shape
    out = []
    for i in range(0, n, 16):
        q = feats[i:i + 16].flatten(2).transpose(1, 2)
        sq, _ = knn_sqdist(q, bank, 1)
        m = sq[..., 0].clamp_min(0).sqrt().reshape(-1, 1, h, w)
        m = blur(F.interpolate(m, size=(SIZE, SIZE), mode="bilinear", align_corners=False))
        out.append(m.flatten(1).amax(1))
    return torch.cat(out).numpy()


def main(argv=None):
    from decision_report import add_run_arguments  # noqa: PLC0415 (studies/ is on sys.path when run as a script)
    from decision_study import small_defects  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(ap)
    ap.set_defaults(shots=[4])
    ap.add_argument("--val", type=int, default=20)
    ap.add_argument("--textures", default=None)
    ap.add_argument("--variants", nargs="+", default=None, metavar="NORM|RESIZE|POOL",
                    help="only these variants (e.g. 'tflite|area|nopad' 'tflite|area|pad'); default all eight")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cat = MVTecCategory(args.data, args.category)
    backbone = create_backbone("efficientnet_lite0", stages=(2, 3), weights=None, input_size=SIZE)
    blur = GaussianBlur(4.0)
    raw_test = [read_rgb(it.path) for it in tqdm(cat.test, desc=f"{cat.name}: test", leave=False)]
    labels = np.array([it.label for it in cat.test])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    test_feats = {}  # (resize, norm, pool) -> features of the test split: the same for every K and seed
    for k, seed in itertools.product(args.shots, args.seeds):
        shot_paths = sample_shots(cat.train_good, k, seed)
        rest = [p for p in cat.train_good if p not in set(shot_paths)]
        rest = [rest[i] for i in np.random.default_rng(seed + 1).permutation(len(rest))[: args.val]]
        raw_shots, raw_normals = [read_rgb(p) for p in shot_paths], [read_rgb(p) for p in rest]
        row = {"category": cat.name, "K": k, "seed": seed, "variants": {}}
        for how in RESIZES:
            if args.variants and not any(v.split("|")[1] == how for v in args.variants):
                continue
            shots = np.stack([resize(i, how) for i in raw_shots])
            normals = [resize(i, how) for i in raw_normals]
            planted = planted_sets(normals, cat.name, args.textures)
            planted.pop("nsa")  # rule v2: the kinds that are not PCSNet's training family
            planted["nsa_small"] = small_defects(normals, cat.name)
            test = None
            for norm, pool in itertools.product(NORMS, POOLS):
                if args.variants and f"{norm}|{how}|{pool}" not in args.variants:
                    continue
                bank = patch_features(backbone, shots, norm, pool)
                bank = bank.flatten(2).transpose(1, 2).reshape(-1, bank.shape[1])
                s_norm = scores(bank, patch_features(backbone, np.stack(normals), norm, pool), blur)
                v = {}
                for kind, pairs in planted.items():
                    s = scores(bank, patch_features(backbone, np.stack([p[0] for p in pairs]), norm, pool), blur)
                    v[f"val_{kind}"] = 100 * metrics.image_auroc(np.r_[np.zeros(len(s_norm)), np.ones(len(s))], np.r_[s_norm, s])
                if (how, norm, pool) not in test_feats:
                    test = np.stack([resize(i, how) for i in raw_test]) if test is None else test
                    test_feats[(how, norm, pool)] = patch_features(backbone, test, norm, pool)
                v["test_image_auroc"] = 100 * metrics.image_auroc(labels, scores(bank, test_feats[(how, norm, pool)], blur))
                row["variants"][f"{norm}|{how}|{pool}"] = {key: round(float(x), 3) for key, x in v.items()}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(cat.name, k, seed, {n: round(np.mean([x for key, x in v.items() if key.startswith("val_")]), 1)
                                  for n, v in row["variants"].items()}, flush=True)


if __name__ == "__main__":
    main()
