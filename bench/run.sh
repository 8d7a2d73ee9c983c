#!/usr/bin/env bash
# `make bench`: realtime-server against the Node.js socket.io + @socket.io/redis-adapter reference,
# both behind the same Redis and nginx (ip_hash) on this machine, in one run, with the same rtbench
# commands, interleaved (reference, ours, reference, ours) so that drift hits both.
#
# Loopback only. Uses the fixed ports of ../shared/bench/anchor-node/run-anchor.sh
# (Redis 6379, nodes 3001/3002, nginx 8080), plus our nodes' admin ports 9001/9002 (PORT + 6000),
# and fails if one of them is taken.
# Raw outputs go to ~/.cache/realtime-operator/bench/results/<timestamp>/; the summary table
# (bench/summarize.py) is printed at the end and saved there as summary.md.
#
# Environment:
#   QUICK=1            short debug run (fewer clients, short phases, ~3 min); not for reporting
#   QUIET_WAIT=SECS    wait at most this long for a 1-min load average < QUIET_LOAD before measuring
#                      (default 1200; 0 = don't wait); the outcome is recorded in machine.txt
#   QUIET_LOAD=X       default 0.8
#   SHARED_BENCH=DIR   the benchmark kit (default: ../shared/bench next to the repository)
#   BENCH_CACHE=DIR    default ~/.cache/realtime-operator/bench (anchor-node copy, rtbench build, results)
#   OUT=DIR            results folder (default $BENCH_CACHE/results/<timestamp>)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED_BENCH="${SHARED_BENCH:-$ROOT/../shared/bench}"
BENCH_CACHE="${BENCH_CACHE:-$HOME/.cache/realtime-operator/bench}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/realtime-operator/target}"
QUICK="${QUICK:-0}"
QUIET_WAIT="${QUIET_WAIT:-1200}"
QUIET_LOAD="${QUIET_LOAD:-0.8}"
SUFFIX=""; [[ $QUICK == 1 ]] && SUFFIX=-quick
OUT="${OUT:-$BENCH_CACHE/results/$(date +%Y%m%d-%H%M%S)$SUFFIX}"
ANCHOR="$BENCH_CACHE/anchor-node"
A="$ANCHOR/run-anchor.sh"
RB_TARGET="$BENCH_CACHE/target"
RB="$RB_TARGET/release/rtbench"
SERVER_BIN="$CARGO_TARGET_DIR/release/realtime-server"
PORTS=(6379 3001 3002 8080 9001 9002)
ADMIN_OFFSET=6000   # our node on PORT serves /readyz on PORT + ADMIN_OFFSET (ADMIN_PORT)

die() { echo "bench: $*" >&2; exit 1; }
say() { echo "bench: $*" >&2; }

# ------------------------------------------------------------------ prerequisites
[[ -d "$SHARED_BENCH/anchor-node" && -f "$SHARED_BENCH/rtbench/Cargo.toml" ]] ||
  die "benchmark kit not found at $SHARED_BENCH (expected a sibling folder 'shared/bench' of the repository; set SHARED_BENCH)"
SHARED_BENCH="$(cd "$SHARED_BENCH" && pwd)"
if ! command -v redis-server >/dev/null || ! { command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]]; }; then
  say "redis-server or nginx missing: running scripts/deps.sh"
  "$ROOT/scripts/deps.sh"
fi
export PATH="$PATH:/usr/sbin"
for t in redis-server redis-cli nginx node npm cargo python3; do
  command -v "$t" >/dev/null || die "$t is required"
done

# Each connection is one descriptor in rtbench, two in nginx, one in a node.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(( $(ulimit -n) >= 12000 )) || die "open-file limit $(ulimit -n) is too low for 5000 connections (need >= 12000)"

ports_busy() {
  local p busy=()
  for p in "${PORTS[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then busy+=("$p"); fi
  done
  echo "${busy[*]}"
}
check_ports() {
  local busy; busy="$(ports_busy)"
  [[ -z "$busy" ]] && return 0
  say "port(s) $busy on 127.0.0.1 are in use; run-anchor.sh needs 6379, 3001, 3002 and 8080 free, and our nodes 9001 and 9002"
  command -v ss >/dev/null && ss -ltnp 2>/dev/null | grep -E ":($(echo "$busy" | tr ' ' '|'))\b" >&2 || true
  die "stop those processes (e.g. 'systemctl stop redis-server nginx') and retry"
}
check_ports

# The reference, copied from the read-only kit into the cache; `npm ci` when the lock changed.
mkdir -p "$ANCHOR" "$OUT"
cp "$SHARED_BENCH"/anchor-node/{index.js,nginx.conf,package.json,package-lock.json,run-anchor.sh} "$ANCHOR/"
chmod u+w "$ANCHOR"/* && chmod +x "$A"
lock_sum="$(sha256sum "$ANCHOR/package-lock.json" | cut -d' ' -f1)"
if [[ ! -d "$ANCHOR/node_modules/socket.io" || "$(cat "$ANCHOR/.lock-sum" 2>/dev/null)" != "$lock_sum" ]]; then
  say "npm ci in $ANCHOR"
  (cd "$ANCHOR" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" > "$ANCHOR/.lock-sum"
fi

say "building rtbench and realtime-server (release)"
CARGO_TARGET_DIR="$RB_TARGET" cargo build -q --release --locked --manifest-path "$SHARED_BENCH/rtbench/Cargo.toml"
(cd "$ROOT" && cargo build -q --release -p realtime-server)
[[ -x "$RB" ]] || die "no rtbench at $RB"
[[ -x "$SERVER_BIN" ]] || die "no realtime-server at $SERVER_BIN"
# Run a private copy: other builds in the shared target folder must not swap the binary mid-run.
cp "$SERVER_BIN" "$OUT/realtime-server"
SERVER_BIN="$OUT/realtime-server"

# ------------------------------------------------------------------ quiet machine
waited=0
if (( QUIET_WAIT > 0 )); then
  say "waiting (up to ${QUIET_WAIT}s) for a 1-min load average below $QUIET_LOAD"
  while :; do
    load="$(cut -d' ' -f1 /proc/loadavg)"
    awk -v l="$load" -v q="$QUIET_LOAD" 'BEGIN { exit !(l < q) }' && break
    (( waited >= QUIET_WAIT )) && { say "machine not quiet after ${waited}s (load $load): measuring anyway"; break; }
    sleep 15; waited=$((waited + 15))
  done
fi
load_start="$(cut -d' ' -f1-3 /proc/loadavg)"

{
  model="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  mem="$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
  echo "machine: $(nproc) CPUs ($model), $mem RAM, Linux $(uname -r); node $(node --version)," \
    "$(redis-server --version | grep -o 'v=[^ ]*' | sed 's/v=/redis /'), $(nginx -v 2>&1 | sed 's|.*nginx/|nginx |'), $(rustc --version | cut -d' ' -f1-2)"
  echo "server: realtime-server $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- server || echo '+local changes')"
  echo "load: 1/5/15-min load $load_start at start, after waiting ${waited}s for load < $QUIET_LOAD (limit ${QUIET_WAIT}s)"
  echo "mode: $([[ $QUICK == 1 ]] && echo 'QUICK (debug run, not for reporting)' || echo full)"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

# ------------------------------------------------------------------ the measurements
BIND=127.0.1.1-127.0.20.1:256   # 20 source IPs differing in the 3rd octet: nginx ip_hash spreads them 50/50
NGINX=(--url ws://127.0.0.1:8080 --bind-ips "$BIND")
if [[ $QUICK == 1 ]]; then
  ROUNDS=1; RECV=200; SWEEP=20@2,1@2,10@2,50@3; OVER=150@2,400@3
  CONNS=1000; SETTLE=5; HOLD=5; DM_MSGS=1000; DRAIN_MAX=20
else
  # sweep: warm-up phase first (ignored), then the fixed rates; the 50/s phase is the latency point.
  # overload: 400@5 keeps a 5 s send window above both systems' saturation (per-process CPU at the
  # limit); 2000@1 is a burst. Short phases, bounded drain (the backlog queues in the servers).
  ROUNDS=2; RECV=1000; SWEEP=20@5,1@5,10@5,25@5,50@10,75@5,100@5; OVER=150@5,400@5,2000@1
  CONNS=5000; SETTLE=30; HOLD=30; DM_MSGS=5000; DRAIN_MAX=60
fi
FAN=(--clients "$RECV" --payload 100 --drain-max-secs "$DRAIN_MAX" --drain-idle-secs 5 --json)

CUR_RUN=""
stop_cluster() { [[ -n "$CUR_RUN" ]] && RUN="$CUR_RUN" "$A" stop || true; CUR_RUN=""; }
trap stop_cluster EXIT
trap 'exit 130' INT TERM

# start_cluster SYS TAG: Redis + 2 nodes (reference or ours) + nginx, logs under $OUT/run-TAG; sets P
start_cluster() {
  local sys=$1 tag=$2 cmd=()
  check_ports
  CUR_RUN="$OUT/run-$tag"
  mkdir -p "$CUR_RUN"
  # run-anchor.sh runs SERVER_CMD through bash with PORT set, which expands the $((PORT + ...)).
  [[ $sys == ours ]] && cmd=(SERVER_CMD="$SERVER_BIN --bind 127.0.0.1 --admin-port \$((PORT + $ADMIN_OFFSET))")
  env RUN="$CUR_RUN" "${cmd[@]}" "$A" start >/dev/null ||
    { tail -n 20 "$CUR_RUN"/*.log >&2; die "$sys cluster did not start (logs in $CUR_RUN)"; }
  if [[ $sys == ours ]]; then   # ready = Redis connected and subscribed
    local p ready
    for p in 3001 3002; do
      ready=0
      for _ in $(seq 1 100); do
        [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$((p + ADMIN_OFFSET))/readyz")" == 200 ]] && { ready=1; break; }
        sleep 0.1
      done
      (( ready )) || die "node on :$p not ready after 10 s (admin :$((p + ADMIN_OFFSET))/readyz; logs in $CUR_RUN)"
    done
  fi
  sleep 2
  P="$(RUN="$CUR_RUN" "$A" pids)"
  echo "$tag: $P" >> "$OUT/pids.txt"
}

# cpu_ticks "n1=PID,nginx=PID+PID,...": CPUTICKS {json} with utime+stime per name (all its PIDs summed),
# so that the summary can charge the whole run, drain included, to the messages delivered in it.
cpu_ticks() {
  local item name p stat total out="" items pids f
  IFS=, read -ra items <<< "$1"
  for item in "${items[@]}"; do
    name=${item%%=*}; total=0
    IFS=+ read -ra pids <<< "${item#*=}"
    for p in "${pids[@]}"; do
      stat="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
      read -ra f <<< "${stat##*) }"   # f[0] = state (field 3): utime = f[11], stime = f[12]
      total=$((total + f[11] + f[12]))
    done
    out+="\"$name\": $total, "
  done
  echo "CPUTICKS {\"hz\": $(getconf CLK_TCK), \"t\": $(date +%s.%N), \"ticks\": {${out%, }}}"
}

# run NAME CMD...: one rtbench invocation, its output kept in $OUT/NAME.txt
run() {
  local name=$1; shift
  echo "### $name ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg)): $*" > "$OUT/$name.txt"
  say "$name"
  cpu_ticks "$P" >> "$OUT/$name.txt"
  "$@" >> "$OUT/$name.txt" 2>&1 || say "$name: rtbench exited with $? (see $OUT/$name.txt)"
  cpu_ticks "$P" >> "$OUT/$name.txt"
  grep -E '^(receivers|idle clients|peers):|^rate |^ *latency|^(same|cross)-node|^anomalies|early connection|failed x' "$OUT/$name.txt" >&2 || true
}

fanout_dm() {   # SYS ROUND: fan-out sweep, overload (2-thread rtbench), dm on one fresh cluster
  local sys=$1 r=$2
  start_cluster "$sys" "r$r-$sys-fanout"
  run "r$r-$sys-sweep" "$RB" fanout "${NGINX[@]}" --rate "$SWEEP" "${FAN[@]}" --pids "$P"
  run "r$r-$sys-over" "$RB" --threads 2 fanout "${NGINX[@]}" --rate "$OVER" "${FAN[@]}" --pids "$P"
  run "r$r-$sys-dm" "$RB" dm "${NGINX[@]}" --clients 200 --rate 500 --messages "$DM_MSGS" \
    --drain-max-secs 20 --json --pids "$P"
  stop_cluster
}

conns() {       # SYS: idle-connection memory on freshly started processes, after the V8 settle wait
  local sys=$1
  start_cluster "$sys" "r1-$sys-conns"
  sleep "$SETTLE"
  run "r1-$sys-conns" "$RB" conns "${NGINX[@]}" --clients "$CONNS" --hold-secs "$HOLD" --json --pids "$P"
  stop_cluster
}

t0=$SECONDS
fanout_dm ref 1
fanout_dm ours 1
conns ref
conns ours
for ((r = 2; r <= ROUNDS; r++)); do
  fanout_dm ref "$r"
  fanout_dm ours "$r"
done
echo "duration: $((SECONDS - t0)) s of measurements; load at end $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/machine.txt"

python3 "$ROOT/bench/summarize.py" "$OUT" | tee "$OUT/summary.md"
say "raw results in $OUT"
