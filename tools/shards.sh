# Sourced by tools/sanitize.sh and tools/memcheck.sh: one pytest run split between processes.
#
# run_shards N LOG COMMAND...: starts N copies of COMMAND at once, the i-th with --shard=i/N
# appended (pytest's option from tests/conftest.py: every N-th selected test), each writing to
# LOG.i.log; waits for them in order and prints each log whole. Returns the first non-zero exit
# status, where exit status 5 (pytest collected nothing: a selection smaller than N) counts only
# when every shard had it. A TERM or INT (the CI stage's timeout, ^C) kills the shards and prints
# the last lines of each log, so that a hang still shows where each shard was.
run_shards() {
  local n=$1 log=$2 i rc status=0 empty=0
  shift 2
  local pids=()
  for ((i = 0; i < n; i++)); do
    "$@" "--shard=$i/$n" >"$log.$i.log" 2>&1 &
    pids+=($!)
  done
  # shellcheck disable=SC2064  # the pids and log are expanded now, on purpose
  trap "kill ${pids[*]} 2>/dev/null; tail -n 40 $log.*.log; exit 143" TERM INT
  for ((i = 0; i < n; i++)); do
    rc=0
    wait "${pids[$i]}" || rc=$?
    printf '\n--- shard %d of %d: exit status %d\n' "$i" "$n" "$rc"
    cat "$log.$i.log"
    if [ "$rc" = 5 ]; then
      empty=$((empty + 1))
    elif [ "$rc" != 0 ] && [ "$status" = 0 ]; then
      status=$rc
    fi
  done
  trap - TERM INT
  if [ "$empty" = "$n" ]; then status=5; fi
  return "$status"
}
