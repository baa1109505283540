"""serve --config (issue 18): several cameras in one process, batched across cameras, per-camera logs, one page."""
from __future__ import annotations

import argparse
import json
import threading
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from fixture_models import build_diff_model, render_part

from protospect import cli
from protospect.runtime import multicam
from protospect.runtime.sources import Source


@pytest.fixture(scope="module")
def media(fx, tmp_path_factory):
    """The fixture's batch-1 model, the same model with a dynamic batch, and a 10-image folder."""
    root = tmp_path_factory.mktemp("multicam")
    dyn = build_diff_model(root / "dyn.onnx", fx.ref, threshold=fx.threshold, map_range=(0.0, 0.3), batch="dynamic")
    folder = root / "folder"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(10):
        cv2.imwrite(str(folder / f"p{i:02d}.png"), render_part(rng, (160, 120), defect=i == 4))
    return argparse.Namespace(dyn=dyn, folder=folder, b1=fx.model)


def station_file(path: Path, cameras: list[dict]) -> Path:
    lines = []
    for cam in cameras:
        lines.append("[[camera]]")
        lines += [f'{k} = {json.dumps(str(v)) if not isinstance(v, (int, float)) else v}' for k, v in cam.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def log_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "verdicts.jsonl").read_text().splitlines()]


def serve(*argv) -> int:
    return cli.main(["serve", *map(str, argv)])


def test_three_cameras_one_process_every_frame_in_its_own_log(fx, media, tmp_path, capsys):
    cfg = station_file(tmp_path / "station.toml", [
        {"name": "left", "source": fx.video, "model": media.dyn},
        {"name": "top", "source": media.folder, "model": media.dyn},
        {"name": "right", "source": fx.video, "model": media.dyn, "sink": tmp_path / "own_right"}])
    # a long window: a batch closes only when every live camera has a frame, so the sizes are fixed
    assert serve("--config", cfg, "--sink", tmp_path / "root", "--batch-window-ms", 60000) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    left, top, right = log_of(tmp_path / "root/left"), log_of(tmp_path / "root/top"), log_of(tmp_path / "own_right")
    assert not (tmp_path / "root/right").exists()  # a camera with its own sink writes there only
    for log, n in ((left, fx.n_frames), (top, 10), (right, fx.n_frames)):
        assert [r["seq"] for r in log] == list(range(n))
    assert {r["seq"] for r in left if r["verdict"] == "NG"} == fx.defect_frames
    assert {r["seq"] for r in right if r["verdict"] == "NG"} == fx.defect_frames
    assert {r["seq"] for r in top if r["verdict"] == "NG"} == {4}
    assert [r["origin"] for r in top] == [f"p{i:02d}.png" for i in range(10)]
    assert sorted(p.name for p in (tmp_path / "root/left/ng").iterdir()) == [f"ng_{s:08d}.png" for s in sorted(fx.defect_frames)]
    summary = json.loads((tmp_path / "root/top/summary.json").read_text())
    assert summary["camera"] == "top" and summary["status"] == "ended" and summary["counters"]["processed"] == 10
    station = json.loads((tmp_path / "root/summary.json").read_text())
    (model,) = station["models"]
    assert model["batched"] is True and model["cameras"] == ["left", "top", "right"]
    assert model["batch_sizes"] == {"2": fx.n_frames - 10, "3": 10}  # the folder ended after 10: no longer waited for


def test_batched_verdicts_equal_unbatched(fx, media, tmp_path):
    runs = {}
    for kind, model in (("batched", media.dyn), ("unbatched", media.b1)):
        cfg = station_file(tmp_path / f"{kind}.toml", [{"name": n, "source": s, "model": model}
                                                       for n, s in (("a", fx.video), ("b", media.folder), ("c", fx.video))])
        assert serve("--config", cfg, "--sink", tmp_path / kind) == 0
        runs[kind] = {n: log_of(tmp_path / kind / n) for n in "abc"}
        station = json.loads((tmp_path / kind / "summary.json").read_text())
        assert station["models"][0]["batched"] is (kind == "batched")
        assert station["models"][0]["frames"] == 2 * fx.n_frames + 10
    for name in "abc":
        b, u = runs["batched"][name], runs["unbatched"][name]
        assert [(r["seq"], r["verdict"]) for r in b] == [(r["seq"], r["verdict"]) for r in u]
        np.testing.assert_allclose([r["score"] for r in b], [r["score"] for r in u], rtol=1e-6, atol=1e-7)


def test_a_failing_source_does_not_stop_the_others(fx, media, tmp_path, capsys):
    cfg = station_file(tmp_path / "station.toml", [
        {"name": "good", "source": fx.video, "model": media.dyn},
        {"name": "gone", "source": tmp_path / "unplugged.avi", "model": media.dyn},
        {"name": "folder", "source": media.folder, "model": media.b1}])
    assert serve("--config", cfg, "--sink", tmp_path / "root") == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("protospect")]
    assert len(err) == 1 and err[0].startswith(f"protospect serve: camera 'gone': source failed: source not found: "
                                               f"{tmp_path / 'unplugged.avi'}"), err
    assert len(log_of(tmp_path / "root/good")) == fx.n_frames and len(log_of(tmp_path / "root/folder")) == 10
    gone = json.loads((tmp_path / "root/gone/summary.json").read_text())
    assert gone["status"] == "failed" and "source not found" in gone["reason"] and gone["counters"]["processed"] == 0


class StalledSource(Source):
    """A live camera that opens and then never delivers a frame (IDLE: nothing yet, not lost)."""

    live, name = True, "stalled"

    def __init__(self):
        self.stop = threading.Event()

    def open(self):
        pass

    def read(self):
        from protospect.runtime.sources import IDLE
        self.stop.wait(0.02)
        return IDLE


def test_a_stalled_camera_never_holds_the_others_back(fx, media, tmp_path, monkeypatch):
    real_open = multicam.open_source
    monkeypatch.setattr(multicam, "open_source", lambda spec, loop=False: StalledSource() if spec == "stalled"
                        else real_open(spec, loop=loop))
    cfg = station_file(tmp_path / "station.toml", [{"name": "moving", "source": fx.video, "model": media.dyn},
                                                   {"name": "stuck", "source": "stalled", "model": media.dyn}])
    station, close = open_station(cfg, tmp_path / "root", window_ms=20)
    runner = threading.Thread(target=station.run, daemon=True)
    runner.start()
    moving = station.lanes[0]
    assert moving._done.wait(120), "the moving camera was held back by the stalled one"
    station.stop()
    runner.join(30)
    close()
    assert not runner.is_alive()
    assert [r["seq"] for r in log_of(tmp_path / "root/moving")] == list(range(fx.n_frames))
    assert log_of(tmp_path / "root/stuck") == [] and station.lanes[1].status == "ended"
    assert station.batchers[0].stats()["batch_sizes"] == {"1": fx.n_frames}


def open_station(cfg: Path, sink: Path, *, window_ms: float = 10.0, view=None):
    args = argparse.Namespace(sink=sink, loop=False, queue_size=2, max_frames=None, drift_window=0, fsync_every=100,
                              batch_window_ms=window_ms)
    conf = multicam.load_station(cfg)
    models = multicam.load_models(conf)
    for backend, _ in models.values():
        backend.__enter__()
    station = multicam.build(conf, models, args, view)

    def close():
        for backend, _ in models.values():
            backend.__exit__(None, None, None)
    return station, close


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def test_the_page_has_a_tile_per_camera_and_says_why_one_failed(fx, media, tmp_path):
    from protospect.runtime.station_view import StationView

    cfg = station_file(tmp_path / "station.toml", [
        {"name": "left", "source": fx.video, "model": media.dyn},
        {"name": "gone", "source": tmp_path / "nope.avi", "model": media.dyn},
        {"name": "top", "source": media.folder, "model": media.dyn}])
    view = StationView(port=0)
    station, close = open_station(cfg, None, view=view)
    view.lanes = station.lanes
    view.start()
    try:
        station.run()
        state = json.loads(_get(view.url + "station.json"))
        cams = {c["name"]: c for c in state["cameras"]}
        assert list(cams) == ["left", "gone", "top"]
        assert cams["left"]["state"]["seq"] == fx.n_frames - 1 and cams["left"]["state"]["counters"]["processed"] == fx.n_frames
        assert cams["top"]["state"]["seq"] == 9 and cams["top"]["status"] == "ended"
        assert cams["gone"]["status"] == "failed" and "source not found" in cams["gone"]["reason"]
        assert cams["gone"]["state"]["seq"] is None
        with urllib.request.urlopen(view.url + "cam/2/frame.jpg?seq=9", timeout=10) as r:
            assert r.headers["X-Frame-Seq"] == "9"
            assert cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3)
        assert json.loads(_get(view.url + "cam/0/state.json"))["history"]["seq"] == list(range(fx.n_frames))
        page = _get(view.url).decode()
        assert 'id="tiles"' in page and "/station.json" in page and "/cam/" in page
    finally:
        view.stop()
        close()


@pytest.mark.parametrize("tables, needle", [
    ([{"name": "a", "source": "x.avi", "model": "m.onnx", "fps": 30}], "[[camera]] #1 ('a') key 'fps': unknown key"),
    ([{"name": "a", "source": "x.avi", "model": "m.onnx"}, {"name": "a", "source": "y.avi", "model": "m.onnx"}],
     "key 'name': camera name 'a' is already used by [[camera]] #1"),
    ([{"name": "a", "source": "x.avi", "model": "missing.onnx"}], "[[camera]] 'a' key 'model': model not found"),
    ([{"name": "a", "source": "x.avi", "model": "MODEL", "trigger": "plc"}], "key 'trigger': 'plc' needs this camera's PLC endpoint"),
])
def test_config_errors_are_one_line_exit_1(media, tmp_path, capsys, tables, needle):
    for t in tables:
        if t["model"] == "MODEL":
            t["model"] = media.dyn
    cfg = station_file(tmp_path / "station.toml", tables)
    assert serve("--config", cfg, "--sink", tmp_path / "root") == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and needle in err[0] and err[0].startswith("protospect serve: error:"), err
    assert not (tmp_path / "root").exists()  # nothing started


def test_two_cameras_one_sink_folder_and_per_camera_flags_are_refused(fx, media, tmp_path, capsys):
    cfg = station_file(tmp_path / "station.toml", [
        {"name": "a", "source": fx.video, "model": media.dyn, "sink": tmp_path / "same"},
        {"name": "b", "source": fx.video, "model": media.dyn, "sink": tmp_path / "same"}])
    assert serve("--config", cfg) == 1
    assert "is also camera 'a''s sink folder" in capsys.readouterr().err
    assert serve("--config", cfg, "--source", fx.video) == 1
    assert "--source is set in the station file ([[camera]] or [line])" in capsys.readouterr().err
    assert serve("--source", fx.video) == 2  # neither MODEL nor --config
    assert "give MODEL --source SRC (one camera) or --config STATION.toml" in capsys.readouterr().err


def test_a_failing_model_logs_the_frames_it_held_and_stops_its_cameras(fx, media, tmp_path, capsys, monkeypatch):
    from protospect.runtime.backends.ort import OrtBackend

    real, calls = OrtBackend.infer_batch, []

    def third_run_fails(self, images):
        calls.append(len(images))
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return real(self, images)

    monkeypatch.setattr(OrtBackend, "infer_batch", third_run_fails)
    cfg = station_file(tmp_path / "station.toml", [{"name": "a", "source": fx.video, "model": media.dyn},
                                                   {"name": "b", "source": fx.video, "model": media.dyn}])
    assert serve("--config", cfg, "--sink", tmp_path / "root", "--batch-window-ms", 60000) == 1
    captured = capsys.readouterr().err
    assert "Traceback" not in captured
    err = [line for line in captured.splitlines() if line.startswith("protospect")]
    assert err == [f"protospect serve: camera '{n}': inference failed: device lost" for n in "ab"]
    for name in "ab":
        log = log_of(tmp_path / "root" / name)
        assert [r["seq"] for r in log] == [0, 1, 2]  # the third frame was taken: logged, not lost
        assert log[2]["verdict"] == "REJECTED" and log[2]["reason"] == "inference failed: device lost"
        assert all(r["verdict"] in ("OK", "NG") for r in log[:2])


def test_a_source_that_fails_mid_run_stops_alone_and_says_why(fx, media, tmp_path, capsys, monkeypatch):
    from protospect.runtime.sources import ArraySource

    class BreaksAfter3(ArraySource):
        def read(self):
            if self._next == 3:
                raise RuntimeError("cable pulled")
            return super().read()

    frames = [render_part(np.random.default_rng(i), (160, 120)) for i in range(5)]
    real_open = multicam.open_source
    monkeypatch.setattr(multicam, "open_source", lambda spec, loop=False: BreaksAfter3(frames, bgr=True, name="flaky")
                        if spec == "flaky" else real_open(spec, loop=loop))
    cfg = station_file(tmp_path / "station.toml", [{"name": "flaky", "source": "flaky", "model": media.dyn},
                                                   {"name": "steady", "source": fx.video, "model": media.dyn}])
    assert serve("--config", cfg, "--sink", tmp_path / "root") == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("protospect")]
    assert err == ["protospect serve: camera 'flaky': source stopped: error: cable pulled"]
    assert [r["seq"] for r in log_of(tmp_path / "root/flaky")] == [0, 1, 2]
    assert [r["seq"] for r in log_of(tmp_path / "root/steady")] == list(range(fx.n_frames))
    flaky = json.loads((tmp_path / "root/flaky/summary.json").read_text())
    assert flaky["status"] == "failed" and flaky["capture_ended"] == "error: cable pulled"
