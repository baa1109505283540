"""The issue's acceptance table (63 cells: 7 categories x K = 2, 4, 8 x seeds 0-2) under the current default.

Starts from the per-(category, K) rows of rule v6's table (docs/results/auto_v6.md: old 256 px model, rule v6's
choice, PatchCore edge) and replaces the "new" column of every (category, K) whose three seeds were rerun in a
study folder of studies/fusion_queue.sh (per-image scores + jsonl rows at every size), choosing per cell with
rule v10 or v11 from validation arrays only (select_v11.pick). The old and PatchCore columns of a rerun row are
recomputed from the rerun too (training is bit-exact per seed, so they must match the base; the report says so).

    cd studies && python acceptance_reruns.py --rule v10 ../runs/k8 ../runs/v11 [--markdown F]
        [--reported 2=../docs/results/size640_v10_k2.md --reported 4=../docs/results/size640_v10.md]

--reported K=FILE takes select_640.py's test table of an earlier session whose runs are gone: where its auto640
column differs from its rule v6 column, the row's new image AUROC and escape @ A = 5 % become auto640's; that file
has no pixel AUROC, AUPRO or escape @ line, so those stay rule v6's (the report marks such rows).

Under --rule v11, a (category, K) whose validation arrays (light jobs suffice) show a seed where v11 chooses another
size than v10, but whose new choice has no test split, keeps no silent rule v10 row: the report marks it STALE and
the script exits 1.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from select_640 import SIZES, load_scores, qualifies
from select_fusion import CATEGORIES, emit, mean, test_row
from select_v11 import NEW, RULE_KINDS, jsonl_row, pick, scores

COLS = ("img_old", "img_new", "img_nn", "pix_old", "pix_new", "pro_old", "pro_new", "line_old", "line_new",
        "a05_old", "a05_new")


def _num(t: str):
    t = t.strip()
    return None if t in ("-", "") else float(t)


def base_rows(path: Path) -> dict:
    """{(category, K): {col: value}} from the first acceptance table of auto_v6.md (rule v6's; the file's second
    table is rule v4's m1024 on the same cells)."""
    out = {}
    for line in path.read_text().split("The same cells with new = m1024")[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 8 or cells[0] not in CATEGORIES:
            continue
        vals = []
        for c in cells[3:]:
            vals += [_num(x) for x in c.split("/")] if c != "-" else [None, None]
        out[(cells[0], int(cells[1]))] = dict(zip(COLS, vals))
    return out


def reported_rows(path: Path, k: int) -> dict:
    """{(category, K): (image AUROC, escape @ A = 5 %)} of auto640 where it differs from rule v6 in a select_640
    report (columns: 256 / 512 / 640 / rule v6 / auto640, each 'AUROC / escape / false reject')."""
    out = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or cells[0] not in CATEGORIES or "/" not in cells[5] or cells[4] == cells[5]:
            continue
        auroc_, esc = (_num(x) for x in cells[5].split("/")[:2])
        out[(cells[0], k)] = (auroc_, esc)
    return out


def rerun_row(folder: Path, c: str, k: int, data: str, rule: str) -> dict | None:
    """The (category, K) row from a rerun folder, or None unless all three seeds are there."""
    per = []
    for s in (0, 1, 2):
        sc = load_scores(folder, c, k, s)
        if sc is None or "labels" not in sc:  # light jobs (validation only) have no test split
            return None
        ok = qualifies(data, c, k, s)
        keys = [key for key in SIZES if key in sc]
        if (ok and "x" not in sc) or (rule == "v11" and any(NEW not in sc[key] for key in keys)):
            return None
        chosen = pick({key: scores(sc[key], RULE_KINDS[rule]) for key in keys}, ok)
        if "test" not in sc[chosen] or "test" not in sc["s"]:  # a light job among full ones
            return None
        lab = sc["labels"]
        new, old, nn = test_row(sc[chosen], lab), test_row(sc["s"], lab), test_row(sc["nn"], lab)
        jn, jo = jsonl_row(folder, c, k, s, SIZES[chosen]), jsonl_row(folder, c, k, s, 256)
        per.append({"img_old": old["auroc"], "img_new": new["auroc"], "img_nn": nn["auroc"],
                    "pix_old": jo.get("test_pixel_auroc"), "pix_new": jn.get("test_pixel_auroc"),
                    "pro_old": jo.get("test_aupro"), "pro_new": jn.get("test_aupro"),
                    "line_old": jo.get("test_escape_line"), "line_new": jn.get("test_escape_line"),
                    "a05_old": old["escape"], "a05_new": new["escape"], "size": SIZES[chosen]})
    row = {col: (None if np.isnan(m := mean([p[col] for p in per])) else m) for col in COLS}
    row["sizes"] = "/".join(str(p["size"]) for p in per)
    return row


def base_sizes(path: Path) -> dict:
    """{(category, K): "512/256/512"}: the sizes rule v6 chose per seed (the first table of auto_v6.md)."""
    out = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in CATEGORIES and cells[1].isdigit() and cells[4].count("/") == 2:
            out.setdefault((cells[0], int(cells[1])), cells[4])
    return out


def changed_choices(folder: Path, c: str, k: int, data: str) -> tuple[list[str], str] | None:
    """(seeds whose rule v11 choice differs from rule v10's, v11's sizes per seed as "512/256/512"), from
    validation arrays alone (light jobs count); None unless every seed has the four kinds at every size it needs."""
    out, sizes = [], []
    for s in (0, 1, 2):
        sc = load_scores(folder, c, k, s)
        if sc is None:
            return None
        ok = qualifies(data, c, k, s)
        keys = [key for key in SIZES if key in sc]
        if (ok and "x" not in sc) or any(NEW not in sc[key] for key in keys):
            return None
        p10, p11 = (pick({key: scores(sc[key], RULE_KINDS[r]) for key in keys}, ok) for r in ("v10", "v11"))
        if p10 != p11:
            out.append(f"seed {s} {SIZES[p10]} -> {SIZES[p11]} px")
        sizes.append(str(SIZES[p11]))
    return out, "/".join(sizes)


def fmt(row: dict, *cols) -> str:
    return " / ".join("-" if row.get(c) is None else f"{row[c]:.1f}" for c in cols)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*")
    ap.add_argument("--base", default="../docs/results/auto_v6.md")
    ap.add_argument("--data", default="../../shared/data")
    ap.add_argument("--rule", choices=("v10", "v11"), default="v10")
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--reported", action="append", default=[], metavar="K=FILE")
    args = ap.parse_args(argv)
    rows = base_rows(Path(args.base))
    base, v6_sizes = dict(rows), base_sizes(Path(args.base))
    source = {key: "rule v6 (base)" for key in rows}
    for item in args.reported:
        k, path = item.split("=", 1)
        for key, (auroc_, esc) in reported_rows(Path(path), int(k)).items():
            rows[key] = {**rows[key], "img_new": auroc_, "a05_new": esc}
            source[key] = f"rule v10 reported ({Path(path).name}); pixel / AUPRO / escape @ line: rule v6's model"
    checks, stale, settled = [], {}, set()
    for folder in map(Path, args.folders):
        for (c, k) in list(rows):
            r = rerun_row(folder, c, k, args.data, args.rule)
            if r is None:
                # a rule v10 row stands for rule v11 only where v11 chooses the same sizes; else it is stale
                got = changed_choices(folder, c, k, args.data) if args.rule == "v11" else None
                if got and got[0] and (c, k) not in settled:
                    if got[1] == v6_sizes.get((c, k)):  # the very models of rule v6's row: that row is v11's
                        rows[(c, k)], settled = base[(c, k)], settled | {(c, k)}
                        source[(c, k)] = f"rule v11 moves {', '.join(got[0])} back to rule v6's sizes {got[1]}: " \
                                         "rule v6's row (same models)"
                        stale.pop((c, k), None)
                    else:
                        stale[(c, k)] = f"{', '.join(got[0])} ({folder.name}/, no test split for the new choice)"
                elif got and source[(c, k)] == "rule v6 (base)" and got[1] == v6_sizes.get((c, k)):
                    source[(c, k)] = f"rule v6 (base); rule v11 chooses the same sizes {got[1]} ({folder.name}/)"
                continue
            settled.add((c, k))
            stale.pop((c, k), None)
            b = rows[(c, k)]
            checks.append(f"- {c} K = {k} ({folder.name}): old {r['img_old']:.1f} (base {b['img_old']:.1f}), "
                          f"PatchCore {r['img_nn']:.1f} (base {b['img_nn']:.1f})")
            rows[(c, k)] = r
            source[(c, k)] = f"rule {args.rule}, rerun in {folder.name}/, sizes {r['sizes']}"
    for key in stale:
        source[key] = f"STALE: rule v11 moves {stale[key]}; this row is {source[key]}"
    lines = [f"Acceptance table, new = rule {args.rule} where rerun, rule v6's rows elsewhere "
             f"(base {Path(args.base).name}).", "",
             "| category | K | image AUROC old / new / PatchCore | pixel AUROC old / new | AUPRO old / new | "
             "escape @ line old / new | escape @ A=5 % old / new | new from |", "|---|---|---|---|---|---|---|---|"]
    for (c, k), r in sorted(rows.items()):
        lines.append(f"| {c} | {k} | {fmt(r, 'img_old', 'img_new', 'img_nn')} | {fmt(r, 'pix_old', 'pix_new')} | "
                     f"{fmt(r, 'pro_old', 'pro_new')} | {fmt(r, 'line_old', 'line_new')} | "
                     f"{fmt(r, 'a05_old', 'a05_new')} | {source[(c, k)]} |")
    lines += ["", "| K | rows | image AUROC old / new / PatchCore (new - old) | pixel AUROC old / new | AUPRO old / new | "
              "escape @ line old / new | escape @ A=5 % old / new |", "|---|---|---|---|---|---|---|"]
    for k in (2, 4, 8, None):
        sel = [r for (c, kk), r in rows.items() if k is None or kk == k]
        m = {col: mean([r[col] for r in sel]) for col in COLS}
        lines.append(f"| {'all' if k is None else k} | {len(sel)} | {m['img_old']:.2f} / {m['img_new']:.2f} / "
                     f"{m['img_nn']:.2f} ({m['img_new'] - m['img_old']:+.2f}) | {m['pix_old']:.2f} / {m['pix_new']:.2f} | "
                     f"{m['pro_old']:.2f} / {m['pro_new']:.2f} | {m['line_old']:.2f} / {m['line_new']:.2f} | "
                     f"{m['a05_old']:.2f} / {m['a05_new']:.2f} |")
    lines += ["", "Per category, all K: new - PatchCore image AUROC (acceptance: none below -1)", ""]
    for c in CATEGORIES:
        sel = [r for (cc, _), r in rows.items() if cc == c]
        lines.append(f"- {c}: {mean([r['img_new'] - r['img_nn'] for r in sel]):+.2f}")
    if stale:
        lines += ["", f"INCOMPLETE: {len(stale)} rows are not rule {args.rule}'s (their new choice has no test split "
                  "in the folders; run those jobs with the test split)"]
    if checks:
        lines += ["", "Reruns against the base (bit-exact training: old and PatchCore must match)", "", *checks]
    emit(lines, args.markdown)
    if stale:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
