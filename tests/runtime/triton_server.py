"""A real Triton Inference Server on loopback for the triton tests: the tritonserver 2.51 binary that
nvidia-pytriton's wheel carries, run from .venv-tritonserver (scripts/setup_env.sh makes it).

    server = TritonServer(repo, workdir)      # repo: from export/triton_repo.write_repo(..., backend="python")
    server.start()                            # free loopback gRPC port; waits until the models are ready
    server.url, server.kill(), server.start(port=server.port), server.stop()

How it is started (docs/runtime.md, [fleet]): LD_LIBRARY_PATH = the wheel's nvidia_pytriton.libs;
--backend-directory = a copy of pytriton/tritonserver/backends with the Python-backend stub for the venv's
Python (python_backend_stubs/3.X/triton_python_backend_stub) copied beside libtriton_python.so (the copy
keeps site-packages untouched); HTTP and metrics off. The stub runs an isolated interpreter (PYTHONPATH is
ignored), so model.py finds numpy and onnxruntime through the config's EXECUTION_ENV_PATH parameter
(export --triton-python-env .venv-tritonserver): that venv must have numpy<2, with numpy 2 the stub
answers empty tensors.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVER_ENV = Path(os.environ.get("PROTOSPECT_TRITONSERVER_ENV", REPO / ".venv-tritonserver"))


def server_env_problem(env: Path = SERVER_ENV) -> str:
    """'' when ``env`` has the server binary, its libraries, a matching stub, numpy<2 and onnxruntime; else why not."""
    sites = sorted(env.glob("lib/python3.*/site-packages"))
    if not sites:
        return f"no Triton server environment at {env} (scripts/setup_env.sh makes .venv-tritonserver)"
    site = sites[0]
    pyver = site.parent.name.removeprefix("python")
    need = [site / "pytriton/tritonserver/bin/tritonserver", site / "nvidia_pytriton.libs",
            site / "pytriton/tritonserver/backends/python/libtriton_python.so",
            site / f"pytriton/tritonserver/python_backend_stubs/{pyver}/triton_python_backend_stub",
            site / "onnxruntime"]
    missing = [str(p.relative_to(env)) for p in need if not p.exists()]
    if missing:
        return f"{env} lacks {', '.join(missing)} (pip install --no-deps nvidia-pytriton; numpy<2 onnxruntime)"
    numpy_v = next(iter(sorted(site.glob("numpy-*.dist-info"))), None)
    if numpy_v is None or not numpy_v.name.startswith("numpy-1."):
        return f"{env} needs numpy<2 for the Python backend's stub (has {numpy_v.name if numpy_v else 'none'})"
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    def __init__(self, repo: Path, workdir: Path, env: Path = SERVER_ENV):
        self.repo, self.workdir, self.env = Path(repo), Path(workdir), Path(env)
        site = sorted(self.env.glob("lib/python3.*/site-packages"))[0]
        self.site, self.pyver = site, site.parent.name.removeprefix("python")
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = self.workdir / "tritonserver.log"

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _backends(self) -> Path:
        dst = self.workdir / "backends"
        if not dst.exists():
            tree = self.site / "pytriton/tritonserver"
            shutil.copytree(tree / "backends", dst)
            shutil.copy2(tree / f"python_backend_stubs/{self.pyver}/triton_python_backend_stub", dst / "python")
        return dst

    def command(self) -> list[str]:
        return [str(self.site / "pytriton/tritonserver/bin/tritonserver"), "--model-repository", str(self.repo),
                "--backend-directory", str(self._backends()), "--grpc-address", "127.0.0.1",
                "--grpc-port", str(self.port), "--allow-http", "false", "--allow-metrics", "false",
                "--log-verbose", "0"]

    def start(self, port: int | None = None, timeout_s: float = 90.0) -> "TritonServer":
        """Start (or restart on ``port``) and wait until every model is ready; RuntimeError with the log's tail."""
        self.port = port or free_port()
        env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(
            [str(self.site / "nvidia_pytriton.libs")] + [p for p in [os.environ.get("LD_LIBRARY_PATH")] if p])}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with grpcclient.InferenceServerClient(self.url) as client:
                    if client.is_server_ready(client_timeout=1.0):
                        return self
            except Exception:  # noqa: BLE001 (not up yet)
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"tritonserver not ready after {timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, n: int = 15) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return " | ".join(line for line in lines if not line.startswith(("|", "+")))[-2000:] or "(no log)"

    def kill(self) -> None:
        """SIGKILL, as a crashed server: no goodbye to the clients."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the python stub processes go too
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
