"""The sinks keep what was recorded: a re-run never replaces an earlier NG image, a NaN score is still
strict JSON, a failed NG image is noted and the run goes on, a verdict log that cannot be written
stops the run with exit code 1 and the final stats."""
from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

import pytest
from wrapped_backend import WrappedBackend

from protospect.cli import main as cli_main
from protospect.runtime.backends.ort import OrtBackend
from protospect.runtime.pipeline import Pipeline
from protospect.runtime.sinks import JsonlSink, NgImageSink
from protospect.runtime.sources import open_source


def _strict(line: str) -> dict:
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(line, parse_constant=refuse)


def _records(path: Path) -> list[dict]:
    return [_strict(line) for line in path.read_text().splitlines()]


def _run(fx, sink: Path, backend=None) -> dict:
    return Pipeline(backend or OrtBackend(fx.model), open_source(str(fx.video)),
                    [JsonlSink(sink / "verdicts.jsonl"), NgImageSink(sink / "ng", (0.0, 0.3))]).run()


def test_a_second_run_into_the_same_folder_keeps_the_first_runs_ng_images(fx, tmp_path):
    _run(fx, tmp_path)
    first = {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in (tmp_path / "ng").glob("*.png")}
    assert set(first) == {f"ng_{s:08d}.png" for s in fx.defect_frames}
    _run(fx, tmp_path)
    after = {p.name: p for p in (tmp_path / "ng").glob("*.png")}
    assert set(after) == set(first) | {f"ng_{s:08d}_1.png" for s in fx.defect_frames}
    for name, (data, mtime, ino) in first.items():  # not even rewritten with the same bytes
        st = after[name].stat()
        assert (after[name].read_bytes(), st.st_mtime_ns, st.st_ino) == (data, mtime, ino)
    recs = _records(tmp_path / "verdicts.jsonl")
    assert len(recs) == 2 * fx.n_frames  # appended, not truncated
    named = [(r["seq"], r["ng_image"]) for r in recs if r["verdict"] == "NG"]
    expected = sorted(fx.defect_frames)
    assert named == [(s, f"ng_{s:08d}.png") for s in expected] + [(s, f"ng_{s:08d}_1.png") for s in expected]
    assert not any("ng_image" in r for r in recs if r["verdict"] == "OK")


class NanBackend(WrappedBackend):
    """Every third frame scores NaN (a broken engine), with a NaN map."""

    name = "nan"

    def __init__(self, inner):
        super().__init__(inner)
        self.n = 0

    def infer(self, img):
        amap, score = self.inner.infer(img)
        self.n += 1
        return (amap * math.nan, math.nan) if self.n % 3 == 0 else (amap, score)


def test_a_nan_score_is_logged_as_strict_json_and_judged_ng(fx, tmp_path):
    report = _run(fx, tmp_path, NanBackend(OrtBackend(fx.model)))
    recs = _records(tmp_path / "verdicts.jsonl")  # raises on a bare NaN
    assert len(recs) == fx.n_frames
    nan = [r for r in recs if r["seq"] % 3 == 2]
    assert nan and all(r["score"] is None and r["score_not_finite"] == "nan" and r["verdict"] == "NG" for r in nan)
    assert all(isinstance(r["score"], float) and "score_not_finite" not in r for r in recs if r["seq"] % 3 != 2)
    assert all((tmp_path / "ng" / r["ng_image"]).is_file() for r in nan)  # saved with the map drawn hottest
    assert report["counters"]["ng"] == len({r["seq"] for r in recs if r["verdict"] == "NG"})


def test_failed_ng_image_is_noted_counted_and_the_run_goes_on(fx, tmp_path, monkeypatch, caplog, capsys):
    write_bytes = Path.write_bytes

    def disk_full(self, data):
        if self.name.endswith(".png.part"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    caplog.set_level("WARNING")
    assert cli_main(["serve", str(fx.model), "--source", str(fx.video), "--sink", str(tmp_path)]) == 0
    recs = _records(tmp_path / "verdicts.jsonl")
    assert [r["seq"] for r in recs] == list(range(fx.n_frames))  # every verdict logged
    ng = [r for r in recs if r["verdict"] == "NG"]
    assert {r["seq"] for r in ng} == fx.defect_frames
    assert all("No space left" in r["ng_image_error"] and "ng_image" not in r for r in ng)
    assert not list((tmp_path / "ng").iterdir())  # no half files either
    assert len([m for m in caplog.messages if "cannot save the NG image" in m]) == 1  # once, not per frame
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sink_failures"] == {"NG images": len(fx.defect_frames)} and summary["sink_error"] == ""
    assert f"NG images: {len(fx.defect_frames)} not saved" in capsys.readouterr().out


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux) to fill the disk")
def test_verdict_log_that_cannot_be_written_stops_cleanly_with_exit_1(fx, tmp_path, capsys):
    (tmp_path / "verdicts.jsonl").symlink_to("/dev/full")  # every write: ENOSPC
    assert cli_main(["serve", str(fx.model), "--source", str(fx.video), "--loop", "--sink", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "cannot write the verdict log" in errors[0] and "No space left" in errors[0]
    assert "frames: processed 1 " in out and "run stopped: cannot write the verdict log" in out  # final stats
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "No space left" in summary["sink_error"] and summary["capture_ended"] == "stopped"
