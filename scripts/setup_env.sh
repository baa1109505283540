#!/usr/bin/env bash
# Create/refresh the two environments the project uses. Idempotent; sourced by run.sh and test.sh.
#   .venv          full development env: torch (CPU use), training, export, runtime, tests
#   .venv-runtime  what an inspection station has: numpy + OpenCV + ONNX Runtime, NO torch
set -euo pipefail
PY=${PYTHON:-python3}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
# torch first and pinned: on these machines pip takes 2.14.1 from local disk (see README).
.venv/bin/pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/pip install -q --disable-pip-version-check -e ".[train,runtime,dev]"

if [ ! -x .venv-runtime/bin/python ]; then
  echo "[setup] creating .venv-runtime (no torch)"
  "$PY" -m venv .venv-runtime
fi
.venv-runtime/bin/pip install -q --disable-pip-version-check -e ".[runtime,dev]" onnx
if .venv-runtime/bin/python -c "import torch" 2>/dev/null; then
  echo "[setup] error: torch leaked into .venv-runtime" >&2
  exit 1
fi
echo "[setup] environments ready"
