"""`protospect export --out` on a full or read-only filesystem: one line, exit 1, and a good model.onnx
already there is never replaced by a truncated one (issue 20)."""
from __future__ import annotations

import pytest
from fsfaults import fill, remount_readonly, tmpfs

from protospect.cli import main

pytestmark = pytest.mark.torch


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_export_on_a_full_disk_keeps_the_good_model(patchcore, fp32_graph, tmp_path, capsys):
    _, art = patchcore
    previous = b"a previous good model " * 2000  # 44 KB: the new graph does not fit beside what is left
    with tmpfs(tmp_path / "small", len(previous) + 64 * 1024) as disk:
        out = disk / "model.onnx"
        out.write_bytes(previous)
        fill(disk, leave_bytes=len(fp32_graph.read_bytes()) // 2)
        assert main(["export", str(art), "--out", str(out)]) == 1
        line = _one_line(capsys.readouterr().err)
        assert "No space left on device" in line and str(out) in line, line
        assert out.read_bytes() == previous
        assert sorted(p.name for p in disk.iterdir()) == [".filler", "model.onnx"]  # no .part left behind


def test_export_to_a_read_only_filesystem_is_one_line(patchcore, tmp_path, capsys):
    _, art = patchcore
    with tmpfs(tmp_path / "ro", 1 << 20) as disk:
        (disk / "model.onnx").write_bytes(b"previous")
        remount_readonly(disk)
        assert main(["export", str(art), "--out", str(disk / "model.onnx")]) == 1
        line = _one_line(capsys.readouterr().err)
        assert "Read-only file system" in line, line
        assert (disk / "model.onnx").read_bytes() == b"previous"
