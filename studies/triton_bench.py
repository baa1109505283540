"""Triton on CPU (issue 18): 1 client vs N concurrent clients against one real Triton server, same run.

    nice -n 10 env OMP_NUM_THREADS=1 .venv-runtime/bin/python studies/triton_bench.py \
        [--model ART_OR_ONNX] [--size 64] [--frames 200] [--clients 4] [--repeats 1]

The server is the tritonserver 2.51 binary from .venv-tritonserver (scripts/setup_env.sh), started on a free
loopback gRPC port by tests/runtime/triton_server.py (the helper the tests use) and stopped at the end. The
model goes into a temporary Triton repository with the python backend (`max_batch_size` --max-batch, the 2 ms
queue delay export writes, one CPU instance, EXECUTION_ENV_PATH = .venv-tritonserver):

* default: the fixture model (refdiff "difference from a reference", tests/runtime/fixture_models.py) at
  --size px with a dynamic batch, as the tests build it (torch-free);
* --model M.onnx: a graph with a dynamic batch (`protospect export ART --out M.onnx --batch dynamic`);
* --model ART (an artifact folder, e.g. runs/demo/station/artifact): exported by `protospect export ART
  --triton-repo DIR --name part --triton-backend python --triton-python-env .venv-tritonserver`, run with
  --export-python (default .venv/bin/python: export needs torch). --size is then the artifact's.

Each client is a TritonBackend (runtime/backends/triton.py, what `serve --backend triton` uses): its own gRPC
channel, one preprocessed frame per request, the next only after the answer. Each client sends a few warm-up
frames first; the server's statistics are read after the warm-up and after the timed frames, so the figures
cover the timed frames only. The phases alternate (1 client, N clients, 1 client, ...) --repeats times.
Printed per phase: frames/s (all clients' frames / wall time from the common start to the last answer), the
server's inference_count, execution_count and batch-size histogram (executions per batch size), and p50/p99
per-request latency (infer() call to answer, ms) over all clients' requests. Also checked: every client got
the same score for the same frame.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "runtime"))

from triton_server import SERVER_ENV, TritonServer, server_env_problem  # noqa: E402

from protospect.runtime.backends.triton import TritonBackend  # noqa: E402
from protospect.runtime.frames import Frame  # noqa: E402
from protospect.runtime.preprocess import preprocess  # noqa: E402
from protospect.imageio import size_text  # noqa: E402

NAME = "part"
FRAME = (160, 120)   # W x H of the generated frames (as the tests' replay video): preprocess really resizes
N_IMAGES = 8         # distinct frames, cycled
WARMUP = 3           # frames per client before the timed ones


def fixture_repo(repo: Path, size: int, max_batch: int) -> str:
    from fixture_models import build_diff_model, calibrate_threshold, reference_rgb, render_part

    from protospect.export.triton_repo import model_paths, write_repo

    graph, _ = model_paths(repo, NAME, 1)
    graph.parent.mkdir(parents=True)
    ref = reference_rgb(size, FRAME)
    provisional = build_diff_model(graph.parent / "provisional.onnx", ref, threshold=1.0)
    thr = calibrate_threshold(provisional, [render_part(np.random.default_rng(1), FRAME) for _ in range(6)])
    provisional.unlink()
    build_diff_model(graph, ref, threshold=thr, map_range=(0.0, 0.3), batch="dynamic")
    write_repo(graph, repo, NAME, 1, backend="python", max_batch_size=max_batch, python_env=str(SERVER_ENV))
    return f"fixture refdiff model, {size} px (tests/runtime/fixture_models.py)"


def onnx_repo(repo: Path, model: Path, max_batch: int) -> str:
    import onnx

    from protospect.export.triton_repo import model_paths, write_repo

    graph = onnx.load(str(model), load_external_data=False)
    dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim.dim_param:
        sys.exit(f"triton_bench: {model} has a fixed batch ({dim.dim_value}); Triton batches only a dynamic-batch "
                 "graph: protospect export ART --out M.onnx --batch dynamic")
    dst, _ = model_paths(repo, NAME, 1)
    dst.parent.mkdir(parents=True)
    shutil.copy2(model, dst)
    write_repo(dst, repo, NAME, 1, backend="python", max_batch_size=max_batch, python_env=str(SERVER_ENV))
    return f"{model} (dynamic batch)"


def artifact_repo(repo: Path, art: Path, max_batch: int, python: str) -> str:
    cmd = [python, "-m", "protospect.cli", "export", str(art), "--triton-repo", str(repo), "--name", NAME,
           "--triton-backend", "python", "--triton-python-env", str(SERVER_ENV), "--triton-max-batch", str(max_batch)]
    print("export:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"triton_bench: export failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    print(f"export: done in {time.perf_counter() - t0:.0f} s", flush=True)
    return f"artifact {art} (exported with --triton-repo)"


def stats(url: str, expected: int, timeout_s: float = 10.0) -> tuple[int, int, dict]:
    """(inference_count, execution_count, {batch size: executions}) once inference_count reaches ``expected``:
    the server records an execution's statistics after its answers are sent, so a read right after the last
    answer can miss the last batch."""
    import tritonclient.grpc as grpcclient

    deadline = time.monotonic() + timeout_s
    with grpcclient.InferenceServerClient(url) as c:
        while True:
            s = c.get_inference_statistics(NAME, as_json=True)["model_stats"][0]
            if int(s.get("inference_count", 0)) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.01)
    batches = {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in s.get("batch_stats", [])}
    return int(s.get("inference_count", 0)), int(s.get("execution_count", 0)), batches


def phase(url: str, images: list[np.ndarray], n_clients: int, frames: int, served: int) -> dict:
    """n_clients threads, each its own TritonBackend, each ``frames`` frames one at a time from a common start;
    ``served``: the server's inference_count before this phase."""
    ready, go = threading.Barrier(n_clients + 1), threading.Event()
    lat = [[] for _ in range(n_clients)]
    scores = [[] for _ in range(n_clients)]
    errors = []

    def client(k):
        try:
            with TritonBackend(NAME, url, timeout_s=60.0) as backend:
                for i in range(WARMUP):
                    backend.infer(images[i % len(images)])
                ready.wait()
                go.wait()
                for i in range(frames):
                    t0 = time.perf_counter()
                    _, score = backend.infer(images[i % len(images)])
                    lat[k].append(time.perf_counter() - t0)
                    scores[k].append(score)
        except Exception as err:  # noqa: BLE001 (reported below, the phase fails)
            errors.append(f"client {k}: {err!r}")
            ready.abort()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        pass
    before = stats(url, served + n_clients * WARMUP)
    t0 = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = stats(url, before[0] + n_clients * frames)
    if errors:
        sys.exit("triton_bench: " + "; ".join(errors))
    hist = {b: after[2].get(b, 0) - before[2].get(b, 0) for b in sorted(after[2])}
    all_lat = np.array([x for per in lat for x in per]) * 1e3
    inferences, executions = after[0] - before[0], after[1] - before[1]
    return {"clients": n_clients, "frames_per_client": frames, "wall_s": round(wall, 3),
            "fps": round(n_clients * frames / wall, 1), "inference_count": inferences, "execution_count": executions,
            "mean_batch": round(inferences / executions, 2) if executions else None,
            "batch_sizes": {b: n for b, n in hist.items() if n}, "p50_ms": round(float(np.percentile(all_lat, 50)), 2),
            "p99_ms": round(float(np.percentile(all_lat, 99)), 2), "same_scores": all(s == scores[0] for s in scores),
            "load_avg": round(os.getloadavg()[0], 2), "served": after[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None,
                    help="an artifact folder or a dynamic-batch ONNX graph (default: the fixture model at --size)")
    ap.add_argument("--size", type=int, default=64, help="input size of the fixture model (default 64)")
    ap.add_argument("--frames", type=int, default=200, help="frames per client per phase (default 200)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients of the second phase (default 4)")
    ap.add_argument("--repeats", type=int, default=1, help="times the 1-client / N-client pair is run (default 1)")
    ap.add_argument("--max-batch", type=int, default=8, help="the model's max_batch_size (default 8, export's)")
    ap.add_argument("--export-python", default=str(ROOT / ".venv/bin/python"),
                    help="python with torch for exporting an artifact (default .venv/bin/python)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    a = ap.parse_args()
    problem = server_env_problem()
    if problem:
        print(f"triton_bench: {problem}", file=sys.stderr)
        return 1
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; python {platform.python_version()}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        if a.model is None:
            what = fixture_repo(repo, a.size, a.max_batch)
        elif a.model.is_dir():
            what = artifact_repo(repo, a.model, a.max_batch, a.export_python)
        else:
            what = onnx_repo(repo, a.model, a.max_batch)
        server = TritonServer(repo, Path(tmp))
        t0 = time.perf_counter()
        server.start(timeout_s=300)
        try:
            import tritonclient.grpc as grpcclient

            with grpcclient.InferenceServerClient(server.url) as c:
                version = c.get_server_metadata(as_json=True).get("version", "?")
                config = c.get_model_config(NAME, as_json=True)["config"]
            print(f"tritonserver {version} at {server.url} (ready in {time.perf_counter() - t0:.1f} s); model: {what}")
            print(f"config: backend {config.get('backend') or config.get('platform')}, max_batch_size "
                  f"{config.get('max_batch_size')}, max_queue_delay "
                  f"{config.get('dynamic_batching', {}).get('max_queue_delay_microseconds')} us, instances "
                  f"{config['instance_group'][0].get('count')} x {config['instance_group'][0].get('kind')}")
            with TritonBackend(NAME, server.url) as probe:
                size = probe.info.input_hw
            rng = np.random.default_rng(3)
            from fixture_models import render_part
            images = [preprocess(Frame(seq=i, t_capture_ns=0, t_wall=0.0, image=render_part(rng, FRAME, defect=i % 4 == 3)),
                                 size)[0] for i in range(N_IMAGES)]
            print(f"input {size_text(size)} px; each client: {WARMUP} warm-up frames, then {a.frames} timed frames, one at a time")
            served = 0
            for rep in range(a.repeats):
                for n in (1, a.clients):
                    r = phase(server.url, images, n, a.frames, served)
                    served = r.pop("served")
                    r["repeat"] = rep
                    results.append(r)
                    print(f"\n{n} client(s) #{rep}: {n} x {a.frames} frames in {r['wall_s']:.2f} s = {r['fps']:.1f} frames/s; "
                          f"latency p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms; load average {r['load_avg']:.2f}")
                    print(f"  server: inference_count {r['inference_count']}, execution_count {r['execution_count']} "
                          f"(mean batch {r['mean_batch']}), executions per batch size {r['batch_sizes']}; "
                          f"same score per frame across clients: {'yes' if r['same_scores'] else 'NO'}")
        finally:
            server.stop()
        print("\nserver stopped")
    print("\n| clients | frames/s | inferences | executions | mean batch | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['clients']} | {r['fps']:.1f} | {r['inference_count']} | {r['execution_count']} | {r['mean_batch']} "
              f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    if a.out is not None:
        a.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all(r["same_scores"] and r["inference_count"] == r["clients"] * r["frames_per_client"]
                    for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
