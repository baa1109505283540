"""The issue's acceptance table (63 cells: 7 categories x K = 2, 4, 8 x seeds 0-2) under the current default.

Starts from the per-(category, K) rows of rule v6's table (docs/results/auto_v6.md: old 256 px model, rule v6's
choice, PatchCore edge) and replaces the "new" column of every (category, K) whose three seeds were rerun in a
study folder of studies/fusion_queue.sh (per-image scores + jsonl rows at every size), choosing per cell with
rule v10 or v11 from validation arrays only (select_v11.rule_pick). The old and PatchCore columns of a rerun row are
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
from select_v11 import RULE_KINDS, jsonl_row, rule_pick

COLS = ("img_old", "img_new", "img_nn", "pix_old", "pix_new", "pro_old", "pro_new", "line_old", "line_new",
        "a05_old", "a05_new")


def _num(t: str):
    t = t.strip()
    return None if t in ("-", "") else float(t)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def base_rows(path: Path, first: int = 3, last: int = 8) -> dict:
    """{(category, K): {col: value}} from the first acceptance table of auto_v6.md (rule v6's; the file's second
    table is rule v4's m1024 on the same cells); the value columns are cells[first:last] (an acceptance_reruns
    report: 2, 7)."""
    out = {}
    for line in path.read_text().split("The same cells with new = m1024")[0].splitlines():
        cells = _cells(line)
        if len(cells) != 8 or cells[0] not in CATEGORIES:
            continue
        vals = []
        for c in cells[first:last]:
            vals += [_num(x) for x in c.split("/")] if c != "-" else [None, None]
        out[(cells[0], int(cells[1]))] = dict(zip(COLS, vals))
    return out


def base_sizes(path: Path) -> dict:
    """{(category, K): "512/256/512"}: the sizes rule v6 chose per seed (the first table of auto_v6.md)."""
    out = {}
    for line in path.read_text().splitlines():
        cells = _cells(line)
        if len(cells) == 5 and cells[0] in CATEGORIES and cells[1].isdigit() and cells[4].count("/") == 2:
            out.setdefault((cells[0], int(cells[1])), cells[4])
    return out


def reported_rows(path: Path, k: int) -> dict:
    """{(category, K): (image AUROC, escape @ A = 5 %)} of auto640 where it differs from rule v6 in a select_640
    report (columns: 256 / 512 / 640 / rule v6 / auto640, each 'AUROC / escape / false reject')."""
    out = {}
    for line in path.read_text().splitlines():
        cells = _cells(line)
        if len(cells) != 6 or cells[0] not in CATEGORIES or "/" not in cells[5] or cells[4] == cells[5]:
            continue
        auroc_, esc = (_num(x) for x in cells[5].split("/")[:2])
        out[(cells[0], k)] = (auroc_, esc)
    return out


def seed_scores(folder: Path, c: str, k: int, data: str, rule: str) -> list[tuple[dict, bool]] | None:
    """[(load_scores's dict, 640 px allowed)] for seeds 0-2, or None unless every seed has what the rule's choice
    reads at every size it needs (validation arrays; light jobs count)."""
    out = []
    for s in (0, 1, 2):
        sc = load_scores(folder, c, k, s)
        if sc is None:
            return None
        ok = qualifies(data, c, k, s)
        if (ok and "x" not in sc) or any(kind not in sc[key] for key in SIZES if key in sc for kind in RULE_KINDS[rule]):
            return None
        out.append((sc, ok))
    return out


def rerun_row(folder: Path, c: str, k: int, cells: list[tuple[dict, bool]], rule: str) -> dict | None:
    """The (category, K) row from a rerun folder, or None unless all three seeds have the test split of the chosen
    model and of the 256 px one."""
    per = []
    for s, (sc, ok) in enumerate(cells):
        chosen = rule_pick(sc, ok, rule)
        if "labels" not in sc or "test" not in sc[chosen] or "test" not in sc["s"]:  # light jobs: validation only
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


def changed_choices(cells: list[tuple[dict, bool]]) -> tuple[list[str], str]:
    """(seeds whose rule v11 choice differs from rule v10's, v11's sizes per seed as "512/256/512")."""
    moved, sizes = [], []
    for s, (sc, ok) in enumerate(cells):
        p10, p11 = rule_pick(sc, ok, "v10"), rule_pick(sc, ok, "v11")
        if p10 != p11:
            moved.append(f"seed {s} {SIZES[p10]} -> {SIZES[p11]} px")
        sizes.append(str(SIZES[p11]))
    return moved, "/".join(sizes)


def fmt(row: dict, *cols) -> str:
    return " / ".join("-" if row.get(c) is None else f"{row[c]:.1f}" for c in cols)


def table_lines(rows: dict, source: dict, title: str) -> list[str]:
    """The acceptance table: one line per (category, K), the means per K and overall, new - PatchCore per category."""
    lines = [title, "",
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
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*")
    ap.add_argument("--base", default="../docs/results/auto_v6.md")
    ap.add_argument("--data", default="../../shared/data")
    ap.add_argument("--rule", choices=("v10", "v11"), default="v10")
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--reported", action="append", default=[], metavar="K=FILE")
    ap.add_argument("--old-for", nargs="*", default=[], metavar="CATEGORY",
                    help="arithmetic only, never a rule: these categories' new columns replaced by the old 256 px model's")
    args = ap.parse_args(argv)
    rows = base_rows(Path(args.base))
    base, v6_sizes = dict(rows), base_sizes(Path(args.base))
    source = {key: "rule v6 (base)" for key in rows}
    for item in args.reported:
        k, path = item.split("=", 1)
        for key, (auroc_, esc) in reported_rows(Path(path), int(k)).items():
            rows[key] = {**rows[key], "img_new": auroc_, "a05_new": esc}
            source[key] = f"rule v10 reported ({Path(path).name}); pixel / AUPRO / escape @ line: rule v6's model"
    checks, stale = [], {}
    folders = list(map(Path, args.folders))
    for (c, k) in list(rows):
        found = [(f, cells) for f in folders if (cells := seed_scores(f, c, k, args.data, args.rule))]
        reruns = [(f, r) for f, cells in found if (r := rerun_row(f, c, k, cells, args.rule))]
        b = base[(c, k)]
        for f, r in reruns:  # listed folder by folder below
            checks.append((folders.index(f), f"- {c} K = {k} ({f.name}): old {r['img_old']:.1f} (base {b['img_old']:.1f}), "
                          f"PatchCore {r['img_nn']:.1f} (base {b['img_nn']:.1f})"))
        if reruns:  # the last folder's rerun wins
            f, rows[(c, k)] = reruns[-1]
            source[(c, k)] = f"rule {args.rule}, rerun in {f.name}/, sizes {rows[(c, k)]['sizes']}"
        elif args.rule == "v11" and found:
            # a rule v10 row stands for rule v11 only where v11 chooses the same sizes; else it is stale
            f, cells = found[-1]
            moved, sizes = changed_choices(cells)
            if sizes == v6_sizes.get((c, k)) and moved:  # the very models of rule v6's row: that row is v11's
                rows[(c, k)] = base[(c, k)]
                source[(c, k)] = f"rule v11 moves {', '.join(moved)} back to rule v6's sizes {sizes}: rule v6's row " \
                                 "(same models)"
            elif moved:
                stale[(c, k)] = f"{', '.join(moved)} ({f.name}/, no test split for the new choice)"
            elif source[(c, k)] == "rule v6 (base)" and sizes == v6_sizes.get((c, k)):
                source[(c, k)] = f"rule v6 (base); rule v11 chooses the same sizes {sizes} ({f.name}/)"
    for (c, k), r in rows.items():
        if c in args.old_for:
            rows[(c, k)] = {**r, **{col: r[col.replace("_new", "_old")] for col in COLS if col.endswith("_new")}}
            source[(c, k)] += "; new replaced by old (--old-for: arithmetic, not a rule)"
    for key in stale:
        source[key] = f"STALE: rule v11 moves {stale[key]}; this row is {source[key]}"
    lines = table_lines(rows, source, f"Acceptance table, new = rule {args.rule} where rerun, rule v6's rows "
                                      f"elsewhere (base {Path(args.base).name}).")
    if stale:
        lines += ["", f"INCOMPLETE: {len(stale)} rows are not rule {args.rule}'s (their new choice has no test split "
                  "in the folders; run those jobs with the test split)"]
    if checks:
        lines += ["", "Reruns against the base (bit-exact training: old and PatchCore must match)", "",
                  *(line for _, line in sorted(checks, key=lambda t: t[0]))]
    emit(lines, args.markdown)
    if stale:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
