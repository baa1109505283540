#!/usr/bin/env bash
# Create/refresh the two environments the project uses. Idempotent; sourced by run.sh and test.sh.
#   .venv          full development env: torch (CPU use), training, export, runtime, tests
#   .venv-runtime  what an inspection station has: numpy + OpenCV + ONNX Runtime, NO torch
set -euo pipefail
PY=${PYTHON:-python3}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

# The torch wheel (a CUDA build on x86_64) unpacks to ~5.6 GB; a full disk otherwise fails halfway through
# pip with "No space left on device" and leaves a broken venv behind. Check before starting, say what is needed.
need_gb() {  # $1 = GB needed, $2 = what for
  local free_kb
  free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
  if [ -n "$free_kb" ] && [ "$free_kb" -lt $(( $1 * 1024 * 1024 )) ]; then
    echo "[setup] error: $2 needs about $1 GB free on $(df -P . | awk 'NR==2 {print $6}'), only $(( free_kb / 1024 )) MB left" >&2
    exit 1
  fi
}
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  need_gb 8 "installing torch into .venv"
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
# torch first and pinned: on these machines pip takes 2.14.1 from local disk (see README).
.venv/bin/pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/pip install -q --disable-pip-version-check -e ".[train,runtime,dev,triton]"  # triton: export --triton-repo config tests

if [ ! -x .venv-runtime/bin/python ]; then
  need_gb 1 "creating .venv-runtime"
  echo "[setup] creating .venv-runtime (no torch)"
  "$PY" -m venv .venv-runtime
fi
.venv-runtime/bin/pip install -q --disable-pip-version-check -e ".[runtime,dev,line,triton]" onnx  # triton: serve --backend triton
if .venv-runtime/bin/python -c "import torch" 2>/dev/null; then
  echo "[setup] error: torch leaked into .venv-runtime" >&2
  exit 1
fi
# .venv-tritonserver: a CPU Triton Inference Server for the triton tests (optional: they skip without it).
# nvidia-pytriton's wheel carries the tritonserver binary; --no-deps because we use only the binary, and the Python
# backend's stub runs model.py in this venv (EXECUTION_ENV_PATH), which needs numpy<2 and onnxruntime.
if [ ! -x .venv-tritonserver/bin/python ]; then
  "$PY" -m venv .venv-tritonserver
fi
if ! { .venv-tritonserver/bin/pip install -q --disable-pip-version-check "numpy<2" "onnxruntime>=1.18" \
       && .venv-tritonserver/bin/pip install -q --disable-pip-version-check --no-deps "nvidia-pytriton>=0.5"; }; then
  echo "[setup] warning: no CPU Triton server (.venv-tritonserver); the Triton server tests will skip" >&2
fi
echo "[setup] environments ready"
