#!/usr/bin/env bash
# One command: set up a fresh machine and run every test (CPU-only machines skip GPU/TensorRT tests with the reason).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh

# Headless Chromium for the operator-page test (Debian package); the test skips with the reason if this fails.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "[test] chromium could not be installed: the live-page test will skip"
fi

# A real MQTT broker for the MQTT feed tests (Debian package; the tests start it on a free loopback port
# and skip with the reason if this fails).
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null) \
    || echo "[test] mosquitto could not be installed: the MQTT broker tests will skip"
fi

# The CUDA kernel must at least compile for Jetson Orin (sm_87) and Hopper (sm_90) where nvcc exists.
if command -v nvcc >/dev/null 2>&1 && [ -f .ci/compile_kernel.sh ]; then
  bash .ci/compile_kernel.sh
else
  echo "[test] nvcc not found: kernel compile check skipped"
fi

status=0
# Lint (ruff.toml): a finding fails the run, after the suites below have run too.
echo "[test] ruff check ."
.venv/bin/ruff check . || status=$?
echo "[test] full suite (torch env)"
.venv/bin/python -m pytest -q -p no:cacheprovider tests --ignore=tests/runtime || status=$?
echo "[test] runtime suite in the torch-free env"
.venv-runtime/bin/python -m pytest -q -p no:cacheprovider tests/runtime tests/test_package.py || status=$?
exit $status
