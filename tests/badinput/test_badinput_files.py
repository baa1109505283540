"""The bad-input suite (issue 20): the real `protospect` executables, in subprocesses, over a generated matrix of
bad and odd inputs (this module: bad and odd image files, masks, artifacts for export, train/eval settings; the
station side is test_badinput_station.py; the runner and what every case asserts: matrix.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from kit import BAD_IMAGES, ODD_IMAGES, STATION_CLI, TORCH_CLI, Kit, copy_tree, odd_image_bytes, write_png
from matrix import Case, check_case, registry, station, _records

pytestmark = [pytest.mark.torch]

CASES: list[Case] = []
case = registry(CASES)


# ---- 1. bad image files: train (torch), eval (torch), serve and calibrate (station) -----------------

def _bad_copy(kind: str, folder: Path) -> Path:
    suffix, make = BAD_IMAGES[kind]
    path = folder / f"zz-{kind}{suffix}"
    path.write_bytes(make())
    return path


for kind in BAD_IMAGES:
    def train_bad(work, kit, ctx, kind=kind):
        data = copy_tree(kit.data, work / "data")
        ctx["bad"] = _bad_copy(kind, data / "train" / "good")
        return ["train", "--data", data, "--method", "patchcore", "--shots", "5", "--size", "64", "--out", work / "art"]
    case(f"train-shot-{kind}", TORCH_CLI, train_bad, 1, needle="zz-" + kind)

    def serve_bad(work, kit, ctx, kind=kind):
        frames = copy_tree(kit.frames, work / "frames")
        _bad_copy(kind, frames)
        return station("serve", kit.model, frames, work)

    def rejected_logged(work, res, kind=kind):
        recs = _records(work / "sink" / "verdicts.jsonl")
        bad = [r for r in recs if r.get("origin", "").startswith("zz-")]
        assert len(recs) == 7 and len(bad) == 1 and bad[0]["verdict"] == "REJECTED" and bad[0]["reason"], recs
    case(f"serve-frame-{kind}", STATION_CLI, serve_bad, 0, check=rejected_logged)

    def calibrate_bad(work, kit, ctx, kind=kind):
        frames = copy_tree(kit.frames, work / "frames")
        _bad_copy(kind, frames)
        return station("calibrate", kit.model, frames, work)

    def threshold_from_good(work, res):
        line = json.loads((work / "line.json").read_text())
        assert "6 scored, 1 rejected" in res.out, res.out
        assert isinstance(line, dict)
    case(f"calibrate-frame-{kind}", STATION_CLI, calibrate_bad, 0, check=threshold_from_good)

for kind in ("zero-byte", "text-as-png", "bad-crc-png"):
    def eval_bad(work, kit, ctx, kind=kind):
        data = copy_tree(kit.data, work / "data")
        _bad_copy(kind, data / "test" / "good")
        return ["eval", "--data", data, "--shots", "1", "--seeds", "0", "--size", "64", "--out", work / "out"]
    case(f"eval-test-{kind}", TORCH_CLI, eval_bad, 1, needle="zz-" + kind)


def int8_bad_calib(work, kit, ctx):
    folder = copy_tree(kit.frames, work / "calib")
    _bad_copy("truncated-png", folder)
    return ["export", kit.art, "--out", work / "m8.onnx", "--int8", "--calib", folder]


case("export-int8-calib-truncated-png", TORCH_CLI, int8_bad_calib, 1, needle="zz-truncated-png")


# ---- 2. odd but valid images: converted, never rejected ------------------------------------------

for kind in ODD_IMAGES:
    def serve_odd(work, kit, ctx, kind=kind):
        (work / "frames").mkdir()
        (work / "frames" / f"{kind}.png").write_bytes(odd_image_bytes(kind))
        return station("serve", kit.model, work / "frames", work)

    def scored(work, res):
        recs = _records(work / "sink" / "verdicts.jsonl")
        assert len(recs) == 1 and recs[0]["verdict"] in ("OK", "NG", "REVIEW"), recs
    case(f"serve-odd-{kind}", STATION_CLI, serve_odd, 0, check=scored)


def train_odd(work, kit, ctx):
    data = copy_tree(kit.data, work / "data")
    for p in (data / "train" / "good").iterdir():
        p.unlink()
    for kind in ODD_IMAGES:
        (data / "train" / "good" / f"{kind}.png").write_bytes(odd_image_bytes(kind))
    return ["train", "--data", data, "--method", "patchcore", "--shots", "5", "--size", "64", "--out", work / "art"]


case("train-odd-images", TORCH_CLI, train_odd, 0, needle="trained patchcore")


# ---- 3. masks -----------------------------------------------------------------------------------

def _mask_case(content: Callable):
    def build(work, kit, ctx):
        data = copy_tree(kit.data, work / "data")
        mask = sorted((data / "ground_truth" / "blob").iterdir())[0]
        content(mask)
        return ["eval", "--data", data, "--shots", "1", "--seeds", "0", "--size", "64", "--out", work / "out"]
    return build


case("eval-mask-wrong-size", TORCH_CLI, _mask_case(lambda m: write_png(m, np.zeros((10, 12), np.uint8))), 1, needle="mask")
case("eval-mask-text", TORCH_CLI, _mask_case(lambda m: m.write_text("no mask")), 1, needle="mask")


# ---- 7. artifacts for export (torch) --------------------------------------------------------------

def _art(edit: Callable):
    def build(work, kit, ctx):
        art = copy_tree(kit.art, work / "art")
        edit(art)
        return ["export", art, "--out", work / "model.onnx"]
    return build


def _flip_byte(path: Path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _manifest(edit: Callable):
    def apply(art: Path):
        m = json.loads((art / "manifest.json").read_text())
        edit(m)
        (art / "manifest.json").write_text(json.dumps(m))
    return apply


case("export-artifact-weights-edited", TORCH_CLI, _art(lambda a: _flip_byte(a / "weights.pt")), 1, needle="weights.pt")
case("export-artifact-no-manifest", TORCH_CLI, _art(lambda a: (a / "manifest.json").unlink()), 1, needle="manifest")
case("export-artifact-manifest-text", TORCH_CLI, _art(lambda a: (a / "manifest.json").write_text("{not json")), 1,
     needle="manifest")
case("export-artifact-format-99", TORCH_CLI, _art(_manifest(lambda m: m.update(format_version=99))), 1, needle="99")
case("export-artifact-foreign-folder", TORCH_CLI, lambda w, k, c: ["export", k.data, "--out", w / "m.onnx"], 1,
     needle="manifest")


# ---- 12. settings and data for train/eval (torch) ---------------------------------------------------

case("train-set-steps-abc", TORCH_CLI,
     lambda w, k, c: ["train", "--data", k.data, "--shots", "2", "--set", "steps=abc", "--out", w / "a"], 1, needle="'steps'")
case("eval-missing-second-category", TORCH_CLI,
     lambda w, k, c: ["eval", "--data", k.data.parent, "--category", "part", "nope", "--shots", "1", "--seeds", "0",
                      "--out", w / "o"], 1, needle="nope")
case("train-too-many-shots", TORCH_CLI,
     lambda w, k, c: ["train", "--data", k.data, "--method", "patchcore", "--shots", "9", "--out", w / "a"], 1,
     needle="K=9")


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input(c: Case, kit: Kit, work: Path):
    check_case(c, kit, work)
