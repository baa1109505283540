"""results.json (the contract every evaluation writes, docs/contracts.md section 9) and its markdown table.

``append_records`` merges new records into DIR/results.json: a record with the same
(category, method, preset, K, input_size) as an existing one replaces it, anything else is appended,
so several categories or methods can share one output folder. results.md is regenerated from the
merged file every time, never from ad-hoc prints.
"""
from __future__ import annotations

import json
from pathlib import Path

from protospect.errors import DataError
from protospect.files import write_atomic

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"

_COLUMNS = [  # (header, key); values are "mean ± std" in percent unless noted
    ("image AUROC", "image_auroc"),
    ("pixel AUROC", "pixel_auroc"),
    ("AUPRO@0.3", "aupro"),
    ("F1-max", "f1_max"),
    ("FAR@100% recall", "far_at_full_recall"),
    ("F1@thr", "f1_at_threshold"),
    ("escape@thr", "escape_rate"),
    ("false alarm@thr", "false_alarm_rate"),
    ("FRR@A=5%", "false_reject_rate_a05"),
    ("escape@A=5%", "escape_rate_a05"),
    ("FRR@A=1%", "false_reject_rate_a01"),
    ("escape@A=1%", "escape_rate_a01"),
    ("fit s", "train_seconds"),
]


def _key(record: dict) -> tuple:
    # --set values are part of what was measured: a run with other settings is another record
    overrides = json.dumps(record.get("overrides") or {}, sort_keys=True, default=str)
    return (record.get("category"), record.get("method"), record.get("preset"), record.get("K"), record.get("input_size"),
            overrides)


def read_records(out_dir) -> list[dict]:
    path = Path(out_dir) / RESULTS_JSON
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} exists but is not valid JSON ({err}); move it away or choose another --out") from err
    if not isinstance(records, list):
        raise DataError(f"{path} is not a list of records; move it away or choose another --out")
    return records


def append_records(out_dir, new_records: list[dict]) -> Path:
    """Merge ``new_records`` into out_dir/results.json (atomically) and rewrite results.md; returns the json path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged = read_records(out)
    for rec in new_records:
        same = [i for i, old in enumerate(merged) if _key(old) == _key(rec)]
        if same:
            merged[same[0]] = rec
        else:
            merged.append(rec)
    path = out / RESULTS_JSON
    write_atomic(path, (json.dumps(merged, indent=2) + "\n").encode())
    write_atomic(out / RESULTS_MD, markdown_table(merged).encode())
    return path


def _cell(value, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    mean, std = value
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(records: list[dict]) -> str:
    """One row per record: category, method, preset, K, seeds, then the metric columns."""
    head = ["category", "method", "preset", "S", "K", "seeds"] + [h for h, _ in _COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        cells = [str(r.get("category")), str(r.get("method")), str(r.get("preset")), str(r.get("input_size", "")),
                 str(r.get("K")), " ".join(map(str, r.get("seeds", [])))]
        cells += [_cell(r.get(key), 2 if key == "train_seconds" else 1) for _, key in _COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    commands = sorted({r["command"] for r in records if r.get("command")})
    notes = ["", "Values in percent, mean ± population std over seeds; fit s in seconds. "
             "@thr = at the threshold calibrated on the shots only (NG when score >= threshold).",
             "@A = at the NG threshold `protospect register` sets by split conformal prediction for false-reject rate A "
             "from up to 40 train/good images that were not shots: FRR measured on test/good, escape on the defective "
             "test images; n/a where too few good images are left to certify A (N >= 1/A - 1).",
             "FAR@100% recall = fraction of good test images flagged NG at the highest threshold that flags every defect."]
    if commands:
        notes += ["", "Commands:", ""] + [f"    {c}" for c in commands]
    return "\n".join(lines + notes) + "\n"
