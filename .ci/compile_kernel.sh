#!/usr/bin/env bash
# Compile the fused prototype top-k kernel (cpp_ext/proto_topk.cu) for Jetson Orin (sm_87) and
# Hopper (sm_90) with nvcc, printing ptxas register/shared-memory/spill figures. Runs on a machine
# without a GPU. Exits non-zero on a compile error, a compiler warning, or a register spill, and
# (exit 2) when nvcc is missing unless ALLOW_NO_NVCC=1.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$REPO/cpp_ext/proto_topk.cu"
NVCC="${NVCC:-nvcc}"
ARCHES="${ARCHES:-87 90 90a}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

if ! command -v "$NVCC" >/dev/null; then
    echo "compile_kernel.sh: nvcc not found (set NVCC=/path/to/nvcc)" >&2
    [ "${ALLOW_NO_NVCC:-0}" = "1" ] && { echo "ALLOW_NO_NVCC=1: skipping the kernel compile"; exit 0; }
    exit 2
fi
"$NVCC" --version | tail -n 1

status=0
for arch in $ARCHES; do
    echo "== sm_${arch} =="
    log="$OUT/sm_${arch}.log"
    if ! "$NVCC" -std=c++17 -O3 -arch="sm_${arch}" -Xptxas -v -Xptxas -warn-spills -Xcompiler -Wall,-Wextra \
            -I"$REPO/cpp_ext" -c "$SRC" -o "$OUT/proto_topk_sm${arch}.o" >"$log" 2>&1; then
        cat "$log"
        echo "FAILED: sm_${arch}" >&2
        status=1
        continue
    fi
    cat "$log"
    # ptxas reports resources as "info"; anything called a warning (including spills) fails CI.
    if grep -Ei "warning|spill stores [1-9]|spill loads [1-9]" "$log" | grep -v " 0 bytes spill" >/dev/null; then
        echo "FAILED: sm_${arch} compiled with warnings or register spills (see above)" >&2
        status=1
    fi
done
[ "$status" -eq 0 ] && echo "OK: proto_topk.cu compiles cleanly for: $ARCHES"
exit "$status"
