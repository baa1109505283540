#!/usr/bin/env bash
# One command: set up a fresh machine and run the whole product on the embedded demo part (no downloads,
# no third-party images): generate parts -> few-shot evaluation -> register the part at the station from
# the line camera's good frames (train, export, certified thresholds -> station bundle) -> replay the
# inspection-line video through the torch-free runtime from the bundle -> INT8 export -> latency benchmark.
# Everything lands in runs/demo/ (override with OUT=...).
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-runs/demo}
K=${K:-4}
N=${N:-200}                  # good calibration parts: N >= 1/A - 1 certifies A
FRR=${FRR:-0.005}            # A: NG threshold, at most 0.5 % of good parts rejected
REVIEW_FRR=${REVIEW_FRR:-0.01}  # B: at most 1 % of good parts sent to REVIEW or NG
bash scripts/setup_env.sh
PS=.venv/bin/protospect          # training + export (torch)
RT=.venv-runtime/bin/protospect  # the station: numpy + OpenCV + ONNX Runtime, no torch
mkdir -p "$OUT"

echo "== 1/6 demo parts (procedural flanges with planted defects, CC0) + a 200-frame line video + $((K + N + 6)) good line frames"
$PS demo-data --out "$OUT/data" --video-frames 200 --good-video-frames $((K + N + 6))

echo "== 2/6 few-shot evaluation: patchcore baseline vs pcsnet, K=2 and $K, seed 0"
$PS eval --data "$OUT/data" --category flange --method patchcore --shots 2 "$K" --seeds 0 --out "$OUT/eval"
$PS eval --data "$OUT/data" --category flange --method pcsnet --shots 2 "$K" --seeds 0 --out "$OUT/eval"

echo "== 3/6 register the part at the station: $K shots + $N good parts from the line camera (MJPG), pcsnet edge,"
echo "        ONNX with parity check, NG at A=$FRR, REVIEW at B=$REVIEW_FRR (split conformal) -> $OUT/station"
rm -rf "$OUT/station"
$PS register --source "$OUT/data/line_good.avi" --out "$OUT/station" --shots "$K" --good "$N" \
    --frr "$FRR" --review-frr "$REVIEW_FRR" --method pcsnet --preset edge

echo "== 4/6 the station: replay the line video from the bundle, log every verdict (OK / REVIEW / NG, p-value)"
rm -rf "$OUT/served"
$RT serve "$OUT/station" --source "$OUT/data/line.avi" --sink "$OUT/served"
.venv-runtime/bin/python scripts/check_line_verdicts.py "$OUT/served/verdicts.jsonl" "$OUT/data/line.avi.json"

echo "== 5/6 INT8 Q/DQ graph of the station's model, calibrated on its shots"
$PS export "$OUT/station/artifact" --out "$OUT/model_int8.onnx" --int8

echo "== 6/6 latency: host-to-host per stage, FP32 (the bundle) and INT8, on this machine"
$RT bench "$OUT/station" --source "$OUT/data/line.avi" --loop --frames 300 --warmup 30 --out "$OUT/bench_fp32"
$RT bench "$OUT/model_int8.onnx" --source "$OUT/data/line.avi" --loop --frames 300 --warmup 30 --out "$OUT/bench_int8"

echo
echo "done. Look at:"
echo "  $OUT/eval/results.md                   accuracy table (image/pixel AUROC, AUPRO, F1)"
echo "  $OUT/eval/heatmaps_flange_*.png         test images with heatmap overlays"
echo "  $OUT/station/report.html                the registration: shots, good parts, thresholds, certified rates"
echo "  $OUT/served/verdicts.jsonl, ng/*.png    every frame's verdict; NG frames with heatmaps"
echo "  $OUT/bench_*/                           latency tables and histograms"
echo
.venv-runtime/bin/python scripts/check_line_verdicts.py "$OUT/served/verdicts.jsonl" "$OUT/data/line.avi.json" | grep HEADLINE
