#!/usr/bin/env bash
# `make bench-floor`: realtime-server against the floor (bench/floor/, rt-floor: a deliberately
# minimal broadcaster that writes one pre-encoded frame per receiver), same machine, same rtbench
# commands, interleaved (ours, floor; then floor, ours), issue 16.
#
# Sections (SECTIONS, default "cluster single"; add "conns" for the 20k-connection figures):
#   cluster  2 nodes + Redis (run-anchor.sh with SERVER_CMD), through nginx and direct to the nodes:
#            fan-out to 1000 receivers at 50/s (CPU per delivery) and overload (saturation)
#   single   1 node direct, no Redis (ours: in-memory adapter): the same two runs
#   conns    1 node direct, no Redis, a fresh process per figure: idle-connection memory at 1k and
#            at CONNS_MAX connections, and the latency of broadcasts reaching CONNS_MAX - 1 receivers
#
# Loopback only. Uses the fixed ports of run-anchor.sh (Redis 6379, nodes 3001/3002, nginx 8080)
# and our admin ports 9001/9002, holds the shared lock $BENCH_LOCK (default /tmp/rt-bench.lock)
# from the first process started to the last one stopped (builds happen before, outside it).
# Raw outputs: ~/.cache/realtime-operator/bench/floor/<timestamp>/; the summary
# (bench/summarize_floor.py) is printed at the end and saved there as summary.md.
#
# Environment:
#   SECTIONS="cluster single conns"  what to measure (see above)
#   ROUNDS=N           rounds of cluster/single (default 1, about 4 min; the order of the systems
#                      alternates: ours first in odd rounds, the floor first in even ones)
#   FIRST_ROUND=N      number of the first round (default 1): a second invocation with
#                      OUT=<the first one's folder> FIRST_ROUND=2 adds round 2 to it (each
#                      invocation holds the lock on its own, so each stays well under 15 min)
#   CLUSTER_WORKERS=N  runtime threads of each node in the cluster section, both systems
#                      (WORKER_THREADS / TOKIO_WORKER_THREADS; default 1: each node sized like a
#                      pod requesting 1 CPU, as the operator runs it: 2 nodes on 2 cores; 0: tokio's
#                      default of one per core, 2 threads per node here). The single node keeps
#                      tokio's default (it has the machine).
#   QUICK=1            short debug run (small numbers); not for reporting
#   CONNS_MAX=N        connections for the large conns figure (default 19900: the open-files limit
#                      of every process here is 20000, rtbench's and the node's included)
#   SHARED_BENCH=DIR   the benchmark kit (default: ../shared/bench next to the repository)
#   BENCH_CACHE=DIR    default ~/.cache/realtime-operator/bench
#   FLOOR_TARGET=DIR   cargo target folder of rtbench and rt-floor (default $BENCH_CACHE/floor-target)
#   OUT=DIR            results folder
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED_BENCH="${SHARED_BENCH:-$ROOT/../shared/bench}"
BENCH_CACHE="${BENCH_CACHE:-$HOME/.cache/realtime-operator/bench}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/realtime-operator/target}"
FLOOR_TARGET="${FLOOR_TARGET:-$BENCH_CACHE/floor-target}"
SECTIONS="${SECTIONS:-cluster single}"
ROUNDS="${ROUNDS:-1}"
FIRST_ROUND="${FIRST_ROUND:-1}"
QUICK="${QUICK:-0}"
CLUSTER_WORKERS="${CLUSTER_WORKERS:-1}"
CONNS_MAX="${CONNS_MAX:-19900}"
BENCH_LOCK="${BENCH_LOCK:-/tmp/rt-bench.lock}"
SUFFIX=""; [[ $QUICK == 1 ]] && SUFFIX=-quick
OUT="${OUT:-$BENCH_CACHE/floor/$(date +%Y%m%d-%H%M%S)$SUFFIX}"
A="$SHARED_BENCH/anchor-node/run-anchor.sh"
RB="$FLOOR_TARGET/release/rtbench"
FLOOR_BIN="$FLOOR_TARGET/release/rt-floor"
SERVER_BIN="$CARGO_TARGET_DIR/release/realtime-server"
PORTS=(6379 3001 3002 8080 9001 9002)
ADMIN_OFFSET=6000

die() { echo "floor: $*" >&2; exit 1; }
say() { echo "floor: $*" >&2; }

# ------------------------------------------------------------------ prerequisites
[[ -x "$A" && -f "$SHARED_BENCH/rtbench/Cargo.toml" ]] || die "benchmark kit not found at $SHARED_BENCH (set SHARED_BENCH)"
export PATH="$PATH:/usr/sbin"
[[ $CLUSTER_WORKERS =~ ^(0|[1-9][0-9]*)$ ]] || die "CLUSTER_WORKERS must be a whole number (got $CLUSTER_WORKERS)"
# Thread counts come from CLUSTER_WORKERS only (the single node: tokio's default).
unset WORKER_THREADS TOKIO_WORKER_THREADS
for t in redis-server redis-cli nginx cargo python3 curl flock; do
  command -v "$t" >/dev/null || die "$t is required (scripts/deps.sh installs redis-server and nginx)"
done
# One descriptor per connection in rtbench and in the node, two in nginx.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(( $(ulimit -n) >= 4096 )) || die "open-file limit $(ulimit -n) is too low"
if [[ " $SECTIONS " == *" conns "* ]] && (( CONNS_MAX + 64 > $(ulimit -n) )); then
  die "CONNS_MAX=$CONNS_MAX needs an open-file limit of at least $((CONNS_MAX + 64)) (have $(ulimit -n))"
fi

mkdir -p "$OUT"
say "building rtbench, rt-floor (into $FLOOR_TARGET) and realtime-server (release)"
CARGO_TARGET_DIR="$FLOOR_TARGET" cargo build -q --release --locked --manifest-path "$SHARED_BENCH/rtbench/Cargo.toml"
CARGO_TARGET_DIR="$FLOOR_TARGET" cargo build -q --release --locked --manifest-path "$ROOT/bench/floor/Cargo.toml"
(cd "$ROOT" && cargo build -q --release -p realtime-server)
for b in "$RB" "$FLOOR_BIN" "$SERVER_BIN"; do [[ -x "$b" ]] || die "missing $b"; done
# Private copies: other builds must not swap a binary mid-run.
cp "$RB" "$FLOOR_BIN" "$SERVER_BIN" "$OUT/"
RB="$OUT/rtbench"; FLOOR_BIN="$OUT/rt-floor"; SERVER_BIN="$OUT/realtime-server"

say "waiting for the shared benchmark lock $BENCH_LOCK"
exec 9>"$BENCH_LOCK"
flock 9

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
  command -v ss >/dev/null && ss -ltnp 2>/dev/null | grep -E ":($(echo "$busy" | tr ' ' '|'))\b" >&2 || true
  die "port(s) $busy on 127.0.0.1 are in use"
}

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
{
  model="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "machine: $(nproc) CPUs ($model), Linux $(uname -r); $(redis-server --version | grep -o 'v=[^ ]*' | sed 's/v=/redis /'), $(nginx -v 2>&1 | sed 's|.*nginx/|nginx |'), $(rustc --version | cut -d' ' -f1-2)"
  echo "server: realtime-server $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- server bench/floor || echo '+local changes')"
  echo "cluster nodes: $([[ $CLUSTER_WORKERS -gt 0 ]] && echo "$CLUSTER_WORKERS runtime thread(s) each" || echo "one runtime thread per core each"); single node: one per core"
  echo "sections: $SECTIONS; rounds $FIRST_ROUND..$((FIRST_ROUND + ROUNDS - 1)); $([[ $QUICK == 1 ]] && echo 'QUICK (debug run, not for reporting)' || echo full)"
  echo "load: 1/5/15-min load $load_start at start"
} >> "$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

# ------------------------------------------------------------------ starting and stopping
CUR_RUN=""; SINGLE_PID=""
stop_all() {
  [[ -n "$CUR_RUN" ]] && { RUN="$CUR_RUN" "$A" stop || true; }
  CUR_RUN=""
  if [[ -n "$SINGLE_PID" ]]; then
    kill -TERM "$SINGLE_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SINGLE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SINGLE_PID" 2>/dev/null || true
    wait "$SINGLE_PID" 2>/dev/null || true
  fi
  SINGLE_PID=""
}
trap stop_all EXIT
trap 'exit 130' INT TERM

node_cmd() {  # SYS [WORKERS]: the per-node command; run-anchor.sh (or start_single) sets PORT, NAME, REDIS_URL
  local workers=""
  [[ ${2:-0} -gt 0 ]] && workers="env WORKER_THREADS=$2 TOKIO_WORKER_THREADS=$2 "
  if [[ $1 == ours ]]; then
    echo "$workers$SERVER_BIN --bind 127.0.0.1 --admin-port \$((PORT + $ADMIN_OFFSET))"
  else
    echo "$workers$FLOOR_BIN"
  fi
}

wait_ready() {  # SYS PORT...: ours is ready when /readyz says so (Redis subscribed); the floor
  local sys=$1 p ok; shift   # listens only once its Redis subscription is confirmed
  for p in "$@"; do
    ok=0
    for _ in $(seq 1 100); do
      if [[ $sys == ours ]]; then
        [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$((p + ADMIN_OFFSET))/readyz")" == 200 ]] && { ok=1; break; }
      else
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && { ok=1; break; }
      fi
      sleep 0.1
    done
    (( ok )) || die "$sys node on :$p not ready after 10 s (logs in $OUT)"
  done
}

start_cluster() {  # SYS TAG: Redis + 2 nodes + nginx; sets P
  local sys=$1 tag=$2
  check_ports
  CUR_RUN="$OUT/run-$tag"; mkdir -p "$CUR_RUN"
  env RUN="$CUR_RUN" SERVER_CMD="$(node_cmd "$sys" "$CLUSTER_WORKERS")" "$A" start >/dev/null ||
    { tail -n 20 "$CUR_RUN"/*.log >&2; die "$sys cluster did not start (logs in $CUR_RUN)"; }
  wait_ready "$sys" 3001 3002
  sleep 2
  P="$(RUN="$CUR_RUN" "$A" pids)"
  echo "$tag: $P" >> "$OUT/pids.txt"
}

start_single() {  # SYS TAG: one node on :3001, no Redis (ours: in-memory adapter); sets P
  local sys=$1 tag=$2
  check_ports
  mkdir -p "$OUT/run-$tag"
  (cd "$OUT" && PORT=3001 NAME=n1 exec bash -c "exec $(node_cmd "$sys")" </dev/null >"$OUT/run-$tag/n1.log" 2>&1) &
  SINGLE_PID=$!
  wait_ready "$sys" 3001
  sleep 1
  P="n1=$SINGLE_PID"
  echo "$tag: $P" >> "$OUT/pids.txt"
}

# cpu_ticks "n1=PID,nginx=PID+PID,...": utime+stime per name (as bench/run.sh)
cpu_ticks() {
  local item name p stat total out="" items pids f
  IFS=, read -ra items <<< "$1"
  for item in "${items[@]}"; do
    name=${item%%=*}; total=0
    IFS=+ read -ra pids <<< "${item#*=}"
    for p in "${pids[@]}"; do
      stat="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
      read -ra f <<< "${stat##*) }"
      total=$((total + f[11] + f[12]))
    done
    out+="\"$name\": $total, "
  done
  echo "CPUTICKS {\"hz\": $(getconf CLK_TCK), \"t\": $(date +%s.%N), \"ticks\": {${out%, }}}"
}

run() {  # NAME CMD...: one rtbench invocation, output in $OUT/NAME.txt
  local name=$1; shift
  echo "### $name ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg)): $*" > "$OUT/$name.txt"
  say "$name (load $(cut -d' ' -f1 /proc/loadavg))"
  cpu_ticks "$P" >> "$OUT/$name.txt"
  "$@" >> "$OUT/$name.txt" 2>&1 || say "$name: rtbench exited with $? (see $OUT/$name.txt)"
  cpu_ticks "$P" >> "$OUT/$name.txt"
  grep -E '^(receivers|idle clients):|^rate |^ *latency|^anomalies|early connection|failed x|delta/conn|^n1 ' "$OUT/$name.txt" >&2 || true
}

# ------------------------------------------------------------------ the measurements
BIND=127.0.1.1-127.0.20.1:256   # 20 source IPs, 3rd octet differs: nginx ip_hash splits 50/50
if [[ $QUICK == 1 ]]; then
  RECV=200; RATE50=20@2,50@3; OVER=400@2; DRAIN_MAX=15; SMALL=500; SETTLE=2; HOLD=3; BIG_RATE=1@2,2@3
else
  # the first phase is a warm-up (ignored); 50/s x 10 s is the CPU-per-delivery point. Overload:
  # 400/s x 5 s is above both systems' saturation here, 2000 x 1 s a burst; best delivered msg/s.
  RECV=1000; RATE50=20@3,50@10; OVER=400@5,2000@1; DRAIN_MAX=30; SMALL=1000; SETTLE=5; HOLD=10; BIG_RATE=1@3,2@10
fi
FAN=(--clients "$RECV" --payload 100 --drain-max-secs "$DRAIN_MAX" --drain-idle-secs 5 --json)

measure() {  # SYS ROUND TOPO: a fresh node set, the 50/s run and the overload run
  local sys=$1 r=$2 topo=$3 url
  case $topo in
    nginx) start_cluster "$sys" "r$r-$sys-$topo"; url=ws://127.0.0.1:8080 ;;
    direct) start_cluster "$sys" "r$r-$sys-$topo"; url=ws://127.0.0.1:3001,ws://127.0.0.1:3002 ;;
    single) start_single "$sys" "r$r-$sys-$topo"; url=ws://127.0.0.1:3001 ;;
  esac
  run "r$r-$sys-$topo-rate50" "$RB" fanout --url "$url" --bind-ips "$BIND" --rate "$RATE50" "${FAN[@]}" --pids "$P"
  run "r$r-$sys-$topo-over" "$RB" --threads 2 fanout --url "$url" --bind-ips "$BIND" --rate "$OVER" "${FAN[@]}" --pids "$P"
  stop_all
}

conns_section() {  # SYS: one node, fresh process per figure
  local sys=$1
  start_single "$sys" "$sys-conns1k"; sleep "$SETTLE"
  run "$sys-conns1k" "$RB" conns --url ws://127.0.0.1:3001 --bind-ips "$BIND" --clients "$SMALL" --hold-secs "$HOLD" --json --pids "$P"
  stop_all
  start_single "$sys" "$sys-conns20k"; sleep "$SETTLE"
  run "$sys-conns20k" "$RB" conns --url ws://127.0.0.1:3001 --bind-ips "$BIND" --clients "$CONNS_MAX" --hold-secs "$HOLD" \
    --connect-timeout-secs 60 --hello-timeout-secs 30 --json --pids "$P"
  stop_all
  # CONNS_MAX - 1 receivers + the publisher: every broadcast reaches CONNS_MAX sockets
  start_single "$sys" "$sys-fan20k"
  run "$sys-fan20k" "$RB" --threads 2 fanout --url ws://127.0.0.1:3001 --bind-ips "$BIND" --clients "$((CONNS_MAX - 1))" \
    --payload 100 --rate "$BIG_RATE" --drain-max-secs 60 --drain-idle-secs 3 --connect-timeout-secs 60 --hello-timeout-secs 30 \
    --json --pids "$P"
  stop_all
}

t0=$SECONDS
for ((r = FIRST_ROUND; r < FIRST_ROUND + ROUNDS; r++)); do
  order=(ours floor); (( r % 2 == 0 )) && order=(floor ours)
  for topo in nginx direct single; do
    case $topo in nginx | direct) [[ " $SECTIONS " == *" cluster "* ]] || continue ;; single) [[ " $SECTIONS " == *" single "* ]] || continue ;; esac
    for sys in "${order[@]}"; do measure "$sys" "$r" "$topo"; done
  done
done
if [[ " $SECTIONS " == *" conns "* ]]; then
  conns_section ours
  conns_section floor
fi
echo "duration: $((SECONDS - t0)) s of measurements; load at end $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/machine.txt"
flock -u 9

python3 "$ROOT/bench/summarize_floor.py" "$OUT" | tee "$OUT/summary.md"
say "raw results in $OUT"
