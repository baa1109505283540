"""studies/acceptance_reruns.py reads the committed result files it builds on: rule v6's per-category rows (the first
table of docs/results/auto_v6.md, not rule v4's second one) and rule v10's reported test rows."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "studies"))
from acceptance_reruns import base_rows, main, reported_rows  # noqa: E402 (studies/, not a package)


def test_base_rows_are_rule_v6s_table():
    rows = base_rows(ROOT / "docs/results/auto_v6.md")
    assert len(rows) == 21  # 7 categories x K = 2, 4, 8
    assert rows[("mpdd_metal_plate", 8)]["line_new"] == 53.5  # rule v6's; rule v4's table below reads 50.2
    assert rows[("juice_bottle_loco", 4)]["img_new"] == 82.1 and rows[("juice_bottle_loco", 4)]["img_nn"] == 86.1
    assert rows[("elpv_mono", 2)]["pix_old"] is None  # no masks: no pixel metrics


def test_reported_rows_take_auto640_where_it_differs_from_rule_v6():
    rows = reported_rows(ROOT / "docs/results/size640_v10.md", 4)
    assert set(rows) == {("deeppcb_00041", 4), ("deeppcb_44000", 4)}
    assert rows[("deeppcb_44000", 4)] == (97.8, 13.7)


def test_the_table_without_reruns_reproduces_rule_v6(capsys):
    main(["--base", str(ROOT / "docs/results/auto_v6.md")])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("| all |"))
    assert "87.92 / 92.36 / 82.50 (+4.44)" in line  # section 19's 63-cell means, from rounded category rows
    assert "- juice_bottle_loco: -2.90" in out
