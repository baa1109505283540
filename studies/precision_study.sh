#!/usr/bin/env bash
# FP32 vs FP16 vs INT8 (Q/DQ) accuracy of exported PCSNet-edge graphs under ONNX Runtime CPU, per dev category,
# then ORT CPU latency of FP32 vs INT8 in one run (median of >= 200 runs, 1 intra-op thread: shared machine).
# usage: bash studies/precision_study.sh OUT_DIR [category ...]   (data: $PROTOSPECT_DEV_DATA or ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?output folder}; shift
DATA=${PROTOSPECT_DEV_DATA:-../shared/data}
CATS=${*:-hazelnut_toy deeppcb_44000 bottle}
PS=.venv/bin/protospect
mkdir -p "$OUT"
for c in $CATS; do
  art="$OUT/$c/art"
  $PS train --data "$DATA" --category "$c" --method pcsnet --preset edge --shots 4 --seed 0 --out "$art"
  $PS export "$art" --out "$OUT/$c/fp32.onnx" --check
  $PS export "$art" --out "$OUT/$c/fp16.onnx" --fp16
  $PS export "$art" --out "$OUT/$c/int8.onnx" --int8
  .venv/bin/python studies/eval_graphs.py --data "$DATA" --category "$c" \
      "$OUT/$c/fp32.onnx" "$OUT/$c/fp16.onnx" "$OUT/$c/int8.onnx" | tee "$OUT/$c/precision.txt"
  ls -l "$OUT/$c"/*.onnx | awk '{printf "%s %.2f MiB\n", $9, $5/1048576}' | tee -a "$OUT/$c/precision.txt"
  .venv/bin/python studies/bench_ort.py "$OUT/$c/fp32.onnx" "$OUT/$c/int8.onnx" \
      --runs "${BENCH_RUNS:-200}" --warmup 20 --threads "${BENCH_THREADS:-1}" | tee -a "$OUT/$c/precision.txt"
done
