"""`protospect export` end to end on a real artifact: files, printed census, parity, refusals."""
from __future__ import annotations

import onnx
import pytest

from protospect.cli import main

pytestmark = pytest.mark.torch


def test_export_check_prints_census_parity_and_next_step(patchcore, tmp_path, capsys):
    _, art = patchcore
    out = tmp_path / "model.onnx"
    assert main(["export", str(art), "--out", str(out), "--check"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "ops:" in text and "TopK 1" in text
    assert "parity (fp32" in text and "PASS" in text
    assert f"protospect build-engine {out}" in text


def test_export_int8_with_calib_folder(patchcore, demo_category, tmp_path, capsys):
    _, art = patchcore
    out = tmp_path / "model.int8.onnx"
    assert main(["export", str(art), "--out", str(out), "--int8", "--calib", str(demo_category / "train" / "good"),
                 "--calib-augment", "7"]) == 0
    text = capsys.readouterr().out
    assert "int8: calibrated on 4 images -> 32 frames" in text and "Q/DQ placement checked" in text
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["protospect.precision"] == "int8"


def test_export_split_fp16(patchcore, tmp_path, capsys):
    _, art = patchcore
    out = tmp_path / "split"
    assert main(["export", str(art), "--out", str(out), "--split", "--fp16"]) == 0
    assert {p.name for p in out.iterdir()} == {"features.onnx", "head.onnx", "bank.npy"}
    precision = lambda f: {p.key: p.value for p in onnx.load(str(out / f)).metadata_props}["protospect.precision"]  # noqa: E731
    assert precision("features.onnx") == "fp16" and precision("head.onnx") == "fp32"


def test_int8_calibration_flags_and_their_short_aliases_parse_alike():
    # INT8 calibration's flags say int8-calib (not the threshold's `protospect calibrate`); --calib* stay aliases
    import argparse

    from protospect.export import cli_export
    parser = argparse.ArgumentParser()
    cli_export.add_arguments(parser)
    long = parser.parse_args(["a", "--out", "m.onnx", "--int8", "--int8-calib-images", "d", "--int8-calib-method", "entropy",
                              "--int8-calib-augment", "3", "--int8-calib-anomalies", "0"])
    short = parser.parse_args(["a", "--out", "m.onnx", "--int8", "--calib", "d", "--calib-method", "entropy",
                               "--calib-augment", "3", "--calib-anomalies", "0"])
    assert vars(long) == vars(short)
    assert (str(long.int8_calib_images), long.int8_calib_method, long.int8_calib_augment, long.int8_calib_anomalies) == ("d", "entropy", 3, 0)


@pytest.mark.parametrize("extra, message", [
    (["--int8", "--bank-as-input"], "--bank-as-input"),
    (["--calib", "somewhere"], "--calib only applies"),
    (["--int8-calib-images", "somewhere"], "--int8-calib-images / --calib only applies"),
    (["--fp16", "--split", "--bank-as-input"], "bank.npy"),
    (["--fp16", "--int8"], "--fp16 and --int8 are two precisions; choose one"),  # was argparse's exit 2
])
def test_invalid_combinations_are_refused_not_rewritten(patchcore, tmp_path, capsys, extra, message):
    _, art = patchcore
    out = tmp_path / "m.onnx"
    assert main(["export", str(art), "--out", str(out), *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_bank_as_input_export_says_what_it_is_for_not_serve(patchcore, demo_category, tmp_path, capsys):
    _, art = patchcore
    out = tmp_path / "bank.onnx"
    assert main(["export", str(art), "--out", str(out), "--bank-as-input"]) == 0
    text = capsys.readouterr().out
    assert "takes the prototype bank as input 'bank'" in text
    assert "protospect serve " + str(out) not in text and "build-engine" not in text
    # and what serve would do with it: refuse at load, one line, instead of failing on the first frame
    assert main(["serve", str(out), "--source", str(demo_category / "train" / "good"), "--max-frames", "1"]) == 1
    err = capsys.readouterr().err
    assert "input 'bank'" in err and "--bank-as-input" in err and err.count("\n") == 1


def test_missing_artifact_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")]) == 1
    assert "artifact directory not found" in capsys.readouterr().err
