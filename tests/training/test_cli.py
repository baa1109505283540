"""`protospect eval` / `protospect train` through protospect.cli.main on tiny generated MVTec folders.

Bad input must give exit code 1 and exactly one line on stderr, never a traceback.
"""
import json

import cv2
import numpy as np
import pytest
import torch

from protospect.cli import main
from protospect.training.artifact import load_artifact

from mvtec_tiny import make_category

pytestmark = pytest.mark.torch
FAST = ["--size", "64", "--no-plots"]


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


def _fails_with_one_line(capsys, argv, *needles):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 1, err
    # What a terminal shows: a cleared progress bar (text before the last carriage return) is gone.
    shown = [line.split("\r")[-1].strip() for line in err.split("\n")]
    shown = [line for line in shown if line]
    assert len(shown) == 1 and "Traceback" not in err, err
    err = shown[0]
    assert err.startswith(f"protospect {argv[0]}: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def test_eval_writes_results_for_category_folder(tmp_path, capsys):
    cat = make_category(tmp_path / "data", "part")
    out = tmp_path / "out"
    assert main(["eval", "--data", str(cat), "--method", "patchcore", "--shots", "1", "2", "--seeds", "0", "--out", str(out), *FAST]) == 0
    records = json.loads((out / "results.json").read_text())
    assert [(r["category"], r["K"]) for r in records] == [("part", 1), ("part", 2)]
    assert "--size 64" in records[0]["command"] and "image AUROC" in capsys.readouterr().out


def test_eval_several_categories_append(tmp_path):
    make_category(tmp_path / "data", "a", n_train=2, n_good=2, n_defect=2)
    make_category(tmp_path / "data", "b", n_train=2, n_good=2, n_defect=2, seed=1)
    out = tmp_path / "out"
    assert main(["eval", "--data", str(tmp_path / "data"), "--category", "a", "b", "--shots", "1", "--seeds", "0",
                 "--out", str(out), *FAST]) == 0
    assert [r["category"] for r in json.loads((out / "results.json").read_text())] == ["a", "b"]


def test_train_writes_a_loadable_artifact(tmp_path, capsys):
    make_category(tmp_path / "data", "part")
    art = tmp_path / "art"
    assert main(["train", "--data", str(tmp_path / "data"), "--category", "part", "--shots", "2", "--seed", "1",
                 "--method", "patchcore", "--size", "64", "--out", str(art)]) == 0
    out = capsys.readouterr().out
    assert "train time" in out and str(art) in out
    model, manifest = load_artifact(art)
    assert manifest["K"] == 2 and manifest["seed"] == 1 and manifest["data"]["category"] == "part"
    assert model.meta["input_size"] == 64 and manifest["train_seconds"] > 0


def test_missing_folder(tmp_path, capsys):
    _fails_with_one_line(capsys, ["eval", "--data", str(tmp_path / "nope"), "--shots", "1", "--seeds", "0", "--out", str(tmp_path / "o")],
                         "data folder not found")
    make_category(tmp_path / "data", "part")
    _fails_with_one_line(capsys, ["train", "--data", str(tmp_path / "data"), "--category", "bolt", "--shots", "1",
                                  "--method", "patchcore", "--out", str(tmp_path / "a")], "category folder not found", "part")


def test_empty_train_good(tmp_path, capsys):
    cat = make_category(tmp_path / "data", "part")
    for p in (cat / "train" / "good").iterdir():
        p.unlink()
    _fails_with_one_line(capsys, ["eval", "--data", str(cat), "--shots", "1", "--seeds", "0", "--out", str(tmp_path / "o"), *FAST],
                         "no images in", "train/good")


def test_k_above_available_shots(tmp_path, capsys):
    cat = make_category(tmp_path / "data", "part", n_train=3)
    _fails_with_one_line(capsys, ["eval", "--data", str(cat), "--shots", "1", "4", "--seeds", "0", "--out", str(tmp_path / "o"), *FAST],
                         "K=4", "only 3 images")
    _fails_with_one_line(capsys, ["train", "--data", str(cat), "--shots", "5", "--method", "patchcore", "--out", str(tmp_path / "a")],
                         "K=5", "only 3 images")
    assert not (tmp_path / "o" / "results.json").exists()


def test_unreadable_image(tmp_path, capsys):
    cat = make_category(tmp_path / "data", "part")
    (cat / "test" / "good" / "001.png").write_bytes(b"not a png at all")
    _fails_with_one_line(capsys, ["eval", "--data", str(cat), "--shots", "1", "--seeds", "0", "--out", str(tmp_path / "o"), *FAST],
                         "cannot decode image", "001.png")
    (cat / "train" / "good" / "000.png").write_bytes(b"")
    _fails_with_one_line(capsys, ["train", "--data", str(cat), "--shots", "4", "--method", "patchcore", "--out", str(tmp_path / "a")],
                         "000.png")


def test_mask_of_the_wrong_size(tmp_path, capsys):
    cat = make_category(tmp_path / "data", "part")
    cv2.imwrite(str(cat / "ground_truth" / "blob" / "002_mask.png"), np.zeros((32, 48), np.uint8))
    _fails_with_one_line(capsys, ["eval", "--data", str(cat), "--shots", "1", "--seeds", "0", "--out", str(tmp_path / "o"), *FAST],
                         "002_mask.png", "48x32")


def test_bad_options(tmp_path, capsys):
    cat = make_category(tmp_path / "data", "part")
    base = ["--data", str(cat), "--seeds", "0", "--out", str(tmp_path / "o")]
    _fails_with_one_line(capsys, ["eval", *base, "--shots", "1", "--method", "patchcor"], "unknown method", "patchcore")
    _fails_with_one_line(capsys, ["eval", *base, "--shots", "0"], "--shots")
    _fails_with_one_line(capsys, ["eval", *base, "--shots", "1", "--preset", "huge", *FAST], "preset")
    _fails_with_one_line(capsys, ["eval", *base, "--shots", "1", "--set", "sigmaa=2", *FAST], "sigmaa")
    _fails_with_one_line(capsys, ["eval", *base, "--shots", "1", "--backbone-weights", str(tmp_path / "w.pt")], "w.pt")
