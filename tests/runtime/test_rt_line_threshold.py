"""Line calibration: `protospect calibrate` sets the NG and REVIEW thresholds by split conformal prediction
from good frames of the station's own source, `serve --threshold FILE|VALUE` uses them (OK / REVIEW / NG,
p-values), files of the earlier one-threshold format still work, and a file from another model is refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FRAME, SIZE
from fixture_models import build_diff_model, render_part, write_video

from protospect.cli import main as cli_main
from protospect.errors import ArtifactError, ConfigError
from protospect.runtime import line_threshold
from protospect.runtime.model_info import ModelInfo
from protospect.conformal import operating_point


def _verdicts(sink: Path) -> dict[int, dict]:
    return {r["seq"]: r for r in map(json.loads, (sink / "verdicts.jsonl").read_text().splitlines())}


def _info(**over) -> ModelInfo:
    base = {"input_size": "[64, 64]", "threshold": "0.5", "map_range": "[0, 1]", "method": "refdiff",
            "precision": "fp32", "artifact_sha256": "a" * 64}
    return ModelInfo.from_props({**base, **over}, "test")


def test_earlier_rule_kept_for_the_evaluation_is_max_plus_margin_times_spread():
    scores = np.array([0.1, 0.2, 0.2, 0.3, 0.2, 0.25, 0.15, 0.2, 0.2, 0.4])  # median 0.2, max 0.4
    assert line_threshold.choose(scores, 0.25) == pytest.approx(0.4 + 0.25 * 0.2)
    assert line_threshold.choose(scores, 0.0) == pytest.approx(0.4)
    # the rule moves with the scores: shifted and scaled scores give the shifted and scaled threshold
    assert line_threshold.choose(10 * scores + 3, 0.25) == pytest.approx(10 * 0.45 + 3)
    with pytest.raises(ConfigError, match="at least 10"):
        line_threshold.choose(scores[:9])
    with pytest.raises(ConfigError, match="NaN"):
        line_threshold.choose(np.append(scores, np.nan))
    with pytest.raises(ConfigError, match="margin"):
        line_threshold.choose(scores, -0.1)


def test_threshold_file_round_trip_and_identity_check(tmp_path):
    info = _info()
    op = operating_point(np.linspace(0.1, 0.3, 20), 0.05, 0.1)  # N = 20: k_A = ceil(21 x 0.95) = 20, k_B = 19
    rec = line_threshold.record(op, info, "m.onnx", "good.avi")
    path = tmp_path / "thr.json"
    line_threshold.save(path, rec)
    got = line_threshold.apply(info, str(path))
    assert got.threshold == op.ng_threshold and got.threshold > 0.3 and "line calibration" in got.threshold_source
    assert got.review_threshold == op.review_threshold and 0.28 < got.review_threshold < 0.3
    assert got.operating_point.p_value(0.31) == pytest.approx(1 / 21)
    assert rec["good_frames_over_shot_threshold"] == 0 and rec["shot_threshold"] == 0.5
    assert rec["operating_point"]["scores"] == sorted(rec["operating_point"]["scores"]) and rec["operating_point"]["n"] == 20
    number = line_threshold.apply(got, "0.125")  # a number: one threshold, OK / NG, no p-values
    assert number.threshold == 0.125 and number.review_threshold is None and number.operating_point is None
    assert line_threshold.apply(info, None) is info
    # a file of the earlier format (one threshold) is still read: OK / NG only
    v1 = {"format": "protospect.line_threshold/1", "threshold": 0.42, "model": rec["model"]}
    (tmp_path / "v1.json").write_text(json.dumps(v1))
    old = line_threshold.apply(info, str(tmp_path / "v1.json"))
    assert old.threshold == 0.42 and old.review_threshold is None and old.operating_point is None
    for other, what in ((_info(artifact_sha256="b" * 64), "artifact_sha256"), (_info(precision="int8"), "precision"),
                        (_info(input_size="[128, 128]"), "input_size")):
        with pytest.raises(ArtifactError, match=what):
            line_threshold.apply(other, str(path))
    with pytest.raises(ConfigError, match="finite"):
        line_threshold.apply(info, "nan")
    with pytest.raises(ConfigError, match="not found"):
        line_threshold.apply(info, str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not a readable"):
        line_threshold.apply(info, str(tmp_path / "bad.json"))
    (tmp_path / "other.json").write_text(json.dumps({"threshold": 1.0}))
    with pytest.raises(ArtifactError, match="protospect calibrate"):
        line_threshold.apply(info, str(tmp_path / "other.json"))


@pytest.fixture(scope="module")
def mis_thresholded(fx, tmp_path_factory):
    """The fixture model with a shot threshold far above every score (nothing is ever NG), and a clip of
    other good parts through the same codec: the situation line calibration is for."""
    root = tmp_path_factory.mktemp("line_thr")
    model = build_diff_model(root / "model.onnx", fx.ref, threshold=10.0, map_range=(0.0, 0.3))
    rng = np.random.default_rng(11)
    good = write_video(root / "good.avi", [render_part(rng, FRAME) for _ in range(30)])
    return model, good, root


def test_calibrate_then_serve_with_the_file_flags_exactly_the_defects(fx, mis_thresholded, tmp_path, capsys):
    model, good, _ = mis_thresholded
    assert cli_main(["serve", str(model), "--source", str(fx.video), "--sink", str(tmp_path / "own")]) == 0
    own = _verdicts(tmp_path / "own")
    assert all(r["verdict"] == "OK" for r in own.values())  # the model's threshold misses all
    assert all("p_value" not in r for r in own.values())    # no conformal file: no p-values

    thr = tmp_path / "line_threshold.json"
    assert cli_main(["calibrate", str(model), "--source", str(good), "--out", str(thr),
                     "--frr", "0.05", "--review-frr", "0.1"]) == 0
    out = capsys.readouterr().out
    rec = json.loads(thr.read_text())
    assert rec["good_frames"] == 30 and rec["model"]["artifact_sha256"] == "0" * 64 and rec["model"]["input_size"] == SIZE
    scores = rec["operating_point"]["scores"]
    assert len(scores) == 30 and scores == sorted(scores)
    # N = 30, A = 0.05: k = ceil(31 x 0.95) = 30 -> just above the largest; B = 0.1: k = 28
    assert scores[-1] < rec["threshold"] <= np.nextafter(scores[-1], np.inf)
    assert scores[27] < rec["review_threshold"] <= np.nextafter(scores[27], np.inf)
    assert rec["threshold"] < 10.0 and "probability at most 5 %" in out and "REVIEW or NG" in out
    assert thr.with_suffix(".png").stat().st_size > 1000  # the score histogram

    sink = tmp_path / "line"
    assert cli_main(["serve", str(model), "--source", str(fx.video), "--sink", str(sink), "--threshold", str(thr)]) == 0
    verdicts = _verdicts(sink)
    assert {seq for seq, r in verdicts.items() if r["verdict"] == "NG"} == fx.defect_frames
    for r in verdicts.values():  # every record: the raw score and its p-value against the 30 good scores
        lo, hi = (((1 + sum(s >= r["score"] + d for s in scores)) / 31) for d in (1e-6, -1e-6))  # score is rounded
        assert lo - 1e-6 <= r["p_value"] <= hi + 1e-6
        assert r["verdict"] == ("NG" if r["score"] >= rec["threshold"] else
                                "REVIEW" if r["score"] >= rec["review_threshold"] else "OK")
    summary = json.loads((sink / "summary.json").read_text())
    assert summary["backend"]["threshold"] == pytest.approx(rec["threshold"])
    assert summary["backend"]["review_threshold"] == pytest.approx(rec["review_threshold"])
    assert summary["backend"]["threshold_source"] == f"line calibration {thr}"
    counts = summary["counters"]
    assert counts["review"] == sum(r["verdict"] == "REVIEW" for r in verdicts.values())
    assert counts["ok"] + counts["review"] + counts["ng"] == len(verdicts)


def test_a_threshold_file_from_another_model_is_refused_before_anything_is_logged(fx, mis_thresholded, tmp_path, capsys):
    model, good, root = mis_thresholded
    thr = tmp_path / "thr.json"
    assert cli_main(["calibrate", str(model), "--source", str(good), "--out", str(thr), "--frr", "0.05"]) == 0
    other = build_diff_model(root / "other.onnx", fx.ref, threshold=10.0,
                             props_override={"protospect.artifact_sha256": "f" * 64})
    sink = tmp_path / "sink"
    sink.mkdir()
    (sink / "verdicts.jsonl").write_text('{"seq": 0, "verdict": "OK"}\n')  # yesterday's log
    capsys.readouterr()
    assert cli_main(["serve", str(other), "--source", str(fx.video), "--sink", str(sink), "--threshold", str(thr)]) == 1
    err = capsys.readouterr().err
    assert "another model" in err and "artifact_sha256" in err
    assert (sink / "verdicts.jsonl").read_text() == '{"seq": 0, "verdict": "OK"}\n'  # nothing lost, nothing added


def test_calibrate_refuses_too_few_parts_naming_the_n_needed_or_states_what_it_can(fx, mis_thresholded, tmp_path, capsys):
    model, good, _ = mis_thresholded
    # 30 good parts cannot certify 1 %: refused after scoring, naming the N needed, nothing written
    assert cli_main(["calibrate", str(model), "--source", str(good), "--out", str(tmp_path / "t.json")]) == 1
    err = capsys.readouterr().err
    assert "30 good parts cannot certify a false-reject rate of 1 %" in err and "N >= 1/A - 1 = 99" in err
    assert not (tmp_path / "t.json").exists()
    # with --allow-uncertified: the largest good score, and the rate it can state (1 / 31)
    assert cli_main(["calibrate", str(model), "--source", str(good), "--out", str(tmp_path / "u.json"),
                     "--allow-uncertified"]) == 0
    out = capsys.readouterr().out
    rec = json.loads((tmp_path / "u.json").read_text())
    op = rec["operating_point"]
    assert not op["certified"] and op["certified_frr"] == pytest.approx(1 / 31)
    assert rec["threshold"] == pytest.approx(max(op["scores"])) and "NOT certified at 1 %" in out and "3.23 %" in out
    assert cli_main(["calibrate", str(model), "--source", str(good), "--out", str(tmp_path / "t.json"), "--loop"]) == 1
    # a camera never ends: calibrate asks for a frame count instead of running until Ctrl-C
    assert cli_main(["calibrate", str(model), "--source", "0", "--out", str(tmp_path / "t.json")]) == 1
    assert "--max-frames" in capsys.readouterr().err
