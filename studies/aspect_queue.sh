#!/bin/bash
# Rule v7 (docs/decision.md section 17): aspect=keep on juice_bottle_loco (the one non-square dev part),
# both geometry=auto candidates, K = 2 / 4 / 8, seeds 0-2, with exactly studies/auto_queue.sh's flags.
#   bash studies/aspect_queue.sh OUT_DIR [DATA]     (WORKERS=1 leaves a core free)
set -u
OUT=${1:?usage: aspect_queue.sh OUT_DIR [DATA]}; DATA=${2:-../shared/data}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
if [ ! -s "$OUT/queue.txt" ]; then
  for k in 4 2 8; do for s in 0 1 2; do echo "juice_bottle_loco $k $s 512"; echo "juice_bottle_loco $k $s 256"; done; done > "$OUT/queue.txt"
fi
PY=${PY:-.venv/bin/python}
run_job() {  # category K seed size
  local c=$1 k=$2 s=$3 size=$4 g=$(($4 / 8)) name=$OUT/${1}_k${2}_s${3}_${4}
  OMP_NUM_THREADS=1 "$PY" studies/decision_study.py --data "$DATA" --category "$c" --shots "$k" --seeds "$s" \
    --val 20 --small --logical --native-plant --aupro --textures "$DATA/textures" --branches pcs --metric-size 256 \
    --set input_size="$size" --set grid=$g --set "bins=[$g,$((g/2)),$((g/4)),$((g/8))]" --set prototypes=1024 \
    --set aspect=keep --out "$name.jsonl" > "$name.log" 2>&1
}
. studies/queue_lib.sh
run_workers 1
