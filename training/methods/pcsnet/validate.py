"""Design validation WITHOUT test images: held-out good training images vs synthetic defects.

    python -m protospect.training.methods.pcsnet.validate --data ../shared/data/bottle --shots 4 \
        --set k=16 --set cas_width=64

K shots are drawn from train/good with the seed; up to --val other train/good images (never the
test split) are the normals. Two defect kinds are planted on copies of them: NSA self-swap (the
training family, with a different random stream) and, when --textures is given, DRAEM-style
texture blends (a family the model never trained on, so it checks generalisation). Prints image
and pixel AUROC per kind, the training time, CPU batch-1 latency and parameter counts.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from protospect.imageio import hw_of, read_rgb, resize_image
from protospect.training.cli_train import parse_settings
from protospect.training.data import MVTecCategory, sample_shots
from protospect.training.metrics import image_auroc, pixel_auroc
from protospect.training.synthesis import make_pseudo_anomaly, nsa_params_for, object_mask

from . import fit
from .train_loop import to_tensor

VAL_SEED = 424242  # the validation defects' own stream, unrelated to training's


def _parse_set(items):
    """--set KEY=VALUE (append, None when absent) through train's one parser; the studies import this name."""
    return parse_settings(items or [])


def planted_sets(normals, category, textures):
    rng = np.random.default_rng(VAL_SEED)
    params = nsa_params_for(category)
    sets = {"nsa": []}
    for img in normals:
        out = make_pseudo_anomaly(img, rng, params, object_mask(img, params))
        if out is not None:
            sets["nsa"].append(out)
    if textures:
        from protospect.training.textures import DraemSynthesizer  # noqa: PLC0415

        draem = DraemSynthesizer(textures)
        sets["texture"] = [draem(img, rng) for img in normals]
    return sets


def _batches(model, images, chunk):
    """Normalised tensors of ``images`` in chunks, on the model's device."""
    device = next(iter(model.buffers())).device
    for i in range(0, len(images), chunk):
        yield to_tensor(images[i:i + chunk], model.meta["mean"], model.meta["std"]).to(device)


@torch.no_grad()
def score(model, images, chunk=4):
    return np.concatenate([model(x).anomaly_map[:, 0].cpu().numpy() for x in _batches(model, images, chunk)])


@torch.no_grad()
def image_scores(model, images, chunk=4) -> np.ndarray:
    """The model's image score (what the station thresholds: the map's maximum, or z(p) + z(g) with the global branch)."""
    return np.concatenate([model(x).image_score.cpu().numpy() for x in _batches(model, images, chunk)])


@torch.no_grad()
def global_scores(model, images, chunk=4) -> np.ndarray:
    """g alone (global_branch.py): the distance of each image's descriptor to the nearest shot's."""
    return np.concatenate([model.global_branch.scores(x).cpu().numpy() for x in _batches(model, images, chunk)])


def evaluate(model, normals, sets):
    normal_maps = score(model, normals)
    rows = {}
    for kind, pairs in sets.items():
        imgs = [p[0] for p in pairs]
        masks = np.stack([p[1] for p in pairs]).astype(bool)
        maps = score(model, imgs)
        img_scores = np.concatenate([normal_maps.reshape(len(normals), -1).max(1), maps.reshape(len(imgs), -1).max(1)])
        labels = np.r_[np.zeros(len(normals)), np.ones(len(imgs))]
        px_scores = np.concatenate([normal_maps.ravel(), maps.ravel()])
        px_labels = np.concatenate([np.zeros(normal_maps.size, bool), masks.ravel()])
        rows[kind] = {"image_auroc": 100 * image_auroc(labels, img_scores),
                      "pixel_auroc": 100 * pixel_auroc(px_labels, px_scores),
                      "recall_at_threshold": float((maps.reshape(len(imgs), -1).max(1) >= model.calibration["threshold"]).mean())}
    rows["heldout_normal_scores"] = sorted(round(float(v), 3) for v in normal_maps.reshape(len(normals), -1).max(1))
    if "pseudo_anomaly_scores" in model.calibration:  # pcsnet's calibration details
        rows["calib_normal_max"] = round(max(model.calibration["normal_scores"]), 3)
        rows["calib_pseudo_scores"] = sorted(round(v, 3) for v in model.calibration["pseudo_anomaly_scores"])
    rows["threshold"] = round(model.calibration["threshold"], 3)
    rows["false_alarms_at_threshold"] = float((normal_maps.reshape(len(normals), -1).max(1) >= model.calibration["threshold"]).mean())
    return rows


@torch.no_grad()
def latency_ms(model, size, repeats=10):
    x = torch.randn(1, 3, *hw_of(size))
    model(x)
    t = time.perf_counter()
    for _ in range(repeats):
        model(x)
    return 1000 * (time.perf_counter() - t) / repeats


def count(module):
    return sum(p.numel() for p in module.parameters())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--category", default=None, help="NSA table row (default: the folder name)")
    ap.add_argument("--preset", default="edge")
    ap.add_argument("--method", default="pcsnet", help="compare another registered method on the same split")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val", type=int, default=10)
    ap.add_argument("--textures", default=None)
    ap.add_argument("--set", action="append", help="config override key=value (JSON value)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the dev machine is shared: 1 thread avoids OpenMP oversubscription

    cat = MVTecCategory(args.data)
    category = args.category or cat.name
    shots = sample_shots(cat.train_good, args.shots, args.seed)
    rest = [p for p in cat.train_good if p not in set(shots)]
    rest = [rest[i] for i in np.random.default_rng(args.seed + 1).permutation(len(rest))[: args.val]]
    overrides = {"category": category, **_parse_set(args.set)}
    if args.method == "pcsnet":
        model = fit([read_rgb(p) for p in shots], args.preset, args.seed, overrides, progress=False)
    else:
        from protospect.training.methods import get_method  # noqa: PLC0415

        model = get_method(args.method).fit([read_rgb(p) for p in shots], args.preset, args.seed, None)
    size = model.meta["input_size"]
    normals = [resize_image(read_rgb(p), size) for p in rest]
    rows = evaluate(model, normals, planted_sets(normals, category, args.textures))
    result = {"data": args.data, "method": args.method, "K": args.shots, "seed": args.seed, "overrides": overrides,
              "latency_ms_cpu1": round(latency_ms(model, size), 1), "params_total": count(model), **rows}
    if args.method == "pcsnet":
        result.update(train_seconds=model.meta["train_seconds"], train_cpu_seconds=round(model.train_log.cpu_seconds, 1),
                      params_trainable=count(model.features.pfa) + count(model.features.guide) + count(model.head),
                      bank=list(model.bank.shape))
    print(json.dumps(result, default=lambda v: round(v, 2) if isinstance(v, float) else str(v)))


if __name__ == "__main__":
    main()
