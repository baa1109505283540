"""Picture for docs/decision.md: the label-free foreground mask (``foreground=pca``) on each category's shots.

Per category (a row): the K = 4 seed-0 shots, their projection on the shots' first principal component
(bright = part side), and the undilated mask; the title says whether the mask switched itself on.

    python studies/foreground_masks_figure.py --data ../shared/data --out docs/decision/foreground_masks.png
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from protospect.imageio import read_rgb, resize_image
from protospect.training.backbones import create_backbone
from protospect.training.data import MVTecCategory, sample_shots
from protospect.training.layers import patch_grid
from protospect.training.methods.pcsnet.scoring import ForegroundMask
from protospect.training.methods.pcsnet.train_loop import to_tensor

CATEGORIES = ("hazelnut_toy", "mpdd_metal_plate", "juice_bottle_loco", "bottle", "deeppcb_00041", "elpv_mono")


def main(argv=None):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--categories", nargs="+", default=list(CATEGORIES))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    bb = create_backbone("efficientnet_lite0", stages=(2, 3), weights=None, input_size=256)
    fig, axes = plt.subplots(len(args.categories), 12, figsize=(18, 1.7 * len(args.categories)), squeeze=False)
    for row, name in enumerate(args.categories):
        cat = MVTecCategory(args.data, name)
        imgs = [resize_image(read_rgb(p), 256) for p in sample_shots(cat.train_good, 4, 0)]
        with torch.no_grad():
            g = patch_grid(bb(to_tensor(imgs, bb.spec.mean, bb.spec.std)))
        fm = ForegroundMask(g.shape[1])
        info = fm.fit(g)
        proj = ((g - fm.centre[None, :, None, None]) * fm.axis[None, :, None, None]).sum(1).numpy()
        mask = fm.grid_mask(g, dilate=False)[:, 0].numpy()
        for i in range(4):
            for j, (pic, cmap) in enumerate(((imgs[i], None), (proj[i], "gray"), (mask[i], "gray"))):
                ax = axes[row, 3 * i + j]
                ax.imshow(pic, cmap=cmap, **({"vmin": 0, "vmax": 1} if j == 2 else {}))  # off = all white
                ax.set_xticks([])
                ax.set_yticks([])
        axes[row, 0].set_ylabel(name, fontsize=8)
        axes[row, 0].set_title(f"mask {'ON' if info['active'] else 'off'}: cover {np.mean(info['cover']):.2f}, "
                               f"border band {info['border']:.2f}", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
