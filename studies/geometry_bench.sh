#!/usr/bin/env bash
# CPU cost of PCSNet edge at the input sizes rule v3 compares (docs/decision.md section 9), in one run.
#   bash studies/geometry_bench.sh [DATA_DIR] [OUT_DIR] [FRAMES]
set -euo pipefail
exec bash "$(dirname "$0")/cost_bench.sh" "${1:-../shared/data}" "${2:-runs/geometry_bench}" "${3:-300}" s256 s384 s512
