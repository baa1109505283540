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
