"""`eval` checks every category, image, mask and --out before any model is fitted (issue 20: it failed only
after minutes of work)."""
from __future__ import annotations

import pytest
from fsfaults import remount_readonly, tmpfs
from mvtec_tiny import make_category

import protospect.training.fewshot as fewshot
from protospect.cli import main

pytestmark = pytest.mark.torch


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the evaluation itself starts."""
    def evaluate(*a, **k):
        raise AssertionError("evaluate() started before the inputs were checked")

    monkeypatch.setattr(fewshot, "evaluate", evaluate)


def _eval(tmp_path, data, *extra, out=None):
    return main(["eval", "--data", str(data), "--shots", "1", "--seeds", "0", "--out", str(out or tmp_path / "out"),
                 "--size", "64", "--no-plots", *extra])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_corrupt_test_image_fails_before_work(tmp_path, capsys, no_work):
    cat = make_category(tmp_path / "data", "a", n_train=2, n_good=2, n_defect=2)
    bad = sorted((cat / "test" / "good").iterdir())[-1]
    bad.write_bytes(bad.read_bytes()[:100])
    assert _eval(tmp_path, cat) == 1
    assert str(bad) in _one_line(capsys)


def test_wrong_size_mask_fails_before_work(tmp_path, capsys, no_work):
    import cv2
    import numpy as np

    cat = make_category(tmp_path / "data", "a", n_train=2, n_good=1, n_defect=1)
    mask = next((cat / "ground_truth").rglob("*.png"))
    cv2.imwrite(str(mask), np.zeros((10, 10), np.uint8))
    assert _eval(tmp_path, cat) == 1
    assert "mask" in _one_line(capsys)


def test_missing_second_category_fails_before_work(tmp_path, capsys, no_work):
    make_category(tmp_path / "data", "a", n_train=2, n_good=1, n_defect=1)
    assert _eval(tmp_path, tmp_path / "data", "--category", "a", "nope") == 1
    assert "nope" in _one_line(capsys)


def test_too_many_shots_fails_before_work(tmp_path, capsys, no_work):
    make_category(tmp_path / "data", "a", n_train=2, n_good=1, n_defect=1)
    rc = main(["eval", "--data", str(tmp_path / "data"), "--category", "a", "--shots", "1", "4", "--seeds", "0",
               "--out", str(tmp_path / "out"), "--size", "64"])
    assert rc == 1 and "K=4 but only 2 images" in _one_line(capsys)


def test_out_that_is_a_file_fails_before_work(tmp_path, capsys, no_work):
    cat = make_category(tmp_path / "data", "a", n_train=2, n_good=1, n_defect=1)
    (tmp_path / "out").write_text("not a folder")
    assert _eval(tmp_path, cat) == 1
    assert "is a file" in _one_line(capsys)


def test_read_only_out_fails_before_work(tmp_path, capsys, no_work):
    cat = make_category(tmp_path / "data", "a", n_train=2, n_good=1, n_defect=1)
    with tmpfs(tmp_path / "ro", 1 << 16) as disk:
        remount_readonly(disk)
        assert _eval(tmp_path, cat, out=disk / "out") == 1
        assert "cannot be written" in _one_line(capsys)
