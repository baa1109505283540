"""Multi-camera serve benchmark (issue 18 acceptance): 4 cameras replayed from video files, one process,
batched (one run of a dynamic-batch graph per batch) vs unbatched (4 x batch 1: the same graph, one frame at a
time, round-robin), in the same run.

    nice -n 10 env OMP_NUM_THREADS=1 .venv-runtime/bin/python studies/multicam_bench.py \
        --model M_dynamic.onnx --video runs/demo/data/line.avi [--cameras 4] [--threads 2] [--repeats 2]

M_dynamic.onnx comes from `protospect export ART --out M_dynamic.onnx --batch dynamic`. Every camera replays
--video (each through its own capture thread and decoder) with the block queue policy of replayed sources,
so every frame is judged. The modes alternate (unbatched, batched, unbatched, ...) --repeats times, so a
background load that changes during the run touches both. Printed per mode and repeat: aggregate frames/s
(all cameras' frames / wall time of the run), the mean batch, and per camera host-to-host and
capture-to-verdict p50/p99 (ms); then the check that no frame of any camera is unlogged (each camera's
verdicts.jsonl holds seq 0..N-1 once each, N = the video's frame count).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2

from protospect.runtime import multicam


def frame_count(video: Path) -> int:
    cap = cv2.VideoCapture(str(video))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def run_once(cfg: Path, sink: Path, *, batching: bool, threads: int, window_ms: float) -> tuple[dict, float]:
    args = argparse.Namespace(sink=sink, loop=False, queue_size=2, max_frames=None, drift_window=0, fsync_every=100,
                              batch_window_ms=window_ms, no_batching=not batching)
    conf = multicam.load_station(cfg)
    models = multicam.load_models(conf, threads=threads)
    for backend, _ in models.values():
        backend.__enter__()
    try:
        station = multicam.build(conf, models, args)
        t0 = time.perf_counter()
        report = station.run()
        wall = time.perf_counter() - t0
    finally:
        for backend, _ in models.values():
            backend.__exit__(None, None, None)
    return report, wall


def unlogged(sink: Path, names: list[str], n: int) -> dict:
    """camera -> frames of seq 0..n-1 missing from (or duplicated in) its verdict log."""
    bad = {}
    for name in names:
        seqs = [json.loads(line)["seq"] for line in (sink / name / "verdicts.jsonl").read_text().splitlines()]
        if sorted(seqs) != list(range(n)):
            bad[name] = {"lines": len(seqs), "missing": sorted(set(range(n)) - set(seqs))[:10]}
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a dynamic-batch graph (export --batch dynamic)")
    ap.add_argument("--video", type=Path, default=Path("runs/demo/data/line.avi"))
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2: this machine's cores)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--window-ms", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    a = ap.parse_args()
    n = frame_count(a.video)
    names = [f"cam{i}" for i in range(a.cameras)]
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}; python {platform.python_version()}")
    print(f"{a.cameras} cameras x {n} frames of {a.video}, model {a.model}, {a.threads} ORT thread(s), "
          f"window {a.window_ms:g} ms")
    results, all_ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "station.toml"
        cfg.write_text("".join(f'[[camera]]\nname = "{name}"\nsource = "{a.video.resolve()}"\nmodel = "{a.model.resolve()}"\n\n'
                               for name in names))
        for rep in range(a.repeats):
            for batching in (False, True):
                mode = "batched" if batching else "unbatched"
                sink = Path(tmp) / f"{mode}_{rep}"
                report, wall = run_once(cfg, sink, batching=batching, threads=a.threads, window_ms=a.window_ms)
                model = report["models"][0]
                frames = sum(c["counters"]["processed"] for c in report["cameras"].values())
                bad = unlogged(sink, names, n)
                all_ok &= not bad
                row = {"mode": mode, "repeat": rep, "frames": frames, "wall_s": round(wall, 2),
                       "fps": round(frames / wall, 2), "mean_batch": model["mean_batch"], "batched": model["batched"],
                       "unlogged": bad, "cameras": {}}
                print(f"\n{mode} #{rep}: {frames} frames in {wall:.1f} s = {frames / wall:.2f} frames/s aggregate, "
                      f"mean batch {model['mean_batch']} ({'batched' if model['batched'] else 'one frame at a time'}), "
                      f"load average {os.getloadavg()[0]:.2f}")
                for name in names:
                    st = report["cameras"][name]["stages"]
                    h2h, c2v = st["host_to_host"], st["capture_to_verdict"]
                    row["cameras"][name] = {"host_to_host_p50": round(h2h["p50"], 1), "host_to_host_p99": round(h2h["p99"], 1),
                                            "capture_to_verdict_p50": round(c2v["p50"], 1),
                                            "capture_to_verdict_p99": round(c2v["p99"], 1)}
                    print(f"  {name}: host-to-host p50 {h2h['p50']:7.1f} ms  p99 {h2h['p99']:7.1f} ms   "
                          f"capture-to-verdict p50 {c2v['p50']:7.1f} ms  p99 {c2v['p99']:7.1f} ms")
                print(f"  unlogged frames: {'none' if not bad else bad}")
                results.append(row)
    print(f"\nevery frame of every camera logged in every run: {'yes' if all_ok else 'NO'}")
    if a.out is not None:
        a.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
