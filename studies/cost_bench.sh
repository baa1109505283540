#!/usr/bin/env bash
# CPU cost of PCSNet edge variants in one run (docs/decision.md sections 9 and 11): train a model per variant
# on the same shots (few steps: the cost is the graph's, not the weights'), export fp32 ONNX, then
# `protospect bench` each on the same frames, one after the other.
#   bash studies/cost_bench.sh DATA_DIR OUT_DIR FRAMES VARIANT...
# variants: s256 s384 s512 s640 (input size; the edge grid stays S/8; the preset's 1,024-prototype cap applies, so
# since rule v4 s512 is the same model as m1024), p512 (512 px, one prototype per grid position: rule v3's model),
# m1024 (512 px, a 1,024-prototype coreset),
# g32 (512 px, grid 32), a256 / a512 (aspect=keep on juice_bottle_loco's 1:2 images: 384 x 192 and 704 x 384,
# rule v7, section 17), g256 / g512 (the global branch of rule v13, section 34).
# Results: OUT_DIR/<variant>/bench/bench.json (host_to_host p50 is the rule's cost).
# FRAMES=0 only trains and exports (so the bench itself can run later on a quiet machine); a variant folder
# that already holds model.onnx is benched as it is.
set -euo pipefail
DATA=$1; OUT=$2; FRAMES=$3; shift 3
PY=.venv/bin
RT=.venv-runtime/bin
args_for() {
  case $1 in
    # geometry=fixed: each variant is its own size (the edge default would choose 256 or 512 per part)
    s256|s384|s512|s640) echo "--size ${1#s} --set geometry=fixed --set image_branch=none" ;;  # a size alone keeps the edge grid of S/8
    m1024) echo "--size 512 --set prototypes=1024 --set geometry=fixed --set image_branch=none" ;;
    p512) echo "--size 512 --set prototypes=0 --set geometry=fixed --set image_branch=none" ;;
    g32) echo "--size 512 --set grid=32 --set bins=[32,16,8,4] --set geometry=fixed --set image_branch=none" ;;
    a256|a512) echo "--size ${1#a} --set geometry=fixed --set aspect=keep --set image_branch=none" ;;
    # the global branch on (rule v13, section 34); every other variant pins image_branch=none
    g256|g512) echo "--size ${1#g} --set geometry=fixed --set image_branch=global" ;;
    *) echo "cost_bench: unknown variant $1" >&2; return 2 ;;
  esac
}
mkdir -p "$OUT"
for v in "$@"; do
  if [ ! -f "$OUT/$v/model.onnx" ]; then
    a=$(args_for "$v")
    cat=mpdd_metal_plate; case $v in a*) cat=juice_bottle_loco ;; esac  # a non-square part for aspect=keep
    # shellcheck disable=SC2086  # the variant's arguments are meant to split
    OMP_NUM_THREADS=1 $PY/protospect train --data "$DATA" --category "$cat" --shots 4 --seed 0 --out "$OUT/$v/art" \
      $a --set steps=5
    $PY/protospect export "$OUT/$v/art" --out "$OUT/$v/model.onnx"
  fi
done
[ "$FRAMES" -gt 0 ] || exit 0
for v in "$@"; do
  echo "== $v"
  $RT/protospect bench "$OUT/$v/model.onnx" --frames "$FRAMES" --warmup 30 --out "$OUT/$v/bench" | grep HEADLINE
done
