#!/bin/bash
# Rule v8 (docs/decision.md section 20): both input sizes of every K = 4 acceptance cell, with the test split
# and per-image scores saved (--save-scores), so select_fusion.py can fuse the two models' image scores.
# A job line is `category K seed size [lean|light]`. Two workers share one queue file; each job runs on one thread (WORKERS=1 leaves a core free); a queue.txt
# written by hand runs only those jobs. STUDY_FLAGS adds decision_study.py flags to every job (rule v13: --warp).
#   bash studies/fusion_queue.sh OUT_DIR [DATA]
set -u
OUT=${1:?usage: fusion_queue.sh OUT_DIR [DATA]}; DATA=${2:-../shared/data}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
if [ ! -s "$OUT/queue.txt" ]; then
  for s in 0 1 2; do for c in juice_bottle_loco deeppcb_00041 deeppcb_44000 elpv_mono mpdd_metal_plate hazelnut_toy bottle; do
    echo "$c 4 $s 512"; echo "$c 4 $s 256"
  done; done > "$OUT/queue.txt"
fi
PY=${PY:-.venv/bin/python}
run_job() {  # category K seed size [lean|light]
  local c=$1 k=$2 s=$3 size=$4 g=$(($4 / 8)) br="pcs" name=$OUT/${1}_k${2}_s${3}_${4} extra
  [ "$size" = 256 ] && br="pcs nn1"  # PatchCore edge rows beside the 256 px model
  # the kinds planted at model pixels (val_*) feed only the older rules' scripts; lean drops them, light also
  # drops the test split (validation only). The valn_* kinds, the model and its scores are the same in every mode.
  case "${5:-full}" in
    lean) extra=(--metric-size 256 --aupro) ;;
    light) extra=(--no-test) ;;
    *) extra=(--small --logical --textures "$DATA/textures" --metric-size 256 --aupro) ;;
  esac
  OMP_NUM_THREADS=1 "$PY" studies/decision_study.py --data "$DATA" --category "$c" --shots "$k" --seeds "$s" \
    --val 20 --native-plant --branches $br "${extra[@]}" \
    --save-scores ${STUDY_FLAGS:-} --set input_size="$size" --set grid=$g --set "bins=[$g,$((g/2)),$((g/4)),$((g/8))]" \
    --set prototypes=1024 --out "$name.jsonl" > "$name.log" 2>&1
}
. studies/queue_lib.sh
run_workers 2
