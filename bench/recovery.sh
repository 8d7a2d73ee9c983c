#!/usr/bin/env bash
# `make bench-recovery`: what connection state recovery costs (issue 12), for realtime-server and
# for the Node.js reference with @socket.io/redis-streams-adapter (socket.io's own
# `connectionStateRecovery`), in one run, on 2 nodes + one Redis, loopback only:
#
#   state   (a) Redis memory per recoverable session (connected, and after a recoverable
#               disconnect) with 1000 and 5000 clients, and per logged packet;
#           (b) restores: clients that missed k packets reconnect and recover; server and Redis
#               CPU per restore and per replayed packet, restore latency, recovered share, loss.
#           Clients: the official socket.io-client (bench/recovery/recovery.js).
#   fanout  (c) rtbench fanout, 1000 receivers split over both nodes (direct, no nginx): delivered
#               msg/s at saturation and CPU per delivered message at 50/s, recovery off and on,
#               for both systems (reference off = @socket.io/redis-adapter, on = the streams
#               adapter), interleaved in 2 rounds (ours off, ours on, ref off, ref on, then the
#               reverse order).
#
# Every section starts each system on a fresh Redis and fresh nodes. The script takes the shared
# benchmark lock (flock $LOCK) for each section and releases it in between, so each hold stays
# well under 15 minutes; set NO_LOCK=1 only when the caller already holds it.
# Results: ~/.cache/realtime-operator/bench/recovery-<timestamp>/ (summary.md, one file per
# measurement, every process's log); the summary is bench/recovery_summary.py.
#
# Environment:
#   SECTIONS="state fanout"   which parts to run
#   QUICK=1                   small numbers (debug run, not for reporting)
#   PORT_BASE=P               nodes P+1, P+2, their admin ports P+11, P+12, Redis P+30 (default 24600)
#   WINDOW=2m                 RECOVERY_WINDOW of ours and maxDisconnectionDuration of the reference
#   OUT=DIR, LOCK=FILE (default /tmp/rt-bench.lock), SHARED_BENCH=DIR (the kit), BENCH_CACHE=DIR
#   CARGO_TARGET_DIR          where `cargo build --release -p realtime-server` puts the binary
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED_BENCH="${SHARED_BENCH:-$ROOT/../shared/bench}"
BENCH_CACHE="${BENCH_CACHE:-$HOME/.cache/realtime-operator/bench}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/realtime-operator/target}"
SECTIONS="${SECTIONS:-state fanout}"
QUICK="${QUICK:-0}"
PORT_BASE="${PORT_BASE:-24600}"
WINDOW="${WINDOW:-2m}"
LOCK="${LOCK:-/tmp/rt-bench.lock}"
NO_LOCK="${NO_LOCK:-0}"
SUFFIX=""; [[ $QUICK == 1 ]] && SUFFIX=-quick
OUT="${OUT:-$BENCH_CACHE/recovery-$(date +%Y%m%d-%H%M%S)$SUFFIX}"
ANCHOR="$BENCH_CACHE/anchor-node-recovery"   # own copy: bench/run.sh may refresh its own meanwhile
RB_TARGET="$CARGO_TARGET_DIR"
RB="$RB_TARGET/release/rtbench"
CLIENT_MODULES="$ROOT/e2e/client/node_modules"
N1=$((PORT_BASE + 1)); N2=$((PORT_BASE + 2))
ADMIN1=$((PORT_BASE + 11)); ADMIN2=$((PORT_BASE + 12))
REDIS_PORT=$((PORT_BASE + 30))
PORTS=("$N1" "$N2" "$ADMIN1" "$ADMIN2" "$REDIS_PORT")

die() { echo "bench-recovery: $*" >&2; exit 1; }
say() { echo "bench-recovery: $*" >&2; }

# ------------------------------------------------------------------ prerequisites
(( PORT_BASE >= 1024 && PORT_BASE <= 65000 )) || die "PORT_BASE must be 1024..65000"
[[ "$WINDOW" =~ ^[0-9]+[sm]$ ]] || die "WINDOW must be like 90s or 2m"
for s in $SECTIONS; do [[ $s == state || $s == fanout ]] || die "unknown section $s (state, fanout)"; done
[[ -d "$SHARED_BENCH/anchor-node" && -f "$SHARED_BENCH/rtbench/Cargo.toml" ]] ||
  die "benchmark kit not found at $SHARED_BENCH (set SHARED_BENCH)"
SHARED_BENCH="$(cd "$SHARED_BENCH" && pwd)"
export PATH="$PATH:/usr/sbin:/usr/local/sbin"
missing=()
for t in redis-server redis-cli node npm curl cargo python3 flock; do command -v "$t" >/dev/null || missing+=("$t"); done
(( ${#missing[@]} == 0 )) || die "missing: ${missing[*]} (scripts/deps.sh installs redis-server)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(( $(ulimit -n) >= 12000 )) || die "open-file limit $(ulimit -n) is too low for 5000 clients (need >= 12000)"

if [[ ! -f "$CLIENT_MODULES/socket.io-client/package.json" ]]; then
  say "npm ci in e2e/client (socket.io-client, pinned by its package-lock.json)"
  (cd "$ROOT/e2e/client" && npm ci --no-audit --no-fund --loglevel=error)
fi
# The reference, from the read-only kit: its index.js runs @socket.io/redis-streams-adapter with
# connectionStateRecovery when ADAPTER=streams (maxDisconnectionDuration is set below).
mkdir -p "$ANCHOR" "$OUT"
cp "$SHARED_BENCH"/anchor-node/{index.js,package.json,package-lock.json} "$ANCHOR/"
chmod u+w "$ANCHOR"/*
# the kit's window is 2 minutes; WINDOW applies to both systems
win_ms=$(( ${WINDOW%[sm]} * $([[ $WINDOW == *m ]] && echo 60000 || echo 1000) ))
sed -i "s/maxDisconnectionDuration: 2 \* 60 \* 1000/maxDisconnectionDuration: $win_ms/" "$ANCHOR/index.js"
grep -q "maxDisconnectionDuration: $win_ms," "$ANCHOR/index.js" || die "could not set the reference's window in $ANCHOR/index.js"
lock_sum="$(sha256sum "$ANCHOR/package-lock.json" | cut -d' ' -f1)"
if [[ ! -d "$ANCHOR/node_modules/@socket.io/redis-streams-adapter" || "$(cat "$ANCHOR/.lock-sum" 2>/dev/null)" != "$lock_sum" ]]; then
  say "npm ci in $ANCHOR"
  (cd "$ANCHOR" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" > "$ANCHOR/.lock-sum"
fi

say "building realtime-server and rtbench (release) in $CARGO_TARGET_DIR"
(cd "$ROOT" && cargo build -q --release -p realtime-server)
if [[ " $SECTIONS " == *" fanout "* ]]; then
  cargo build -q --release --locked --manifest-path "$SHARED_BENCH/rtbench/Cargo.toml"
  [[ -x "$RB" ]] || die "no rtbench at $RB"
fi
# A private copy: another build in the same target folder must not swap the binary mid-run.
cp "$CARGO_TARGET_DIR/release/realtime-server" "$OUT/realtime-server"
BIN="$OUT/realtime-server"

{
  model="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "machine: $(nproc) CPUs ($model), Linux $(uname -r); node $(node --version)," \
    "$(redis-server --version | grep -o 'v=[^ ]*' | sed 's/v=/redis /')," \
    "socket.io $(node -p "require('$ANCHOR/node_modules/socket.io/package.json').version")," \
    "redis-streams-adapter $(node -p "require('$ANCHOR/node_modules/@socket.io/redis-streams-adapter/package.json').version")," \
    "socket.io-client $(node -p "require('$CLIENT_MODULES/socket.io-client/package.json').version")"
  echo "server: realtime-server $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- server || echo '+local changes')"
  echo "window: $WINDOW (RECOVERY_WINDOW / maxDisconnectionDuration); sections: $SECTIONS; mode: $([[ $QUICK == 1 ]] && echo 'QUICK (debug run, not for reporting)' || echo full)"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

if [[ $QUICK == 1 ]]; then
  SESSION_SIZES=(200); PACKETS=500; REPLAY_CLIENTS=50; KS=0,50,0,50; RATE=250
  RECV=200; SWEEP=20@2,50@3; OVER=150@2,400@2; DRAIN_MAX=15; ROUNDS=1
else
  SESSION_SIZES=(1000 5000); PACKETS=5000; REPLAY_CLIENTS=500; KS=0,200,0,200,0,200; RATE=250
  RECV=1000; SWEEP=20@3,50@10; OVER=150@3,400@5,2000@1; DRAIN_MAX=40; ROUNDS=2
fi

# ------------------------------------------------------------------ processes
PIDS=()          # the current cluster's processes, stopped by PID
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    (( alive )) || break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

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
  command -v ss >/dev/null && { ss -ltnp 2>/dev/null | grep -E ":($(echo "$busy" | tr ' ' '|'))\b" >&2 || true; }
  die "port(s) $busy on 127.0.0.1 are in use; stop those processes or pick another PORT_BASE"
}

wait_port() { local i; for ((i = 0; i < 150; i++)); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
wait_ready() { local i; for ((i = 0; i < 150; i++)); do [[ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$1/readyz" || true)" == 200 ]] && return 0; sleep 0.1; done; return 1; }

# start_cluster SYS DIR: fresh Redis + 2 nodes of SYS (ours-off, ours-on, ref-off, ref-on); sets P
# ("n1=PID,n2=PID,redis=PID", rtbench's --pids format), STREAM (the log's Redis key) and
# SESSIONS (the session keys' pattern).
start_cluster() {
  local sys=$1 dir=$2 i port admin
  mkdir -p "$dir"
  check_ports
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --daemonize no \
    > "$dir/redis.log" 2>&1 9>&- &
  PIDS+=($!); local redis_pid=$!
  for i in $(seq 1 50); do redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG || die "Redis did not start (log: $dir/redis.log)"
  local npids=()
  for i in 1 2; do
    port=$((PORT_BASE + i)); admin=$((PORT_BASE + 10 + i))
    case $sys in
      ours-*)
        local envs=(PORT="$port" ADMIN_PORT="$admin" BIND=127.0.0.1 NAME="n$i" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" RUST_LOG=info)
        [[ $sys == ours-on ]] && envs+=(RECOVERY_WINDOW="$WINDOW")
        env -u RECOVERY_WINDOW -u RECOVERY_MAX_PACKETS -u REDIS_PASSWORD -u AUTH_SECRET -u TRANSPORTS \
          "${envs[@]}" "$BIN" > "$dir/n$i.log" 2>&1 9>&- &
        ;;
      ref-*)
        local adapter=classic; [[ $sys == ref-on ]] && adapter=streams
        (cd "$ANCHOR" && exec env PORT="$port" NAME="n$i" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" ADAPTER="$adapter" \
          node index.js > "$dir/n$i.log" 2>&1 9>&-) &
        ;;
    esac
    PIDS+=($!); npids+=($!)
  done
  for i in 1 2; do
    if [[ $sys == ours-* ]]; then
      wait_ready $((PORT_BASE + 10 + i)) || die "node n$i ($sys) not ready (log: $dir/n$i.log)"
    else
      wait_port $((PORT_BASE + i)) || die "node n$i ($sys) does not listen (log: $dir/n$i.log)"
    fi
  done
  sleep 1
  P="n1=${npids[0]},n2=${npids[1]},redis=$redis_pid"
  echo "$sys: $P" >> "$OUT/pids.txt"
  STREAM='realtime:{csr}:log'; SESSIONS='realtime:{csr}:s:*'
  [[ $sys == ref-* ]] && { STREAM=socket.io; SESSIONS='sio:session:*'; }
  URLS="http://127.0.0.1:$N1,http://127.0.0.1:$N2"
}

# Redis' per-command counts and CPU over the cluster's life (what each system asks of Redis)
redis_stats() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" INFO commandstats > "$1/redis-commandstats.txt" 2>&1 || true; }

lock() {
  (( NO_LOCK )) && return 0
  say "waiting for the benchmark lock $LOCK"
  exec 9>"$LOCK"
  flock 9
  say "lock taken; 1-min load $(cut -d' ' -f1 /proc/loadavg)"
}
unlock() { (( NO_LOCK )) && return 0; flock -u 9; exec 9>&-; }

load() { cut -d' ' -f1-3 /proc/loadavg; }

# ------------------------------------------------------------------ (a) + (b)
client() {   # MODE OUTFILE LABEL [ENV...]: one recovery.js run
  local mode=$1 file=$2 label=$3; shift 3
  env NODE_PATH="$CLIENT_MODULES" CLK_TCK="$(getconf CLK_TCK)" URLS="$URLS" REDIS_PORT="$REDIS_PORT" \
    OUT="$file" LABEL="$label" "$@" timeout 600 node "$ROOT/bench/recovery/recovery.js" "$mode" 9>&- \
    2> >(tee "${file%.json}.log" >&2) || die "$label failed (log: ${file%.json}.log)"
}

section_state() {
  local n sys
  lock
  echo "state: load at start $(load)" >> "$OUT/machine.txt"
  mkdir -p "$OUT/state"
  for n in "${SESSION_SIZES[@]}"; do
    for sys in ours-on ref-on; do
      say "[state] $sys: $n sessions"
      start_cluster "$sys" "$OUT/state/sessions-$sys-$n"
      client sessions "$OUT/state/sessions-$sys-$n.json" "sessions $sys $n" \
        CLIENTS="$n" STREAM_KEY="$STREAM" SESSION_PATTERN="$SESSIONS" PACKETS="$PACKETS"
      redis_stats "$OUT/state/sessions-$sys-$n"
      cleanup
    done
  done
  for sys in ours-on ref-on; do
    say "[state] $sys: $REPLAY_CLIENTS clients miss k packets (k: $KS) and recover"
    start_cluster "$sys" "$OUT/state/replay-$sys"
    client replay "$OUT/state/replay-$sys.json" "replay $sys" \
      CLIENTS="$REPLAY_CLIENTS" KS="$KS" RATE="$RATE" PIDS="$P"
    [[ $sys == ours-on ]] && for i in 1 2; do
      curl -s -m 2 "http://127.0.0.1:$((PORT_BASE + 10 + i))/metrics" | grep -E '^realtime_recovery_' | sed "s/^/n$i /"
    done > "$OUT/state/replay-$sys-metrics.txt"
    redis_stats "$OUT/state/replay-$sys"
    cleanup
  done
  echo "state: load at end $(load)" >> "$OUT/machine.txt"
  unlock
}

# ------------------------------------------------------------------ (c)
# cpu_ticks "n1=PID,...": CPUTICKS {json} with utime+stime per name (bench/run.sh's format)
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

rtb() {   # NAME RTBENCH-ARGS...: one rtbench run, output in $OUT/fanout/NAME.txt
  local name=$1; shift
  local outf="$OUT/fanout/$name.txt"
  echo "### $name ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg)): $*" > "$outf"
  say "[fanout] $name"
  cpu_ticks "$P" >> "$outf"
  "$RB" "$@" >> "$outf" 2>&1 9>&- || say "$name: rtbench exited with $? (see $outf)"
  cpu_ticks "$P" >> "$outf"
  grep -E '^receivers:|^rate |^ *latency|^anomalies|early connection|failed x' "$outf" >&2 || true
}

section_fanout() {
  local r sys order
  lock
  echo "fanout: load at start $(load)" >> "$OUT/machine.txt"
  mkdir -p "$OUT/fanout"
  local direct=(--url "ws://127.0.0.1:$N1,ws://127.0.0.1:$N2" --clients "$RECV" --payload 100 --drain-idle-secs 5 --json)
  for ((r = 1; r <= ROUNDS; r++)); do
    order="ours-off ours-on ref-off ref-on"
    (( r % 2 == 0 )) && order="ref-on ref-off ours-on ours-off"
    for sys in $order; do
      start_cluster "$sys" "$OUT/fanout/run-r$r-$sys"
      rtb "r$r-$sys-sweep" fanout "${direct[@]}" --rate "$SWEEP" --drain-max-secs 20 --pids "$P"
      rtb "r$r-$sys-over" --threads 2 fanout "${direct[@]}" --rate "$OVER" --drain-max-secs "$DRAIN_MAX" --pids "$P"
      redis_stats "$OUT/fanout/run-r$r-$sys"
      cleanup
    done
  done
  echo "fanout: load at end $(load)" >> "$OUT/machine.txt"
  unlock
}

t0=$SECONDS
for s in $SECTIONS; do "section_$s"; done
echo "duration: $((SECONDS - t0)) s" >> "$OUT/machine.txt"
python3 "$ROOT/bench/recovery_summary.py" "$OUT" | tee "$OUT/summary.md"
say "results in $OUT"
