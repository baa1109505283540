"""serve --backend triton against a real Triton Inference Server (issue 18 items 4-5; tests/runtime/triton_server.py):
verdict and map parity with the local ONNX Runtime backend on a replayed video, 4 concurrent clients batched by
the server (its statistics), a refused URL and an unknown model name as one-line errors, and a server killed
mid-run: every frame keeps its verdict line (REJECTED "backend unavailable" while it is away), the run goes on
after it comes back (a counted reconnect), no traceback. Skips with the reason without .venv-tritonserver."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from fixture_models import decode_video
from triton_server import SERVER_ENV, TritonServer, free_port, server_env_problem

from protospect.cli import main
from protospect.runtime.backends.ort import OrtBackend
from protospect.runtime.frames import Frame
from protospect.runtime.preprocess import preprocess

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] not installed: pip install -e .[triton]")

REPO = Path(__file__).resolve().parents[2]
NAME = "part"


def _dynamic_batch_copy(src: Path, dst: Path) -> Path:
    """The fixture graph with a symbolic batch dimension, as export --batch dynamic writes it."""
    model = onnx.load(str(src))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def server(fx, tmp_path_factory):
    problem = server_env_problem()
    if problem:
        pytest.skip(problem)
    from protospect.export.triton_repo import model_paths, write_repo

    root = tmp_path_factory.mktemp("triton")
    graph, _ = model_paths(root / "repo", NAME, 1)
    _dynamic_batch_copy(fx.model, graph)
    write_repo(graph, root / "repo", NAME, 1, backend="python", max_batch_size=8, python_env=str(SERVER_ENV))
    srv = TritonServer(root / "repo", root)
    try:
        srv.start()
    except RuntimeError as err:
        pytest.skip(f"the Triton server cannot start here: {err}")
    yield srv
    srv.stop()


def _serve(args: list[str], capsys) -> tuple[int, str]:
    rc = main(["serve", *args])
    return rc, capsys.readouterr().err


def _frames(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if "event" not in r]


def test_triton_verdicts_and_maps_equal_the_local_onnxruntime_backend(server, fx, tmp_path, capsys):
    rc, err = _serve([NAME, "--backend", "triton", "--triton-url", server.url, "--source", str(fx.video),
                      "--sink", str(tmp_path / "triton")], capsys)
    assert rc == 0, err
    rc, err = _serve([str(fx.model), "--backend", "ort", "--source", str(fx.video), "--sink", str(tmp_path / "ort")], capsys)
    assert rc == 0, err
    remote, local = _frames(tmp_path / "triton" / "verdicts.jsonl"), _frames(tmp_path / "ort" / "verdicts.jsonl")
    assert len(remote) == len(local) == fx.n_frames
    assert [r["verdict"] for r in remote] == [r["verdict"] for r in local]
    assert {r["backend"] for r in remote} == {"triton"}
    assert {i for i, r in enumerate(remote) if r["verdict"] == "NG"} == fx.defect_frames
    np.testing.assert_allclose([r["score"] for r in remote], [r["score"] for r in local], rtol=1e-5, atol=1e-7)
    summary = json.loads((tmp_path / "triton" / "summary.json").read_text())
    assert summary["backend"]["threshold"] == pytest.approx(fx.threshold)  # read from config.pbtxt's parameters
    assert summary["backend"]["reconnects"] == 0 and summary["backend"]["failed_frames"] == 0

    from protospect.runtime.backends.triton import TritonBackend

    with TritonBackend(NAME, server.url) as remote_b, OrtBackend(fx.model) as local_b:
        lo, hi = local_b.info.map_range
        assert remote_b.info.map_range == (lo, hi)
        worst = 0.0
        for seq, img in enumerate(decode_video(fx.video)):
            model_in, _ = preprocess(Frame(seq=seq, t_capture_ns=0, t_wall=0.0, image=img), remote_b.info.input_hw)
            (ma, sa), (mb, sb) = remote_b.infer(model_in), local_b.infer(model_in)
            worst = max(worst, float(np.abs(ma - mb).max()))
            assert sa == pytest.approx(sb, rel=1e-5)
    assert worst <= 1e-4 * (hi - lo)


def test_four_concurrent_clients_are_batched_by_the_server(server, fx):
    from protospect.runtime.backends.triton import TritonBackend

    def stats():
        with grpcclient.InferenceServerClient(server.url) as c:
            s = c.get_inference_statistics(NAME, as_json=True)["model_stats"][0]
        batches = {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in s.get("batch_stats", [])}
        return int(s.get("inference_count", 0)), int(s.get("execution_count", 0)), batches

    images = [preprocess(Frame(seq=i, t_capture_ns=0, t_wall=0.0, image=img), 64)[0]
              for i, img in enumerate(decode_video(fx.video))]
    n_clients, rounds = 4, 3
    before = stats()
    scores = [[] for _ in range(n_clients)]
    start = threading.Barrier(n_clients)

    def client(k):
        with TritonBackend(NAME, server.url) as backend:
            start.wait()
            for _ in range(rounds):
                for img in images:
                    scores[k].append(backend.infer(img)[1])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    wall = time.perf_counter() - t0
    # the server updates its statistics after it has answered: on a loaded machine the last batch can be
    # missing from them for a moment (seen in CI: 286 of 288), so wait for them to settle
    expected = n_clients * rounds * len(images)
    deadline = time.monotonic() + 20
    after = stats()
    while after[0] - before[0] < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        after = stats()
    inferences, executions = after[0] - before[0], after[1] - before[1]
    batched = {b: after[2].get(b, 0) - before[2].get(b, 0) for b in after[2]}
    print(f"4 clients x {rounds * len(images)} frames: {inferences} inferences in {executions} executions, "
          f"batch sizes {dict(sorted(batched.items()))}, {inferences / wall:.1f} frames/s")
    assert all(len(s) == rounds * len(images) for s in scores)
    assert all(s == scores[0] for s in scores)  # every client got the same answers for the same frames
    assert inferences == expected
    assert executions < inferences
    assert any(b > 1 and n > 0 for b, n in batched.items())


def test_refused_url_and_unknown_model_are_one_line_errors(server, fx, capsys):
    rc, err = _serve([NAME, "--backend", "triton", "--triton-url", f"127.0.0.1:{free_port()}", "--source", str(fx.video)],
                     capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 1 and len(lines) == 1 and "no Triton server answers at 127.0.0.1:" in err and "Traceback" not in err
    rc, err = _serve(["flange", "--backend", "triton", "--triton-url", server.url, "--source", str(fx.video)], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 1 and len(lines) == 1 and "has no model 'flange'" in err and f"it serves: {NAME}" in err, err


@pytest.mark.parametrize("args, message", [
    (["--backend", "triton"], "--backend triton and --triton-url HOST:PORT go together"),
    (["--triton-url", "127.0.0.1:8001"], "--backend triton and --triton-url HOST:PORT go together"),
    (["--backend", "triton", "--triton-url", "http://host"], "give the server's gRPC address as HOST:PORT"),
])
def test_triton_flag_mistakes_are_one_line(fx, capsys, args, message):
    rc, err = _serve([NAME, *args, "--source", str(fx.video)], capsys)
    assert rc == 1 and message in err and len([x for x in err.splitlines() if x.strip()]) == 1, err


def test_server_killed_mid_run_every_frame_logged_and_the_run_reconnects(server, fx, tmp_path):
    n = 120
    sink = tmp_path / "run"
    cmd = [sys.executable, "-m", "protospect.cli", "serve", NAME, "--backend", "triton", "--triton-url", server.url,
           "--source", str(fx.video), "--loop", "--max-frames", str(n), "--sink", str(sink), "--fsync-every", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        log = sink / "verdicts.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 10):
            time.sleep(0.02)
        port = server.port
        server.kill()
        while time.monotonic() < deadline and '"REJECTED"' not in log.read_text():
            time.sleep(0.05)
        server.start(port=port)  # same address: the client must find it again
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    frames = _frames(log)
    assert [r["seq"] for r in frames] == list(range(n))  # no frame without its line
    rejected = [r for r in frames if r["verdict"] == "REJECTED"]
    assert rejected and all(r["reason"].startswith("backend unavailable: triton server") for r in rejected)
    assert frames[-1]["verdict"] != "REJECTED"  # judged again after the server came back
    summary = json.loads((sink / "summary.json").read_text())
    assert summary["backend"]["reconnects"] >= 1
    assert summary["backend"]["failed_frames"] == len(rejected)
    assert summary["counters"]["rejected_reasons"] == {"backend unavailable": len(rejected)}
