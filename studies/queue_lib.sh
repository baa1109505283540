# Shared by the study queues (auto_queue.sh, aspect_queue.sh, fusion_queue.sh); sourced, not run.
# The caller sets OUT (the study folder, holding queue.txt: one job per line) and defines run_job, which gets a
# job's words as arguments and returns its exit status. run_workers N starts N workers (WORKERS overrides it)
# that take lines off the queue under a lock, so two invocations on one folder share the work; every start and
# end goes to OUT/progress.log with the job's real exit status.

work() {
  local Q=$OUT/queue.txt job rc
  while true; do
    job=$(flock "$Q.lock" bash -c "head -n1 '$Q'; sed -i 1d '$Q'")
    [ -z "$job" ] && break
    echo "$(date +%T) start $job" >> "$OUT/progress.log"
    # shellcheck disable=SC2086  # a job line is its words
    run_job $job
    rc=$?  # before $(date) resets it
    echo "$(date +%T) done $job rc=$rc" >> "$OUT/progress.log"
  done
}

run_workers() {
  for _ in $(seq "${WORKERS:-$1}"); do work & done
  wait
}
