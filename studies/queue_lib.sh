# Shared by the study queues (auto_queue.sh, aspect_queue.sh, fusion_queue.sh); sourced, not run.
# The caller sets OUT (the study folder, holding queue.txt: one job per line) and defines run_job, which gets a
# job's words as arguments and returns its exit status. run_workers N starts N workers (WORKERS overrides it)
# that take lines off the queue under a lock, so two invocations on one folder share the work; every start and
# end goes to OUT/progress.log with the job's real exit status. MAXJOBS=N makes a worker wait before each job while
# N study processes already run on the machine (other queues' included), so a second queue can wait its turn.

work() {
  local Q=$OUT/queue.txt job rc
  while true; do
    while [ -n "${MAXJOBS:-}" ] && [ "$(pgrep -fc 'studies/decision_study.py')" -ge "$MAXJOBS" ]; do sleep 15; done
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
