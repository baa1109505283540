#!/usr/bin/env bash
# Run `.ci/run` the way CI does: on a fresh clone of the committed HEAD, with ../shared beside it.
# The clone (two venvs, ~7 GB) is removed on exit, pass or fail: leftover clones once filled the
# disk and the project's own CI then failed in pip with "No space left on device".
#   bash scripts/fresh_clone_ci.sh [LOG]     (LOG defaults to $TMPDIR/protospect_fresh_clone_ci.log)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOG=$(realpath -m "${1:-${TMPDIR:-/tmp}/protospect_fresh_clone_ci.log}")
SHARED=$(cd "$REPO/../shared" 2>/dev/null && pwd || true)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git clone -q "$REPO" "$WORK/p"
[ -n "$SHARED" ] && ln -s "$SHARED" "$WORK/shared"
echo "[fresh-clone-ci] $(git -C "$WORK/p" log --oneline -1) in $WORK, log: $LOG"
rc=0
(cd "$WORK/p" && CI=true bash .ci/run) >"$LOG" 2>&1 || rc=$?
tail -n 5 "$LOG"
echo "[fresh-clone-ci] rc=$rc"
exit $rc
