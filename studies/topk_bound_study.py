"""How many candidates would a per-query bound shared across splits save? (numpy, CPU; design study for
issue 5's large-k case, not product code.)

The fused kernel splits the bank into S segments (8 at PCSNet's 4096 x 4096, k = 200) that run at the
same time; each writes every score below its own running threshold to a candidate buffer, and a merge
kernel selects the k smallest of the union. With k = 200 and 512 prototypes per split a split never
compacts, so every score is written and merged (4096 per query). A bound that any split may use must be
valid: at least k of the query's scores lie at or below it. Two ways splits could publish one, tile by
tile (all splits assumed in lockstep, which is how one wave of blocks runs):

* quantile-max: each split publishes its r-th smallest score so far, r = ceil(k / S); the max over
  splits bounds the k-th (S x r >= k scores lie below it). Weak when a query's neighbours sit in one split.
* cdf-points: each split publishes (value, count) points, its c-th smallest for c in {r, 2r, 4r, k}; the
  bound is the smallest published value v whose counts (per split, the largest c with its c-th <= v)
  add up to k. Also published once only (after tile 0 or 1: one select per row and split, not one per
  tile, which is what a kernel could afford).
* thread points: no select at all. In the fp16 kernel's epilogue a tile row's 128 scores sit in 16
  threads, 8 each; each thread's smallest (and 2nd smallest) are in registers anyway, and the max over the
  16 threads is a point with count 16 (32) for that tile. Every tile adds such points; loose (a max of
  minima), but free of the select whose cost made the end-of-split cut slower.

Last, per data set: how concentrated a radix select's first pass is (lanes of a warp adding to one
histogram bin), the case for the kernel's -DPROTOSPECT_TOPK_AGG_ATOMICS comparison build.

Each row also checks the scheme is exact: the k smallest (value, then index) of what was written equal
the query's k smallest (a coarse-grid data set makes many scores equal). Prints, per data set, the scores
written per query (what the partial kernel stores and the merge reads)
and the candidates left under the final bound (what the merge would select from), against today's kernel
(no shared bound) and an oracle (the true k-th known in advance: k).

    python studies/topk_bound_study.py            # 15 s on 2 cores
    python studies/topk_bound_study.py --real ../shared/data/bottle   # + real PCSNet features (torch)
"""
from __future__ import annotations

import argparse

import numpy as np


def smooth_field(rng, grid: int, dim: int, sigma: float) -> np.ndarray:
    """(grid*grid, dim) features that vary smoothly over a grid x grid image (Gaussian-blurred noise,
    separable blur by FFT): neighbouring positions have similar features, as PCSNet's per-position
    prototypes and query features do."""
    noise = rng.standard_normal((grid, grid, dim)).astype(np.float32)
    freq = np.fft.fftfreq(grid)
    kernel = np.exp(-2 * (np.pi * sigma) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    field = np.fft.ifft2(np.fft.fft2(noise, axes=(0, 1)) * kernel[:, :, None], axes=(0, 1)).real
    field /= field.std()
    return field.reshape(grid * grid, dim).astype(np.float32)


def scores(q: np.ndarray, bank: np.ndarray) -> np.ndarray:
    return (bank * bank).sum(1)[None, :] - 2.0 * q @ bank.T  # the kernel's ranking score


def kth(x: np.ndarray, c: int) -> float:
    return float(np.partition(x, c - 1)[c - 1]) if len(x) >= c else np.inf


def combine(units: list[list[tuple[float, int]]], k: int) -> float:
    """The smallest published value with >= k scores provably at or below it (inf: none yet). A unit is one
    publisher's (value, count) points over scores no other unit counts: counts add across units, and within
    a unit the largest count at or below the value holds."""
    best = np.inf
    for v in {value for unit in units for value, _ in unit}:
        total = sum(max([c for value, c in unit if value <= v], default=0) for unit in units)
        if total >= k:
            best = min(best, v)
    return best


def cdf_points(seen: np.ndarray, counts: list[int]) -> list[tuple[float, int]]:
    """A split's exact points over everything it has seen: its c-th smallest score, for each c."""
    return [(kth(seen, c), c) for c in counts if len(seen) >= c]


def thread_points(part: np.ndarray, ranks: list[int]) -> list[tuple[float, int]]:
    """Points a tile's epilogue could publish without a select: in the fp16 kernel's mma.sync layout a tile
    row's 128 scores sit in 16 threads (4 warps x 4 lanes, 8 columns each); each thread sorts its 8, and the
    row's point for rank r is the max over threads of their r-th smallest, which >= 16 r scores lie below."""
    groups = [[wm * 32 + 8 * j + 2 * t4 + e for j in range(4) for e in range(2)] for wm in range(4) for t4 in range(4)]
    groups = [[c for c in g if c < len(part)] for g in groups]
    srt = [np.sort(part[g]) for g in groups if g]
    return [(max(float(x[r - 1]) if len(x) >= r else np.inf for x in srt), len(srt) * r) for r in ranks]


def study_row(row: np.ndarray, k: int, splits: int, tile: int, scheme: tuple | None) -> tuple[int, int]:
    """(scores written, scores <= the final bound) for one query. scheme None: no shared bound (today);
    ("cdf", counts, after): every split publishes cdf_points of all it has seen, after tile `after` only
    (one select per row and split) or after every tile (after None); ("threads", ranks, tiles): every split
    publishes thread_points of each tile (of its first `tiles` tiles only, unless None), which add up."""
    M = len(row)
    seg = M // splits
    segs = [row[s * seg:(s + 1) * seg] for s in range(splits)]
    written, tau = 0, np.inf
    seen = [np.empty(0, np.float32) for _ in range(splits)]
    tile_units = []  # ("threads"): every tile's points, per split
    emitted = []  # prototype indices written to the candidate buffers
    for t in range(seg // tile):
        parts = []
        for s in range(splits):
            part = segs[s][t * tile:(t + 1) * tile]
            keep = np.flatnonzero(part <= tau)  # <=: a score equal to the bound may still be among the k
            written += len(keep)
            emitted.append(s * seg + t * tile + keep)
            seen[s] = np.concatenate([seen[s], part])
            parts.append(part)
        if scheme is None:
            continue
        if scheme[0] == "cdf" and scheme[2] in (None, t):
            tau = min(tau, combine([cdf_points(x, scheme[1]) for x in seen], k))
        elif scheme[0] == "threads":
            if scheme[2] is None or t < scheme[2]:
                tile_units += [thread_points(part, scheme[1]) for part in parts]
            tau = min(tau, combine(tile_units, k))
    under = int((row <= tau).sum())
    assert under >= k, "a published bound must leave at least k scores at or below it"
    # exactness: the merge's k smallest (value, then index) of what was written = the row's k smallest
    cand = np.concatenate(emitted)
    cand = cand[row[cand] <= tau]
    got = cand[np.lexsort((cand, row[cand]))][:k]
    assert np.array_equal(got, np.lexsort((np.arange(M), row))[:k]), "the bound dropped one of the k smallest"
    return written, under if scheme is not None else M


def real_features(root: str, grid: int, shots: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(bank, queries) as PCSNet builds them on a real MVTec-layout set (needs torch and the
    EfficientNet-Lite0 weights package): bank = per-position mean of `shots` good training images'
    features at a grid x grid map, queries = the features of one good and one defective test image.
    The PFA's 1x1 convolutions are untrained (seed 0): a random projection of the pooled backbone
    maps, which keeps their neighbourhood structure (what the bound depends on)."""
    from pathlib import Path  # noqa: PLC0415 (optional mode)

    import torch  # noqa: PLC0415

    from protospect.training.data import list_images, load_image  # noqa: PLC0415
    from protospect.training.methods.pcsnet import _create_backbone, _meta  # noqa: PLC0415
    from protospect.training.methods.pcsnet.model import PCSNetModel  # noqa: PLC0415
    from protospect.training.methods.pcsnet.presets import resolve_config  # noqa: PLC0415
    from protospect.training.methods.pcsnet.train_loop import to_tensor  # noqa: PLC0415

    torch.manual_seed(0)
    cfg = resolve_config("edge", {"grid": grid, "stages": (1, 2, 3), "bins": (grid, grid // 2, grid // 4, grid // 8)})
    backbone = _create_backbone(cfg, None)
    model = PCSNetModel(backbone, cfg, _meta(cfg, "edge", backbone.spec)).eval()
    root = Path(root)
    defect = sorted(d for d in (root / "test").iterdir() if d.is_dir() and d.name != "good")[0]
    good = [load_image(p, cfg.input_size) for p in list_images(root / "train" / "good")[:shots]]
    test = [load_image(p, cfg.input_size) for p in list_images(root / "test" / "good")[:1] + list_images(defect)[:1]]
    mean, std = backbone.spec.mean, backbone.spec.std
    with torch.no_grad():
        model.set_bank_from_backbone(model.features.backbone(to_tensor(good, mean, std)))
        queries, _ = model.features(to_tensor(test, mean, std))
    return model.bank.numpy(), queries.reshape(-1, model.features.dim).numpy()


def order_keys(v: np.ndarray) -> np.ndarray:
    """The kernel's order_key: float bits mapped so that unsigned order is float order."""
    b = v.astype(np.float32).view(np.uint32).astype(np.uint64)
    return np.where(b & 0x80000000, ~b & 0xFFFFFFFF, b | 0x80000000)


def first_pass_conflicts(row: np.ndarray) -> tuple[int, float]:
    """A radix select's first pass over one query's scores (the merge kernel's 4096 entries): histogram bins
    used, and lanes per 32-lane warp instruction that add to its busiest bin (shared atomics to one address
    serialise: what -DPROTOSPECT_TOPK_AGG_ATOMICS aggregates)."""
    keys = order_keys(row)
    top = int(keys.min() ^ keys.max()).bit_length() - 1  # the pass starts at the highest differing bit
    if top < 0:
        return 0, 0.0  # every key equal: the select makes no pass
    bins = (keys >> max(top - 7, 0)) & 255
    warps = bins[: len(bins) // 32 * 32].reshape(-1, 32)
    return len(np.unique(bins)), float(np.mean([np.bincount(w).max() for w in warps]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=128, help="queries sampled per data set")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("-k", type=int, default=200)
    ap.add_argument("--splits", type=int, default=8)
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--real", metavar="DIR", help="also a real MVTec-layout set (e.g. ../shared/data/bottle): PCSNet "
                    "features from EfficientNet-Lite0 (needs torch and its weights package)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    grid, k, S = 64, args.k, args.splits  # 4096 prototypes, as PCSNet's 64 x 64 feature map
    r = -(-k // S)
    sets = {
        "ties (every score equal)": (np.ones((grid * grid, args.dim), np.float32), None),
        "ties (scores on a coarse grid)": (np.round(rng.standard_normal((grid * grid, args.dim)) * 2) / 2, None),
        "iid gaussian": (rng.standard_normal((grid * grid, args.dim)).astype(np.float32), None),
        "smooth field (sigma 4 px)": (smooth_field(rng, grid, args.dim, 4.0), 0.3),
        "smooth field (sigma 8 px)": (smooth_field(rng, grid, args.dim, 8.0), 0.3),
    }
    cdf = [r, 2 * r, 4 * r, k]
    strategies = {"no shared bound (today)": None, "quantile-max": ("cdf", [r], None),
                  "cdf-points": ("cdf", cdf, None),
                  "cdf-points, tile 0 only": ("cdf", cdf, 0),
                  "cdf-points, tile 1 only": ("cdf", cdf, 1),
                  "thread minima (no select)": ("threads", [1], None),
                  "thread 1st+2nd smallest": ("threads", [1, 2], None),
                  "  same, tiles 0 and 1 only": ("threads", [1, 2], 2)}
    print(f"M = {grid * grid}, k = {k}, {S} splits of {grid * grid // S}, tiles of {args.tile}, "
          f"{args.queries} queries per set, D = {args.dim}; per query: written / under the final bound")
    if args.real:
        bank, real_q = real_features(args.real, grid)
        sets[f"{args.real}: PCSNet features (EfficientNet-Lite0, untrained PFA, D = {bank.shape[1]})"] = (bank, real_q)
    for name, (bank, noise) in sets.items():
        if isinstance(noise, np.ndarray):  # real queries
            q = noise[rng.choice(len(noise), args.queries, replace=False)]
        else:
            idx = rng.choice(grid * grid, args.queries, replace=False)
            q = bank[idx] + (noise or 1.0) * rng.standard_normal((args.queries, bank.shape[1])).astype(np.float32)
        if name.startswith("ties"):
            q = np.round(q * 2) / 2  # on the grid too: scores are multiples of 0.25, many equal
        sc = scores(q, bank)
        print(f"\n{name}")
        for label, scheme in strategies.items():
            res = np.array([study_row(sc[i], k, S, args.tile, scheme) for i in range(args.queries)])
            print(f"  {label:<27} written {res[:, 0].mean():7.0f}   under bound {res[:, 1].mean():7.0f}   "
                  f"(worst query: {res[:, 0].max()} / {res[:, 1].max()})")
        print(f"  {'oracle (true k-th)':<27} written {k:7d}   under bound {k:7d}")
        conf = np.array([first_pass_conflicts(sc[i]) for i in range(args.queries)])
        print(f"  first radix pass over a query's {grid * grid} scores: {conf[:, 0].mean():.1f} bins used, "
              f"{conf[:, 1].mean():.1f} of 32 lanes per warp instruction in its busiest bin")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
