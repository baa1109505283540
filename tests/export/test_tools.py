"""The measurement tools the acceptance tables come from: studies/eval_graphs.py and studies/bench_ort.py
(studies, not installed: imported from their folder)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import export_fixtures as fx

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "studies"))
from bench_ort import bench  # noqa: E402 (studies/, not a package)
from eval_graphs import evaluate  # noqa: E402
from protospect.export.ort_session import cpu_session
from protospect.training.metrics import image_auroc

pytestmark = pytest.mark.torch


def test_eval_graphs_matches_a_direct_computation(fp32_graph, demo_category):
    (row,) = evaluate([fp32_graph], demo_category.parent, demo_category.name)
    frames, labels = fx.test_set(demo_category)
    session = cpu_session(fp32_graph)
    scores = [float(session.run(["image_score"], {"image": f[None]})[0][0]) for f in frames]
    assert row["precision"] == "fp32"
    assert row["image_auroc"] == pytest.approx(100 * image_auroc(labels, scores))
    assert 0 <= row["pixel_auroc"] <= 100 and 0 <= row["aupro"] <= 100  # the demo set has masks


def test_bench_times_every_graph_the_same_number_of_rounds(fp32_graph):
    rows = bench([fp32_graph, fp32_graph], runs=12, warmup=1)
    assert [r["runs"] for r in rows] == [20, 20]  # blocks of 10, round-robin, until >= runs
    for r in rows:
        assert r["precision"] == "fp32" and r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert np.isfinite(r["median_ms"]) and r["size_mib"] > 0
