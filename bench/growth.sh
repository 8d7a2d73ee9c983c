#!/usr/bin/env bash
# `make bench-growth`: node CPU, Redis CPU and Redis deliveries per message with 2, 4 and 8
# realtime-server nodes on one Redis, for private messages (rtbench dm) and broadcasts (rtbench
# fanout), with PRIVATE_ROUTING=broadcast (every node gets every private message: the behaviour
# before routing) and PRIVATE_ROUTING=node (to the node of the socket), interleaved.
#
# Topology, loopback only, no nginx: one redis-server, N release realtime-server nodes with the
# Redis adapter; rtbench spreads its clients round-robin over the nodes (--url a,b,c...).
# Each (round, N, mode) starts everything afresh, then measures dm and fanout on the same
# processes. Each measurement is two rtbench runs with the same clients: a baseline with one
# message and the full run; the script takes a snapshot just before and just after each, and
# the figures are (full - baseline) / (messages - 1), so connecting, `hello`, the drain wait and
# disconnecting cancel out. Each run's share of what the processes use while idle (a 3 s window
# just before: the nodes' Redis monitor and probes) is subtracted first:
#   node CPU      sum over the nodes' threads of /proc/PID/task/*/schedstat (ns on CPU)
#   Redis CPU     INFO cpu used_cpu_user + used_cpu_sys (getrusage, µs)
#   deliveries    sum over the nodes of realtime_redis_messages_received_total (pub/sub
#                 messages Redis delivered to a node), from their /metrics
#   Redis commands INFO stats total_commands_processed; PUBLISH calls from INFO commandstats
# and divides by the messages rtbench sent. Results (raw rtbench outputs, node and Redis logs,
# one MEASURE line per measurement, summary.md) go to
# ~/.cache/realtime-operator/bench/growth/<timestamp>/. `python3 bench/growth_summary.py DIR`
# prints the tables again.
#
# Hold the shared lock while measuring: `flock /tmp/rt-bench.lock bench/growth.sh`
# (make bench-growth does).
#
# Environment:
#   NODES="1 2 4 8"    node counts (at most 8; the 1-node runs give the cost of a same-node
#                      private message, used for the per-cross-node table)
#   MODES="broadcast node"   PRIVATE_ROUTING values, in this order within each N
#   ROUNDS=1           repetitions of the whole sweep (interleaved; even rounds take the modes
#                      in reverse order)
#   PEERS=200 DM_RATE=500 DM_MSGS=5000          rtbench dm
#   RECEIVERS=200 FAN_RATE=100 FAN_SECS=10      rtbench fanout (100-byte payload)
#   PORT_BASE=23200    Redis on P, nodes on P+1..P+8, their admin ports on P+21..P+28
#   RB=PATH            rtbench binary (default: built from ../shared/bench/rtbench into
#                      ~/.cache/realtime-operator/bench/target)
#   OUT=DIR            results folder
#   CARGO_TARGET_DIR   where `cargo build --release -p realtime-server` puts the binary
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED_BENCH="${SHARED_BENCH:-$ROOT/../shared/bench}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/realtime-operator/target}"
NODES="${NODES:-1 2 4 8}"
MODES="${MODES:-broadcast node}"
ROUNDS="${ROUNDS:-1}"
PEERS="${PEERS:-200}"
DM_RATE="${DM_RATE:-500}"
DM_MSGS="${DM_MSGS:-5000}"
RECEIVERS="${RECEIVERS:-200}"
FAN_RATE="${FAN_RATE:-100}"
FAN_SECS="${FAN_SECS:-10}"
PORT_BASE="${PORT_BASE:-23200}"
OUT="${OUT:-$HOME/.cache/realtime-operator/bench/growth/$(date +%Y%m%d-%H%M%S)}"
IDLE_SECS=3

die() { echo "bench-growth: $*" >&2; exit 1; }
say() { echo "bench-growth: $*" >&2; }

# ------------------------------------------------------------------ prerequisites
for n in $NODES; do
  [[ "$n" =~ ^[0-9]+$ ]] && (( n >= 1 && n <= 8 )) || die "NODES must be numbers 1..8 (got $NODES)"
done
for m in $MODES; do
  [[ "$m" == broadcast || "$m" == node ]] || die "MODES must be broadcast and/or node (got $MODES)"
done
for v in ROUNDS PEERS DM_RATE DM_MSGS RECEIVERS FAN_RATE FAN_SECS PORT_BASE; do
  [[ "${!v}" =~ ^[0-9]+$ ]] && (( ${!v} > 0 )) || die "$v must be a positive number"
done
(( PORT_BASE >= 1024 && PORT_BASE <= 65000 )) || die "PORT_BASE must be 1024..65000"
for t in redis-server redis-cli curl cargo python3 awk; do
  command -v "$t" >/dev/null || die "$t is required (scripts/deps.sh installs redis-server)"
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(( $(ulimit -n) >= 2 * (PEERS + RECEIVERS) + 512 )) || die "open-file limit $(ulimit -n) is too low"

REDIS_PORT=$PORT_BASE
PUBLIC=() ADMIN=()
for i in 1 2 3 4 5 6 7 8; do
  PUBLIC+=($((PORT_BASE + i)))
  ADMIN+=($((PORT_BASE + 20 + i)))
done

check_ports() {
  local p busy=()
  for p in "$REDIS_PORT" "${PUBLIC[@]}" "${ADMIN[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then busy+=("$p"); fi
  done
  (( ${#busy[@]} == 0 )) && return 0
  command -v ss >/dev/null && { ss -ltnp 2>/dev/null | grep -E ":($(IFS='|'; echo "${busy[*]}"))\b" >&2 || true; }
  die "port(s) ${busy[*]} on 127.0.0.1 are in use; stop those processes or pick another PORT_BASE"
}
check_ports

mkdir -p "$OUT"
say "building realtime-server (release) in $CARGO_TARGET_DIR"
(cd "$ROOT" && cargo build -q --release -p realtime-server)
BIN="$OUT/realtime-server"
# A private copy: another build in the same target folder must not swap the binary mid-run.
cp "$CARGO_TARGET_DIR/release/realtime-server" "$BIN"
if [[ -z "${RB:-}" ]]; then
  [[ -f "$SHARED_BENCH/rtbench/Cargo.toml" ]] || die "rtbench not found at $SHARED_BENCH/rtbench (set SHARED_BENCH or RB)"
  RB_TARGET="$HOME/.cache/realtime-operator/bench/target"
  say "building rtbench in $RB_TARGET"
  CARGO_TARGET_DIR="$RB_TARGET" cargo build -q --release --locked --manifest-path "$SHARED_BENCH/rtbench/Cargo.toml"
  RB="$RB_TARGET/release/rtbench"
fi
[[ -x "$RB" ]] || die "no rtbench at $RB"

{
  model="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "machine: $(nproc) CPUs ($model), Linux $(uname -r); $(redis-server --version | grep -o 'v=[^ ]*' | sed 's/v=/redis /')"
  echo "server: realtime-server $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- server || echo '+local changes')"
  echo "nodes: $NODES; modes: $MODES; rounds: $ROUNDS"
  echo "dm: $PEERS peers, $DM_MSGS messages at $DM_RATE/s; fanout: $RECEIVERS receivers, $FAN_RATE/s for $FAN_SECS s"
  echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

# ------------------------------------------------------------------ processes
PIDS=()          # every process started here, stopped by PID at exit
running() { [[ -e /proc/$1 ]] && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }
stop_all() {
  local p i
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for ((i = 0; i < 100; i++)); do
    local alive=0
    for p in "${PIDS[@]}"; do running "$p" && alive=1; done
    (( alive )) || break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

wait_http() {   # URL CODE SECS
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    [[ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$1" || true)" == "$2" ]] && return 0
    sleep 0.1
  done
  return 1
}

NODE_PIDS=() REDIS_PID=""
start_cluster() {   # N MODE DIR
  local n=$1 mode=$2 dir=$3 i
  check_ports
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --daemonize no \
    > "$dir/redis.log" 2>&1 &
  REDIS_PID=$!; PIDS+=("$REDIS_PID")
  for ((i = 0; i < 50; i++)); do rcli ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  rcli ping 2>/dev/null | grep -q PONG || die "Redis did not start (log: $dir/redis.log)"
  NODE_PIDS=()
  for ((i = 0; i < n; i++)); do
    env -u REDIS_PASSWORD -u AUTH_SECRET -u RECOVERY_WINDOW -u TRANSPORTS \
      PORT="${PUBLIC[$i]}" ADMIN_PORT="${ADMIN[$i]}" BIND=127.0.0.1 NAME="n$((i + 1))" \
      REDIS_URL="redis://127.0.0.1:$REDIS_PORT" PRIVATE_ROUTING="$mode" RUST_LOG=info \
      "$BIN" > "$dir/n$((i + 1)).log" 2>&1 &
    PIDS+=($!); NODE_PIDS+=($!)
  done
  for ((i = 0; i < n; i++)); do
    wait_http "http://127.0.0.1:${ADMIN[$i]}/readyz" 200 20 ||
      die "node n$((i + 1)) not ready after 20 s (log: $dir/n$((i + 1)).log)"
  done
}

rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# snapshot N: one line "t node_cpu_ns redis_cpu_us redis_cmds redis_publish node_redis_msgs"
snapshot() {
  local n=$1 i ns=0 msgs=0 p f v
  for p in "${NODE_PIDS[@]}"; do
    for f in /proc/"$p"/task/*/schedstat; do
      read -r v _ < "$f" 2>/dev/null && ns=$((ns + v))
    done
  done
  for ((i = 0; i < n; i++)); do
    v="$(curl -s -m 2 "http://127.0.0.1:${ADMIN[$i]}/metrics" |
      awk '$1 == "realtime_redis_messages_received_total" {print $2}')"
    msgs=$((msgs + ${v:-0}))
  done
  local info; info="$(rcli info all | tr -d '\r')"
  local cpu cmds pub
  cpu="$(awk -F: '$1 == "used_cpu_user" || $1 == "used_cpu_sys" {s += $2} END {printf "%d", s * 1e6}' <<< "$info")"
  cmds="$(awk -F: '$1 == "total_commands_processed" {print $2}' <<< "$info")"
  pub="$(awk -F'[:=,]' '$1 == "cmdstat_publish" {print $3}' <<< "$info")"
  echo "$(date +%s.%N) $ns $cpu ${cmds:-0} ${pub:-0} $msgs"
}

# run_rb FILE N ARGS...: one rtbench run against N nodes, its output appended to FILE; prints "s0|s1" snapshots
# taken just before it starts and just after it exits
run_rb() {
  local file=$1 n=$2; shift 2
  local pids a b
  pids="nodes=$(IFS=+; echo "${NODE_PIDS[*]}"),redis=$REDIS_PID"
  echo "### $(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg): $RB $* --pids $pids" >> "$file"
  a="$(snapshot "$n")"
  "$RB" "$@" --json --pids "$pids" >> "$file" 2>&1 || say "rtbench exited with $? (see $file)"
  b="$(snapshot "$n")"
  echo "$a|$b"
}

# measure LABEL N MODE KIND MSGS BASE_MSGS FILE: an idle window, a baseline rtbench run
# (BASE_ARGS: the same clients, BASE_MSGS messages) and the full run (FULL_ARGS, MSGS
# messages); the figures are full - baseline (connections, hellos, drain wait and disconnects
# cancel out), each corrected for idle; one MEASURE line in FILE
BASE_ARGS=() FULL_ARGS=()
measure() {
  local label=$1 n=$2 mode=$3 kind=$4 msgs=$5 base_msgs=$6 file=$7
  local idle0 idle1 base full
  : > "$file"
  idle0="$(snapshot "$n")"; sleep "$IDLE_SECS"; idle1="$(snapshot "$n")"
  base="$(run_rb "$file" "$n" "${BASE_ARGS[@]}")"
  full="$(run_rb "$file" "$n" "${FULL_ARGS[@]}")"
  local load; load="$(cut -d' ' -f1 /proc/loadavg)"
  echo "MEASURE {\"label\": \"$label\", \"nodes\": $n, \"mode\": \"$mode\", \"kind\": \"$kind\", \"messages\": $msgs, \"base_messages\": $base_msgs, \"load1\": $load, \"idle0\": \"$idle0\", \"idle1\": \"$idle1\", \"b0\": \"${base%|*}\", \"b1\": \"${base#*|}\", \"s0\": \"${full%|*}\", \"s1\": \"${full#*|}\"}" >> "$file"
  grep -E '^(receivers|peers):|^rate |^(same|cross)-node|^anomalies|early connection|failed x' "$file" | tail -n +2 >&2 || true
}

urls() {   # N -> ws://127.0.0.1:P1,ws://...
  local n=$1 i out=()
  for ((i = 0; i < n; i++)); do out+=("ws://127.0.0.1:${PUBLIC[$i]}"); done
  (IFS=,; echo "${out[*]}")
}

for ((r = 1; r <= ROUNDS; r++)); do
  for n in $NODES; do
    # Even rounds take the modes in reverse order, so that a drift of the machine does not
    # always favour the same mode.
    order="$MODES"
    (( r % 2 == 0 )) && order="$(echo "$MODES" | awk '{for (i = NF; i > 0; i--) printf "%s%s", $i, (i > 1 ? " " : "")}')"
    for mode in $order; do
      dir="$OUT/r$r-n$n-$mode"
      mkdir -p "$dir"
      say "[round $r, $n nodes, PRIVATE_ROUTING=$mode] starting redis and $n nodes"
      start_cluster "$n" "$mode" "$dir"
      url="$(urls "$n")"
      BASE_ARGS=(dm --url "$url" --clients "$PEERS" --rate "$DM_RATE" --messages 1
        --drain-idle-secs 1 --drain-max-secs 20)
      FULL_ARGS=(dm --url "$url" --clients "$PEERS" --rate "$DM_RATE" --messages "$DM_MSGS"
        --drain-idle-secs 1 --drain-max-secs 20)
      measure "r$r-n$n-$mode-dm" "$n" "$mode" dm "$DM_MSGS" 1 "$dir/dm.txt"
      BASE_ARGS=(fanout --url "$url" --clients "$RECEIVERS" --rate 1@1 --payload 100
        --drain-idle-secs 1 --drain-max-secs 30)
      FULL_ARGS=(fanout --url "$url" --clients "$RECEIVERS" --rate "$FAN_RATE@$FAN_SECS" --payload 100
        --drain-idle-secs 1 --drain-max-secs 30)
      measure "r$r-n$n-$mode-fanout" "$n" "$mode" fanout "$((FAN_RATE * FAN_SECS))" 1 "$dir/fanout.txt"
      for ((i = 0; i < n; i++)); do
        curl -s -m 2 "http://127.0.0.1:${ADMIN[$i]}/metrics" | grep -E '^realtime_send_routes_total' |
          sed "s/^/n$((i + 1)) /" >> "$dir/routes.txt" || true
      done
      stop_all
    done
  done
done

echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/machine.txt"
python3 "$ROOT/bench/growth_summary.py" "$OUT" | tee "$OUT/summary.md"
say "results in $OUT"
