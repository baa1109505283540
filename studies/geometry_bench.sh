#!/usr/bin/env bash
# CPU cost of PCSNet edge at the input sizes rule v3 compares (docs/decision.md section 9), in one run:
# train a model per size on the same shots (few steps: the cost is the graph's, not the weights'), export
# fp32 ONNX, then `protospect bench` each on the same frames, one after the other.
#   bash studies/geometry_bench.sh [DATA_DIR] [OUT_DIR] [FRAMES]
set -euo pipefail
DATA=${1:-../shared/data}
OUT=${2:-runs/geometry_bench}
FRAMES=${3:-300}
PY=.venv/bin
RT=.venv-runtime/bin
mkdir -p "$OUT"
for s in 256 384 512; do
  if [ ! -f "$OUT/s$s/model.onnx" ]; then
    OMP_NUM_THREADS=1 $PY/protospect train --data "$DATA" --category mpdd_metal_plate --shots 4 --seed 0 --out "$OUT/s$s/art" \
      --size $s --set steps=5  # a size alone keeps the edge grid of S/8
    $PY/protospect export "$OUT/s$s/art" --out "$OUT/s$s/model.onnx"
  fi
done
for s in 256 384 512; do
  echo "== $s px"
  $RT/protospect bench "$OUT/s$s/model.onnx" --frames "$FRAMES" --warmup 30 --out "$OUT/s$s/bench" | grep HEADLINE
done
