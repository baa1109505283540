#!/usr/bin/env bash
# One command: set up a fresh machine and run the whole product on the embedded demo part (no downloads,
# no third-party images): generate parts -> few-shot evaluation -> train -> export ONNX (FP32 + INT8)
# -> replay an inspection-line video through the torch-free runtime -> latency benchmark.
# Everything lands in runs/demo/ (override with OUT=...).
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-runs/demo}
K=${K:-4}
bash scripts/setup_env.sh
PS=.venv/bin/protospect          # training + export (torch)
RT=.venv-runtime/bin/protospect  # the station: numpy + OpenCV + ONNX Runtime, no torch
mkdir -p "$OUT"

echo "== 1/6 demo parts (procedural flanges with planted defects, CC0) + a 200-frame line video + 100 good parts"
$PS demo-data --out "$OUT/data" --video-frames 200 --good-video-frames 100

echo "== 2/6 few-shot evaluation: patchcore baseline vs pcsnet, K=2 and $K, seed 0"
$PS eval --data "$OUT/data" --category flange --method patchcore --shots 2 "$K" --seeds 0 --out "$OUT/eval"
$PS eval --data "$OUT/data" --category flange --method pcsnet --shots 2 "$K" --seeds 0 --out "$OUT/eval"

echo "== 3/6 train the station model (pcsnet edge, K=$K)"
$PS train --data "$OUT/data" --category flange --method pcsnet --preset edge --shots "$K" --seed 0 --out "$OUT/artifact"

echo "== 4/6 export: FP32 ONNX with a parity check, and INT8 Q/DQ calibrated on the shots"
$PS export "$OUT/artifact" --out "$OUT/model.onnx" --check
$PS export "$OUT/artifact" --out "$OUT/model_int8.onnx" --int8

echo "== 5/6 the station: replay the line video, log every verdict, save NG frames with heatmaps"
rm -rf "$OUT/station"
$RT serve "$OUT/model.onnx" --source "$OUT/data/line.avi" --sink "$OUT/station"
.venv-runtime/bin/python scripts/check_line_verdicts.py "$OUT/station/verdicts.jsonl" "$OUT/data/line.avi.json"
echo "-- the same line with the threshold set on the line: 100 other good parts through the same camera (MJPG)"
rm -rf "$OUT/station_line"
$RT calibrate "$OUT/model.onnx" --source "$OUT/data/line_good.avi" --out "$OUT/station_line/line_threshold.json"
$RT serve "$OUT/model.onnx" --source "$OUT/data/line.avi" --sink "$OUT/station_line" --threshold "$OUT/station_line/line_threshold.json"
.venv-runtime/bin/python scripts/check_line_verdicts.py "$OUT/station_line/verdicts.jsonl" "$OUT/data/line.avi.json"

echo "== 6/6 latency: host-to-host per stage, FP32 and INT8, on this machine"
$RT bench "$OUT/model.onnx" --source "$OUT/data/line.avi" --loop --frames 300 --warmup 30 --out "$OUT/bench_fp32"
$RT bench "$OUT/model_int8.onnx" --source "$OUT/data/line.avi" --loop --frames 300 --warmup 30 --out "$OUT/bench_int8"

echo
echo "done. Look at:"
echo "  $OUT/eval/results.md                   accuracy table (image/pixel AUROC, AUPRO, F1)"
echo "  $OUT/eval/heatmaps_flange_*.png         test images with heatmap overlays"
echo "  $OUT/station/verdicts.jsonl, ng/*.png   every frame's verdict; NG frames with heatmaps"
echo "  $OUT/station_line/                      the same with the line-calibrated threshold (line_threshold.png)"
echo "  $OUT/bench_*/                           latency tables and histograms"
