"""Rule v11 (docs/decision.md section 28): the planted kind `transplant` (the same rectangle of another good part)
joins the three kinds that geometry=auto's validation averages.

Reads the per-image scores of studies/fusion_queue.sh at 256, 512 and (DeepPCB) 640 px per cell. Rule v10 chooses
on the mean of three kinds, rule v11 on the mean of four; adopted when, over the 21 K = 4 cells, (1) transplant's
AUROC at rule v10's size averages >= SIGNAL, (2) v11's choices lose at most MARGIN of the three-kind score against
v10's choices, (3) at least one choice differs. Only validation arrays decide; --report adds the test split (image
AUROC, escape / false reject at A = 5 %, and the jsonl rows' escape @ line, pixel AUROC, AUPRO).

    cd studies && python select_v11.py ../runs/v11 [--k 4] [--data ../../shared/data] [--report] [--markdown F]
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from select_640 import SIZES, load_scores, qualifies, selection_args
from select_fusion import CATEGORIES, KINDS, MARGIN, PCS, auroc, emit, mean, test_row

SIGNAL = 60.0
NEW = "valn_transplant"
RULE_KINDS = {"v10": KINDS, "v11": (*KINDS, NEW)}  # the kinds each rule's validation score averages


def scores(sc: dict, kinds) -> float:
    return float(np.mean([auroc(sc["val_normal"], sc[k]) for k in kinds]))


def pick(v: dict, ok: bool) -> str:
    """Rule v10's procedure on one validation score per size."""
    p = "l" if v["l"] > v["s"] + MARGIN else "s"
    return "x" if ok and "x" in v and v["x"] > v[p] + MARGIN else p


def rule_pick(sc: dict, ok: bool, rule: str) -> str:
    """The size key a rule chooses for one cell (sc: load_scores's dict; ok: 640 px allowed)."""
    return pick({key: scores(sc[key], RULE_KINDS[rule]) for key in SIZES if key in sc}, ok)


def jsonl_row(folder: Path, c: str, k: int, s: int, size: int, variant: str = PCS) -> dict:
    """The study's own metrics of one job (escape @ line, pixel AUROC, AUPRO)."""
    p = folder / f"{c}_k{k}_s{s}_{size}.jsonl"
    if not p.exists():
        return {}
    rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return rows[-1]["variants"].get(variant, {}) if rows else {}


def main(argv=None):
    args = selection_args(__doc__, argv)
    folder = Path(args.folder)
    lines = [f"Rule v11 (section 28), K = {args.k}. Validation: three-kind score (rule v10) and four-kind score "
             "(rule v11) per size, transplant's AUROC per size.", "",
             "| category | seed | 3 kinds 256 / 512 / 640 | 4 kinds 256 / 512 / 640 | transplant 256 / 512 / 640 | "
             "v10 | v11 |", "|---|---|---|---|---|---|---|"]
    cells, missing = {}, []
    for c in CATEGORIES:
        for s in (0, 1, 2):
            sc = load_scores(folder, c, args.k, s)
            ok = sc is not None and qualifies(args.data, c, args.k, s)
            if sc is None or (ok and "x" not in sc) or any(NEW not in sc[key] for key in SIZES if key in sc):
                missing.append(f"{c} seed {s}")
                continue
            keys = [key for key in SIZES if key in sc]
            v3 = {key: scores(sc[key], RULE_KINDS["v10"]) for key in keys}
            v4 = {key: scores(sc[key], RULE_KINDS["v11"]) for key in keys}
            tp = {key: auroc(sc[key]["val_normal"], sc[key][NEW]) for key in keys}
            p10, p11 = pick(v3, ok), pick(v4, ok)
            cells[(c, s)] = dict(sc=sc, v3=v3, v4=v4, tp=tp, p10=p10, p11=p11)

            def fmt(d):
                return " / ".join(f"{d[key]:.1f}" if key in d else "-" for key in SIZES)
            lines.append(f"| {c} | {s} | {fmt(v3)} | {fmt(v4)} | {fmt(tp)} | {SIZES[p10]} | {SIZES[p11]} |")
    n = len(cells)
    signal = mean([d["tp"][d["p10"]] for d in cells.values()])
    cost = mean([d["v3"][d["p11"]] - d["v3"][d["p10"]] for d in cells.values()])
    changed = sum(d["p10"] != d["p11"] for d in cells.values())
    complete = n == 3 * len(CATEGORIES) and not missing
    adopted = complete and signal >= SIGNAL and cost >= -MARGIN and changed > 0
    lines += ["", f"{n} cells" + (f"; missing: {', '.join(missing)}" if missing else "") + ".",
              f"1. transplant AUROC at rule v10's size, mean: {signal:.2f} (needs >= {SIGNAL})",
              f"2. three-kind score of v11's choices - v10's, mean: {cost:+.3f} (needs >= -{MARGIN})",
              f"3. choices changed: {changed}",
              f"Rule v11: {'ADOPTED' if adopted else 'NOT ADOPTED' + ('' if complete else ' (incomplete)')}"
              if args.k == 4 else f"(the gates decide at K = 4, section 30; at K = {args.k} they are reported only)"]
    if args.report:
        lines += ["", "Test split (read after the choice), mean over seeds: image AUROC / escape @ A = 5 % / false "
                  "reject @ A = 5 %; then escape @ line, pixel AUROC, AUPRO of the chosen model", "",
                  "| category | rule v10 | rule v11 | PatchCore edge | v10: esc@line / pix / AUPRO | "
                  "v11: esc@line / pix / AUPRO |", "|---|---|---|---|---|---|"]
        means = {n_: [] for n_ in ("v10", "v11", "nn")}
        for c in CATEGORIES:
            rows = {n_: [] for n_ in ("v10", "v11", "nn", "j10", "j11")}
            for s in (0, 1, 2):
                d = cells.get((c, s))
                if d is None or "labels" not in d["sc"] or any("test" not in d["sc"][p] for p in (d["p10"], d["p11"], "s")):
                    continue  # light jobs (validation only) have no test split
                sc, lab = d["sc"], d["sc"]["labels"]
                rows["v10"].append(test_row(sc[d["p10"]], lab))
                rows["v11"].append(test_row(sc[d["p11"]], lab))
                rows["nn"].append(test_row(sc["nn"], lab))
                rows["j10"].append(jsonl_row(folder, c, args.k, s, SIZES[d["p10"]]))
                rows["j11"].append(jsonl_row(folder, c, args.k, s, SIZES[d["p11"]]))
            if not rows["v10"]:
                continue

            def t(rs):
                return " / ".join(f"{mean([r[m] for r in rs]):.1f}" for m in ("auroc", "escape", "frr"))

            def j(rs):
                return " / ".join(f"{mean([r.get(m) for r in rs]):.1f}"
                                  for m in ("test_escape_line", "test_pixel_auroc", "test_aupro"))
            for n_ in means:
                means[n_].append(mean([r["auroc"] for r in rows[n_]]))
            lines.append(f"| {c} | {t(rows['v10'])} | {t(rows['v11'])} | {t(rows['nn'])} | {j(rows['j10'])} | "
                         f"{j(rows['j11'])} |")
        if means["v10"]:
            lines.append(f"| **mean of {len(means['v10'])}** | {mean(means['v10']):.2f} | {mean(means['v11']):.2f} | "
                         f"{mean(means['nn']):.2f} | | |")
    emit(lines, args.markdown)


if __name__ == "__main__":
    main()
