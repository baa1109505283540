"""Issue 20 regressions in the runtime: a torn verdict log is repaired before the next run appends,
calibrate refuses bad margins / outputs / Ctrl-C without writing, bench and soak refuse bad sizes and
counts before the run, a malformed threshold file is one line."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from fixture_models import decode_video

from protospect.cli import main as cli_main
from protospect.runtime.sinks import JsonlSink
from protospect.runtime.sources import ArraySource

FRAGMENT = '{"seq":7,"t_capture_ns":12345,"t_wall":1795000000.1,"sco'


def _strict_lines(path: Path) -> list[dict]:
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


# -- verdict log -------------------------------------------------------------------------------------
def test_a_torn_last_line_is_moved_aside_before_the_next_run_appends(fx, tmp_path, capsys, caplog):
    log = tmp_path / "verdicts.jsonl"
    whole = '{"seq":6,"verdict":"OK"}\n'
    log.write_text(whole + FRAGMENT)  # disk full mid-write in the earlier run
    assert cli_main(["serve", str(fx.model), "--source", str(fx.video), "--sink", str(tmp_path),
                     "--max-frames", "5"]) == 0
    records = _strict_lines(log)  # every line parses: nothing was appended onto the fragment
    assert records[0] == {"seq": 6, "verdict": "OK"} and [r["seq"] for r in records[1:]] == [0, 1, 2, 3, 4]
    torn = list(tmp_path.glob("verdicts.jsonl.torn-*"))
    assert len(torn) == 1 and torn[0].read_text() == FRAGMENT
    said = [r.getMessage() for r in caplog.records if "torn" in r.getMessage()]
    assert len(said) == 1 and torn[0].name in said[0]
    assert "Traceback" not in capsys.readouterr().err


def test_a_complete_but_unparseable_last_line_and_a_log_without_newline_at_all(tmp_path):
    log = tmp_path / "verdicts.jsonl"
    log.write_text('{"seq":1}\n' + FRAGMENT + '{"seq":2}\n')  # an older run's record glued onto a fragment
    sink = JsonlSink(log)
    sink.reject({"seq": 3, "verdict": "REJECTED"})
    sink.close()
    assert [r["seq"] for r in _strict_lines(log)] == [1, 3] and sink.torn is not None
    assert sink.torn.read_text() == FRAGMENT + '{"seq":2}\n'
    only = tmp_path / "b" / "verdicts.jsonl"
    only.parent.mkdir()
    only.write_text(FRAGMENT)
    sink = JsonlSink(only)
    sink.reject({"seq": 0})
    sink.close()
    assert only.read_text() == '{"seq":0}\n' and sink.torn.read_text() == FRAGMENT


def test_a_whole_log_is_left_alone(tmp_path):
    log = tmp_path / "verdicts.jsonl"
    log.write_text('{"seq":1}\n{"seq":2}\n')
    sink = JsonlSink(log)
    sink.close()
    assert sink.torn is None and log.read_text() == '{"seq":1}\n{"seq":2}\n'
    assert not list(tmp_path.glob("*.torn-*"))


def test_a_failed_write_leaves_no_partial_line(tmp_path, monkeypatch):
    from protospect.runtime import sinks

    log = tmp_path / "verdicts.jsonl"
    sink = JsonlSink(log)
    sink.reject({"seq": 0})
    real = os.write

    def half_then_full(fd, data):  # the disk fills up in the middle of the line
        if fd == sink._fd and len(data) > 8:
            return real(fd, data[:8])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sinks.os, "write", half_then_full)
    with pytest.raises(sinks.SinkError, match="No space left"):
        sink.reject({"seq": 1, "verdict": "REJECTED", "reason": "x" * 40})
    monkeypatch.setattr(sinks.os, "write", real)
    sink.close()
    assert log.read_text() == '{"seq":0}\n'


# -- calibrate ---------------------------------------------------------------------------------------
GOOD_FILE = '{"threshold": 0.5}\n'


@pytest.fixture()
def old_threshold(tmp_path) -> Path:
    out = tmp_path / "line_threshold.json"
    out.write_text(GOOD_FILE)
    return out


def _one_error_line(err: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".part")))


@pytest.mark.parametrize("rates,words", [(["--frr=inf"], ("--frr", "(0, 1)")), (["--frr=nan"], ("--frr", "(0, 1)")),
                                         (["--frr=0"], ("--frr", "(0, 1)")), (["--frr=1.5"], ("--frr", "(0, 1)")),
                                         (["--frr=0.1", "--review-frr=0.05"], ("--review-frr", "below --frr")),
                                         (["--frr=0.01", "--max-frames=50"], ("N >= 1/A - 1 = 99",))])
def test_calibrate_refuses_bad_rates_or_too_few_parts_before_anything_is_written(fx, old_threshold, capsys, monkeypatch,
                                                                                 rates, words):
    from protospect.runtime import cli_calibrate

    monkeypatch.setattr(cli_calibrate, "open_source", lambda *a, **k: pytest.fail("the source was opened"))
    assert cli_main(["calibrate", str(fx.model), "--source", str(fx.video), "--out", str(old_threshold), *rates]) == 1
    _one_error_line(capsys.readouterr().err, *words)
    assert old_threshold.read_text() == GOOD_FILE and not old_threshold.with_suffix(".png").exists()


def test_calibrate_out_onto_a_directory_or_a_read_only_place_is_one_line_before_the_run(fx, tmp_path, capsys):
    folder = tmp_path / "thr"
    folder.mkdir()
    assert cli_main(["calibrate", str(fx.model), "--source", str(fx.video), "--out", str(folder)]) == 1
    _one_error_line(capsys.readouterr().err, "is a directory")
    assert list(folder.iterdir()) == [] and _leftovers(tmp_path) == []
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
    else:  # root writes through permission bits: use a place nobody can create files in
        ro = Path("/sys")
        if os.access(ro, os.W_OK) and not _cannot_create_in(ro):
            pytest.skip("no read-only folder available as root")
    assert cli_main(["calibrate", str(fx.model), "--source", str(fx.video), "--out", str(ro / "t.json")]) == 1
    _one_error_line(capsys.readouterr().err, "cannot write in")


def _cannot_create_in(folder: Path) -> bool:
    import tempfile

    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return True
    return False


def test_calibrate_save_that_fails_leaves_the_old_file_and_no_temp_file(fx, old_threshold, monkeypatch, capsys):
    import protospect.files as files

    def refuse(src, dst):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(files.os, "replace", refuse)  # the check passed; the disk turns read-only before the save
    assert cli_main(["calibrate", str(fx.model), "--source", str(fx.video), "--out", str(old_threshold),
                     "--frr", "0.05"]) == 1
    _one_error_line(capsys.readouterr().err, "cannot write the threshold file", "Read-only")
    assert old_threshold.read_text() == GOOD_FILE and _leftovers(old_threshold.parent) == []


class SignallingSource(ArraySource):
    """Good frames on loop; Ctrl-C (SIGINT to this process) after ``n`` of them, as an operator would."""

    def __init__(self, fx, n):
        super().__init__(decode_video(fx.video), loop=True, bgr=True, name="good parts")
        self.n, self.count = n, 0

    def read(self):
        self.count += 1
        if self.count == self.n:
            os.kill(os.getpid(), signal.SIGINT)
        return super().read()


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")
def test_ctrl_c_during_calibrate_writes_nothing_and_says_so(fx, old_threshold, monkeypatch, capsys):
    from protospect.runtime import cli_calibrate

    monkeypatch.setattr(cli_calibrate, "open_source", lambda spec, loop: SignallingSource(fx, 15))
    code = cli_main(["calibrate", str(fx.model), "--source", "x", "--out", str(old_threshold), "--max-frames", "5000"])
    err = capsys.readouterr().err
    assert code == 130, err
    _one_error_line(err, "interrupted after", "nothing written")
    assert old_threshold.read_text() == GOOD_FILE and not old_threshold.with_suffix(".png").exists()


def test_calibrate_still_writes_both_files_atomically(fx, tmp_path, capsys):
    out = tmp_path / "new" / "thr.json"
    assert cli_main(["calibrate", str(fx.model), "--source", str(fx.video), "--out", str(out), "--frr", "0.05"]) == 0
    assert json.loads(out.read_text())["good_frames"] == fx.n_frames
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG" and _leftovers(out.parent) == []


# -- --threshold FILE --------------------------------------------------------------------------------
@pytest.mark.parametrize("model_field", [[1, 2], "abc", None, 3])
def test_a_threshold_file_with_a_malformed_model_field_is_one_line(fx, tmp_path, capsys, model_field):
    thr = tmp_path / "thr.json"
    thr.write_text(json.dumps({"format": "protospect.line_threshold/1", "threshold": 0.3, "model": model_field}))
    assert cli_main(["serve", str(fx.model), "--source", str(fx.video), "--threshold", str(thr)]) == 1
    _one_error_line(capsys.readouterr().err, "model", "protospect calibrate")


# -- bench / soak ------------------------------------------------------------------------------------
def test_bench_out_naming_an_existing_file_is_refused_before_the_run(fx, tmp_path, capsys):
    out = tmp_path / "bench.txt"
    out.write_text("keep me\n")
    assert cli_main(["bench", str(fx.model), "--frames", "5", "--warmup", "0", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    _one_error_line(captured.err, "--out", "not a folder")
    assert "HEADLINE" not in captured.out and out.read_text() == "keep me\n"


@pytest.mark.parametrize("size", ["-5x10", "0x0", "10x0", "abc", "12"])
def test_bench_frame_size_must_be_two_positive_integers(fx, tmp_path, capsys, size):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", str(fx.model), "--frames", "5", f"--frame-size={size}", "--out", str(tmp_path / "b")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"--frame-size: {size}" in err and not (tmp_path / "b").exists()


def test_soak_frames_must_be_at_least_one(fx, tmp_path, capsys):
    from protospect.runtime import cli_soak as soak

    assert soak.main([str(fx.model), "--frames", "0", "--sink", str(tmp_path / "s")]) == 1
    _one_error_line(capsys.readouterr().err, "--frames 0", ">= 1")
    assert not (tmp_path / "s").exists()
    assert cli_main(["soak", str(fx.model), "--frames", "-3"]) == 1
    _one_error_line(capsys.readouterr().err, "--frames -3")
