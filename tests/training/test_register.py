"""`protospect register` on a tiny generated part (64 px PCSNet, random backbone weights, 4 steps): the
station bundle it writes, that `serve STATION_DIR` scores the calibration parts exactly as registration
did and judges at its thresholds, and the bad inputs (a source that dies, a corrupt frame, too few good
parts, an edited or foreign bundle). Live capture (Enter per part) is tested on a fake camera."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from protospect import station
from protospect.cli import main
from protospect.errors import SourceError
from protospect.runtime import sources as rt_sources
from protospect.runtime.sources import ArraySource, SourceLost

pytestmark = pytest.mark.torch

K, N = 3, 20
TINY = ["--size", "64", "--set", "grid=8", "--set", "bins=[8,4,2]", "--set", "k=4", "--set", "guide_dim=8",
        "--set", "cas_width=8", "--set", "steps=4", "--set", "batch_size=2", "--set", "backbone_weights=random",
        "--set", "pdc_topk=5", "--set", "calib_augments=2", "--set", "calib_anomalies=1"]
RATES = ["--frr", "0.05", "--review-frr", "0.1"]  # N = 20 certifies 5 % (needs 19)
CORRUPT_AT = 5  # frame 5 of the folder is not an image


def part(rng: np.random.Generator, w: int = 96, h: int = 72) -> np.ndarray:
    """BGR: a grey disc with a hub on a dark belt, slightly moved, with sensor noise."""
    img = np.full((h, w, 3), 45, np.uint8)
    cx, cy = w // 2 + int(rng.integers(-2, 3)), h // 2 + int(rng.integers(-2, 3))
    cv2.circle(img, (cx, cy), 26, (170, 175, 180), -1, cv2.LINE_AA)
    cv2.circle(img, (cx, cy), 7, (30, 30, 30), -1, cv2.LINE_AA)
    return np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)


def _folder(path: Path, n: int, corrupt_at: int | None = None) -> Path:
    path.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(n):
        f = path / f"{i:04d}.png"
        if i == corrupt_at:
            f.write_bytes(b"not a png")
        else:
            cv2.imwrite(str(f), part(rng))
    return path


def _register(src, out, *extra) -> int:
    return main(["register", "--source", str(src), "--out", str(out), "--shots", str(K), "--good", str(N),
                 *RATES, *TINY, *extra])


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".register-" in p.name)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("register")
    src = _folder(root / "line", K + N + 1, corrupt_at=CORRUPT_AT)  # one frame more: the corrupt one
    out = root / "station"
    assert _register(src, out) == 0
    return src, out


def test_register_writes_a_complete_verified_bundle(bundle):
    src, out = bundle
    rec = station.check_bundle(out)  # format, every file's sha256, station.json's own
    assert _leftovers(out.parent) == []
    assert rec["format_version"] == station.FORMAT_VERSION and rec["model"] == "model.onnx"
    for name in ("model.onnx", "report.html", "report/scores.png", "artifact/manifest.json", "artifact/weights.pt",
                 "shots/train/good/shot_00.png", "report/good_00.png", "report/shot_02.png"):
        assert (out / name).is_file(), name
        assert name == "report.html" or name in rec["files"] or name.startswith("report/")
    assert set(rec["files"]) == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"station.json"}
    # shots are the first K frames, the calibration parts the next N usable ones: the corrupt frame skipped, counted
    assert [s["frame"] for s in rec["shots"]] == [0, 1, 2]
    parts = [c["frame"] for c in rec["calibration_parts"]]
    assert len(parts) == N and CORRUPT_AT not in parts and parts == [i for i in range(K, K + N + 1) if i != CORRUPT_AT]
    assert rec["source"]["corrupt_skipped"] == 1 and rec["source"]["corrupt"][0]["frame"] == CORRUPT_AT
    assert rec["source"]["corrupt"][0]["origin"] == f"{CORRUPT_AT:04d}.png"
    # the operating point is the conformal one over those N scores
    op = rec["operating_point"]
    scores = sorted(c["score"] for c in rec["calibration_parts"])
    assert op["scores"] == scores and op["n"] == N and op["certified"] and op["frr"] == 0.05
    k_a, k_b = math.ceil((N + 1) * 0.95), math.ceil((N + 1) * 0.9)  # 20, 19
    assert scores[k_a - 1] < op["ng_threshold"] <= np.nextafter(scores[k_a - 1], np.inf)
    assert scores[k_b - 1] < op["review_threshold"] <= np.nextafter(scores[k_b - 1], np.inf)
    page = (out / "report.html").read_text()
    assert "probability at most 5 %" in page and "REVIEW or NG" in page and 'src="report/scores.png"' in page
    assert set(rec["timings_s"]) >= {"capture", "train", "export", "score", "thresholds", "report"}
    manifest = json.loads((out / "artifact" / "manifest.json").read_text())
    assert manifest["shots"] == ["shot_00.png", "shot_01.png", "shot_02.png"] and manifest["method"] == "pcsnet"


def test_serve_station_dir_scores_like_registration_and_judges_at_its_thresholds(bundle, tmp_path):
    src, out = bundle
    rec = station.check_bundle(out)
    sink = tmp_path / "served"
    assert main(["serve", str(out), "--source", str(src), "--sink", str(sink)]) == 0
    lines = [json.loads(x) for x in (sink / "verdicts.jsonl").read_text().splitlines()]
    frames = {r["seq"]: r for r in lines if "event" not in r}
    assert frames[CORRUPT_AT]["verdict"] == "REJECTED"
    for c in rec["calibration_parts"]:  # the runtime's path gives the scores registration measured
        assert frames[c["frame"]]["score"] == pytest.approx(c["score"], abs=2e-6)
    op = rec["operating_point"]
    for r in frames.values():
        if r["verdict"] != "REJECTED":
            s = r["score"]  # logged to 6 decimals: the largest calibration part sits one ulp under the NG threshold
            if min(abs(s - op["ng_threshold"]), abs(s - op["review_threshold"])) > 1e-6:
                assert r["verdict"] == ("NG" if s >= op["ng_threshold"] else
                                        "REVIEW" if s >= op["review_threshold"] else "OK")
            assert 0 < r["p_value"] <= 1
    # every calibration part is below the NG threshold (k = N: the threshold sits just above the largest)
    assert all(frames[c["frame"]]["verdict"] != "NG" for c in rec["calibration_parts"])
    summary = json.loads((sink / "summary.json").read_text())
    assert summary["backend"]["threshold_source"].startswith("station bundle")
    assert summary["backend"]["threshold"] == op["ng_threshold"]
    assert main(["bench", str(out), "--frames", "3", "--warmup", "1", "--out", str(tmp_path / "b")]) == 0


@pytest.mark.parametrize("edit,named", [("report.html", "report.html"), ("artifact/manifest.json", "artifact/manifest.json"),
                                        ("model.onnx", "model.onnx"), ("station.json", "station.json"),
                                        ("extra.onnx", "extra.onnx")])
def test_an_edited_bundle_is_refused_naming_the_file(bundle, tmp_path, capsys, edit, named):
    _, out = bundle
    copy = tmp_path / "station"
    shutil.copytree(out, copy)
    target = copy / edit
    if edit == "station.json":
        rec = json.loads(target.read_text())
        rec["operating_point"]["ng_threshold"] *= 10  # someone "tunes" the threshold by hand
        target.write_text(json.dumps(rec))
    elif target.exists():
        target.write_bytes(target.read_bytes() + b" ")
    else:
        target.write_bytes(b"x")
    assert main(["serve", str(copy), "--source", str(copy / "report" / "good_00.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err


def test_a_bundle_of_another_format_version_is_refused(bundle, tmp_path, capsys):
    _, out = bundle
    copy = tmp_path / "station"
    shutil.copytree(out, copy)
    rec = json.loads((copy / "station.json").read_text())
    rec["format_version"] = station.FORMAT_VERSION + 1
    (copy / "station.json").write_text(json.dumps(station.seal(rec)))
    assert main(["serve", str(copy), "--source", str(copy / "report" / "good_00.png")]) == 1
    err = capsys.readouterr().err
    assert "format_version 2" in err and "station.json" in err


def test_too_few_good_parts_is_refused_before_capture_naming_the_n_needed(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(rt_sources, "open_source", lambda *a, **k: pytest.fail("the source was opened"))
    out = tmp_path / "station"
    assert main(["register", "--source", "x", "--out", str(out), "--shots", "2", "--good", "50", *TINY]) == 1
    err = capsys.readouterr().err
    assert "N >= 1/A - 1 = 99" in err and "--good 50" in err and not out.exists()


class DyingSource(ArraySource):
    """A camera cable pulled after ``n`` frames."""

    def __init__(self, n):
        rng = np.random.default_rng(0)
        super().__init__([part(rng) for _ in range(n)], bgr=True, name="camera 0")
        self.left = n

    def read(self):
        if self.left == 0:
            raise SourceLost("no frame for 2 s")
        self.left -= 1
        return super().read()


def test_a_source_that_dies_during_registration_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(rt_sources, "open_source", lambda spec, loop=False: DyingSource(K + 5))
    out = tmp_path / "station"
    assert _register("0", out) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stopped during registration" in err[0] and "nothing written" in err[0], err
    assert not out.exists() and _leftovers(tmp_path) == []
    # a finite source that ends too early: the same, naming what it needed
    monkeypatch.undo()
    src = _folder(tmp_path / "short", K + 4)
    assert _register(src, out) == 1
    assert "needs K + N = 3 + 20 = 23" in capsys.readouterr().err and not out.exists()


def test_a_failure_after_the_capture_leaves_nothing(bundle, tmp_path, capsys, monkeypatch):
    src, _ = bundle
    from protospect.export import parity

    monkeypatch.setattr(parity.ParityReport, "ok", property(lambda self: False))
    out = tmp_path / "station"
    assert _register(src, out) == 1
    assert "parity check" in capsys.readouterr().err and not out.exists() and _leftovers(tmp_path) == []


class FakeCamera(ArraySource):
    live = True

    def __init__(self):
        rng = np.random.default_rng(1)
        super().__init__([part(rng) for _ in range(4)], loop=True, bgr=True, name="camera 0")


def test_live_capture_asks_the_operator_for_each_part_and_can_be_stopped():
    from protospect.training.register import capture

    prompts = []
    cap = capture("0", 2, 3, confirm=lambda text: prompts.append(text) or "", open_source=lambda s, loop: FakeCamera())
    assert len(cap.shots) == 2 and len(cap.parts) == 3 and len(prompts) == 5
    assert prompts[0].startswith("shot 1/2") and prompts[2].startswith("good part 1/3")
    answers = iter(["", "q"])
    with pytest.raises(SourceError, match="stopped by the operator after 1 of 5"):
        capture("0", 2, 3, confirm=lambda text: next(answers), open_source=lambda s, loop: FakeCamera())


def test_capture_takes_every_nth_frame_and_says_when_a_frame_has_another_size(caplog):
    from protospect.training.register import capture

    rng = np.random.default_rng(2)
    frames = [part(rng) for _ in range(7)] + [part(rng, 128, 96)] + [part(rng) for _ in range(4)]
    src = ArraySource(frames, bgr=True, name="folder")
    cap = capture("x", 2, 4, every=2, open_source=lambda s, loop: src)
    assert [c.index for c in cap.shots + cap.parts] == [0, 2, 4, 6, 8, 10]  # frame 7 (the big one) skipped by --every
    src = ArraySource(frames, bgr=True, name="folder")
    with caplog.at_level("WARNING"):
        cap = capture("x", 2, 6, every=1, open_source=lambda s, loop: src)
    assert cap.sizes == [(96, 72), (128, 96)] and cap.parts[5].rgb.shape == (96, 128, 3)
    said = [r.getMessage() for r in caplog.records if "128x96" in r.getMessage()]
    assert len(said) == 1 and "resized to the model's input size the same way as served frames" in said[0]


def test_register_stores_the_line_settings_that_serve_station_dir_uses(bundle, tmp_path):
    src, _ = bundle
    out = tmp_path / "station"
    line = ["--trigger", "plc", "--modbus", "127.0.0.1:5020", "--mqtt", "mqtt://broker:1883/plant", "--station", "st1"]
    assert _register(src, out, *line) == 0
    rec = station.check_bundle(out)  # sealed with the settings: an edit to them is refused like any other
    assert rec["line"] == {"trigger": "plc", "modbus": "127.0.0.1:5020", "mqtt": "mqtt://broker:1883/plant",
                           "station": "st1"}
    assert station.line_settings(rec) == rec["line"]
    assert "line" not in station.read_station(bundle[1])  # without line flags the bundle has none


@pytest.mark.parametrize("flags, needle", [
    (["--modbus", "127.0.0.1:5020"], "add --trigger plc"),
    (["--trigger", "plc"], "--trigger plc needs a way for the PLC to trigger"),
    (["--trigger", "plc", "--opcua", "127.0.0.1:4840"], "--opcua 127.0.0.1:4840"),
    (["--mqtt", "mqtt://h:1883/#"], "--mqtt mqtt://h:1883/#"),
    (["--trigger-source", "Line1"], "add --trigger hardware"),
])
def test_bad_line_flags_are_refused_before_capture(tmp_path, capsys, monkeypatch, flags, needle):
    monkeypatch.setattr(rt_sources, "open_source", lambda *a, **k: pytest.fail("the source was opened"))
    out = tmp_path / "station"
    assert main(["register", "--source", "x", "--out", str(out), "--shots", str(K), "--good", str(N), *RATES, *TINY,
                 *flags]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and not out.exists(), err


def test_register_with_geometry_auto_chooses_on_the_good_parts_and_records_it(tmp_path):
    """geometry=auto reads held-out good parts at registration: the first calibration parts, never the shots."""
    src = _folder(tmp_path / "line", K + N)
    out = tmp_path / "station"
    auto = ["--size", "128", "--set", "grid=16", "--set", "bins=[16,8,4]", "--set", "auto_small=64", "--set", "geometry=auto"]
    assert _register(src, out, *auto) == 0  # later flags win over TINY's size and grid
    rec = station.check_bundle(out)
    choice = rec[station.GEOMETRY_CHOICE]
    assert choice["n_holdout"] == N and set(choice["scores"]) == {"small", "large"}
    assert rec["input_size"] == choice["input_size"] == choice["scores"][choice["chosen"]]["input_size"]
    branch = rec[station.IMAGE_BRANCH_CHOICE]  # then rule v13 on the same parts: the image score's choice
    assert branch["n_holdout"] == N and set(branch["scores"]) == {"map", "map+global"}
    gain = branch["scores"]["map+global"]["mean"] - branch["scores"]["map"]["mean"]
    assert branch["chosen"] == ("global" if gain > branch["margin"] else "none")
