#!/usr/bin/env bash
# `make bench-drain`: reconnects per second seen by the other nodes while a node with 1000
# clients drains, before (DRAIN_CLOSE_RATE=0: every transport closed at once) and after (the
# default rate), in one run.
#
# Topology, loopback only: one redis-server, three release realtime-server nodes A, B, C with
# the Redis adapter, nginx with A as the only primary and B, C as backups (so every client
# lands on A, and their reconnects go to B and C once A stops accepting). CLIENTS official
# socket.io-client sockets (websocket transport, bench/drain/drain.js) connect through nginx,
# then A gets SIGTERM and each client's reconnect is timed. Everything is started afresh for
# each of the two runs. Results go to ~/.cache/realtime-operator/bench/drain/<timestamp>/
# (summary.md, one JSON per run, every process's log).
#
# Environment:
#   CLIENTS=N        clients (default 1000)
#   AFTER_RATE=R     DRAIN_CLOSE_RATE of the "after" run (default: unset, the server's default)
#   GRACE=Ns         SHUTDOWN_GRACE of the nodes, in seconds (default 20s, the operator's)
#   PORT_BASE=P      ports P+1..P+3 (nodes), P+11..P+13 (their admin ports), P+20 (nginx),
#                    P+30 (Redis); default 23100. The script stops if one is taken.
#   OUT=DIR          results folder
#   CARGO_TARGET_DIR where `cargo build --release -p realtime-server` puts the binary
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/realtime-operator/target}"
CLIENTS="${CLIENTS:-1000}"
AFTER_RATE="${AFTER_RATE:-}"
GRACE="${GRACE:-20s}"
PORT_BASE="${PORT_BASE:-23100}"
OUT="${OUT:-$HOME/.cache/realtime-operator/bench/drain/$(date +%Y%m%d-%H%M%S)}"
NAMES=(A B C)
PUBLIC=($((PORT_BASE + 1)) $((PORT_BASE + 2)) $((PORT_BASE + 3)))
ADMIN=($((PORT_BASE + 11)) $((PORT_BASE + 12)) $((PORT_BASE + 13)))
NGINX_PORT=$((PORT_BASE + 20))
REDIS_PORT=$((PORT_BASE + 30))
CLIENT_MODULES="$ROOT/e2e/client/node_modules"

die() { echo "bench-drain: $*" >&2; exit 1; }
say() { echo "bench-drain: $*" >&2; }

# ------------------------------------------------------------------ prerequisites
if ! [[ "$CLIENTS" =~ ^[0-9]+$ ]] || (( CLIENTS < 1 || CLIENTS > 20000 )); then die "CLIENTS must be 1..20000"; fi
[[ -z "$AFTER_RATE" || "$AFTER_RATE" =~ ^[0-9]+$ ]] || die "AFTER_RATE must be a number"
(( PORT_BASE >= 1024 && PORT_BASE <= 65000 )) || die "PORT_BASE must be 1024..65000"
if ! [[ "$GRACE" =~ ^[0-9]+s$ ]] || (( ${GRACE%s} < 1 || ${GRACE%s} > 600 )); then die "GRACE must be 1s..600s (got $GRACE)"; fi
export PATH="$PATH:/usr/sbin:/usr/local/sbin"
missing=()
for t in redis-server redis-cli nginx node curl cargo; do
  command -v "$t" >/dev/null || missing+=("$t")
done
(( ${#missing[@]} == 0 )) || die "missing: ${missing[*]} (scripts/deps.sh installs redis-server and nginx; Node.js 20+ and Rust are needed too)"
if [[ ! -f "$CLIENT_MODULES/socket.io-client/package.json" ]]; then
  command -v npm >/dev/null || die "socket.io-client is not installed in e2e/client and npm is missing"
  say "npm ci in e2e/client (socket.io-client, pinned by its package-lock.json)"
  (cd "$ROOT/e2e/client" && npm ci --no-audit --no-fund --loglevel=error)
fi

# Descriptors: CLIENTS in the client process, 2 per client in nginx, 1 per client in a node.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
need_fds=$((2 * CLIENTS + 512))
(( $(ulimit -n) >= need_fds )) || die "open-file limit $(ulimit -n) is too low for $CLIENTS clients (need >= $need_fds; raise the hard limit)"

ports_busy() {
  local p busy=()
  for p in "${PUBLIC[@]}" "${ADMIN[@]}" "$NGINX_PORT" "$REDIS_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then busy+=("$p"); fi
  done
  echo "${busy[*]}"
}
check_ports() {
  local busy; busy="$(ports_busy)"
  [[ -z "$busy" ]] && return 0
  if command -v ss >/dev/null; then
    ss -ltnp 2>/dev/null | grep -E ":($(echo "$busy" | tr ' ' '|'))\b" >&2 || true
  fi
  die "port(s) $busy on 127.0.0.1 are in use; stop those processes or pick another PORT_BASE"
}
check_ports

mkdir -p "$OUT"
say "building realtime-server (release) in $CARGO_TARGET_DIR"
(cd "$ROOT" && cargo build -q --release -p realtime-server --target-dir "$CARGO_TARGET_DIR")
BIN="$OUT/realtime-server"
# A private copy: another build in the same target folder must not swap the binary mid-run.
cp "$CARGO_TARGET_DIR/release/realtime-server" "$BIN"

{
  model="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "machine: $(nproc) CPUs ($model), Linux $(uname -r); node $(node --version)," \
    "$(redis-server --version | grep -o 'v=[^ ]*' | sed 's/v=/redis /'), $(nginx -v 2>&1 | sed 's|.*nginx/|nginx |')"
  echo "server: realtime-server $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- server || echo '+local changes')"
  echo "clients: $CLIENTS; SHUTDOWN_GRACE=$GRACE; open-file limit $(ulimit -n)"
  echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

# ------------------------------------------------------------------ processes
PIDS=()          # every process started here, stopped by PID at exit
NGINX_DIR=""
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
  PIDS=()
  [[ -n "$NGINX_DIR" ]] && rm -rf "$NGINX_DIR"
  NGINX_DIR=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# running PID: alive and not a zombie
running() { [[ -e /proc/$1 ]] && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }

# stop PID SECS: SIGTERM, then SIGKILL after SECS; reaps it
stop() {
  local pid=$1 secs=$2 i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do running "$pid" || break; sleep 0.1; done
  running "$pid" && { say "PID $pid still running after ${secs}s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
  wait "$pid" 2>/dev/null || true
}

# wait_http URL CODE SECS
wait_http() {
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    [[ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$1" || true)" == "$2" ]] && return 0
    sleep 0.1
  done
  return 1
}

# one_run NAME RATE TITLE: a fresh Redis, A, B, C and nginx; CLIENTS clients; SIGTERM to A
one_run() {
  local label=$1 rate=$2 title=$3 dir="$OUT/$1" i a_pid=""
  mkdir -p "$dir"
  check_ports
  say "[$label] starting redis, A, B, C and nginx (A: DRAIN_CLOSE_RATE=${rate:-default})"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --daemonize no \
    > "$dir/redis.log" 2>&1 &
  PIDS+=($!); local redis_pid=$!
  for i in $(seq 1 50); do redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG || die "[$label] Redis did not start (log: $dir/redis.log)"

  local node_pids=()
  for i in 0 1 2; do
    local envs=(PORT="${PUBLIC[$i]}" ADMIN_PORT="${ADMIN[$i]}" BIND=127.0.0.1 NAME="${NAMES[$i]}"
      REDIS_URL="redis://127.0.0.1:$REDIS_PORT" SHUTDOWN_GRACE="$GRACE" RUST_LOG=info)
    [[ -n "$rate" ]] && envs+=(DRAIN_CLOSE_RATE="$rate")
    env -u DRAIN_CLOSE_RATE -u REDIS_PASSWORD -u AUTH_SECRET -u TRANSPORTS "${envs[@]}" "$BIN" \
      > "$dir/${NAMES[$i]}.log" 2>&1 &
    PIDS+=($!); node_pids+=($!)
  done
  a_pid=${node_pids[0]}
  for i in 0 1 2; do
    wait_http "http://127.0.0.1:${ADMIN[$i]}/readyz" 200 15 ||
      die "[$label] node ${NAMES[$i]} not ready after 15 s (log: $dir/${NAMES[$i]}.log)"
  done

  # nginx: a private prefix in /tmp (its workers may run as another user and must enter it)
  NGINX_DIR="$(mktemp -d /tmp/bench-drain-nginx.XXXXXX)"
  chmod 755 "$NGINX_DIR"
  cat > "$NGINX_DIR/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $((4 * CLIENTS + 1024));
pid nginx.pid;
error_log stderr warn;
events { worker_connections $((2 * CLIENTS + 512)); }
http {
  access_log off;
  client_body_temp_path client_body;
  proxy_temp_path proxy;
  fastcgi_temp_path fastcgi;
  uwsgi_temp_path uwsgi;
  scgi_temp_path scgi;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  # A takes every client while it accepts; once it refuses, B and C (round robin) take them.
  upstream backend {
    server 127.0.0.1:${PUBLIC[0]};
    server 127.0.0.1:${PUBLIC[1]} backup;
    server 127.0.0.1:${PUBLIC[2]} backup;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header Host \$host;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }
  }
}
EOF
  cp "$NGINX_DIR/nginx.conf" "$dir/nginx.conf"
  nginx -p "$NGINX_DIR/" -e stderr -c "$NGINX_DIR/nginx.conf" -g 'daemon off;' > "$dir/nginx.log" 2>&1 &
  PIDS+=($!); local nginx_pid=$!
  wait_http "http://127.0.0.1:$NGINX_PORT/socket.io/?EIO=4&transport=polling" 200 5 ||
    die "[$label] nginx does not reach A (log: $dir/nginx.log)"

  say "[$label] $CLIENTS clients through nginx, then SIGTERM to A (PID $a_pid)"
  NODE_PATH="$CLIENT_MODULES" URL="http://127.0.0.1:$NGINX_PORT" A_PID="$a_pid" CLIENTS="$CLIENTS" \
    LABEL="$title" OUT="$dir/result.json" PRIMARY=A TIMEOUT_S=60 \
    timeout 180 node "$ROOT/bench/drain/drain.js" run 2> >(tee "$dir/clients.log" >&2) ||
    die "[$label] the clients failed (log: $dir/clients.log)"

  # A exits within its grace period; B and C count the connections they took.
  local grace_s=$(( ${GRACE%s} + 5 ))
  for ((i = 0; i < grace_s * 10; i++)); do running "$a_pid" || break; sleep 0.1; done
  running "$a_pid" && say "[$label] A still running ${grace_s}s after SIGTERM"
  for i in 1 2; do
    echo "${NAMES[$i]}: $(curl -s -m 2 "http://127.0.0.1:${ADMIN[$i]}/metrics" | grep -E '^realtime_connections_total' || echo 'no metrics')"
  done > "$dir/other-nodes.txt"
  grep -E 'closing transports|transports closed|shutdown complete' "$dir/A.log" | sed 's/\x1b\[[0-9;]*m//g' > "$dir/a-drain.txt" || true
  cat "$dir/other-nodes.txt" "$dir/a-drain.txt" >&2

  stop "$nginx_pid" 5
  for i in 0 1 2; do stop "${node_pids[$i]}" 25; done
  stop "$redis_pid" 5
  PIDS=()
  rm -rf "$NGINX_DIR"; NGINX_DIR=""
}

t0=$SECONDS
one_run before 0 "before: DRAIN_CLOSE_RATE=0"
one_run after "$AFTER_RATE" "after: DRAIN_CLOSE_RATE=${AFTER_RATE:-default (100)}"
echo "duration: $((SECONDS - t0)) s; load at end $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/machine.txt"

{
  echo "# Drain benchmark: $CLIENTS clients on node A, SIGTERM, reconnects to B and C"
  echo
  sed 's/^/    /' "$OUT/machine.txt"
  echo
  node "$ROOT/bench/drain/drain.js" table "$OUT/before/result.json" "$OUT/after/result.json"
  echo
  for r in before after; do
    echo "$r, node A's log:"
    sed 's/^/    /' "$OUT/$r/a-drain.txt"
    echo "$r, connections counted by the other nodes:"
    sed 's/^/    /' "$OUT/$r/other-nodes.txt"
  done
} | tee "$OUT/summary.md"
say "results in $OUT"
