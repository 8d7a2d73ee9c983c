#!/usr/bin/env bash
# Runs a step of `make test` and records how long it took, so that a CI log ends with the time
# of each part:   scripts/timed.sh NAME CMD ARGS...   |   scripts/timed.sh --summary
# A failing step still records its time; the step's exit status is kept.
set -uo pipefail
LOG="${RT_TIMINGS_FILE:-${TMPDIR:-/tmp}/realtime-operator-timings.$PPID}"
if [[ "${1:-}" == "--summary" ]]; then
  echo "== time per part =="
  cat "$LOG" 2>/dev/null
  rm -f "$LOG"
  exit 0
fi
name=$1
shift
t0=$(date +%s)
"$@"
rc=$?
line=$(printf '%-12s %5ss  %s' "$name" "$(( $(date +%s) - t0 ))" "$([[ $rc == 0 ]] && echo ok || echo "FAILED ($rc)")")
echo "$line" >> "$LOG"
echo "== $line" >&2
exit $rc
