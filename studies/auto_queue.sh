#!/bin/bash
# Rules v5 / v6 (docs/decision.md sections 14-15): both input-size candidates for every acceptance cell,
# validation with the logical kinds, planted at model resolution (val_*) and at native pixels (valn_*).
# Two workers share one queue file; each job runs on one thread (WORKERS=1 leaves a core free); a queue.txt
# written by hand runs only those jobs.
#   bash studies/auto_queue.sh OUT_DIR [DATA]
set -u
OUT=${1:?usage: auto_queue.sh OUT_DIR [DATA]}; DATA=${2:-../shared/data}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
if [ ! -s "$OUT/queue.txt" ]; then
  for k in 4 2 8; do for c in juice_bottle_loco deeppcb_00041 deeppcb_44000 elpv_mono mpdd_metal_plate hazelnut_toy bottle; do
    for s in 0 1 2; do
      test=--no-test
      case "$c$k$s" in bottle22|bottle82|hazelnut_toy22|hazelnut_toy82) test="";; esac  # cells section 13 lacks
      echo "$c $k $s 256 $test"; echo "$c $k $s 512 $test"
    done; done; done > "$OUT/queue.txt"
fi
PY=${PY:-.venv/bin/python}
run_job() {  # category K seed size [--no-test]
  local c=$1 k=$2 s=$3 size=$4 test=${5:-} g=$(($4 / 8)) br="pcs" name=$OUT/${1}_k${2}_s${3}_${4}
  [ -z "$test" ] && [ "$size" = 256 ] && br="pcs nn1"  # PatchCore edge rows where the test is scored
  # shellcheck disable=SC2086  # $br and $test are meant to split
  OMP_NUM_THREADS=1 "$PY" studies/decision_study.py --data "$DATA" --category "$c" --shots "$k" --seeds "$s" \
    --val 20 --small --logical --native-plant --aupro --textures "$DATA/textures" --branches $br --metric-size 256 $test \
    --set input_size="$size" --set grid=$g --set "bins=[$g,$((g/2)),$((g/4)),$((g/8))]" --set prototypes=1024 \
    --out "$name.jsonl" > "$name.log" 2>&1
}
. studies/queue_lib.sh
run_workers 2
