#!/usr/bin/env bash
# A local 3-node cluster in the foreground, the classic socket.io topology without Docker:
# redis-server + 3 realtime-server nodes + nginx (ip_hash) on 127.0.0.1, clients on
# http://127.0.0.1:8080, where the nodes serve the demo page (DEMO_PAGE=true; their probes and
# metrics are on their admin ports, printed at start). Ctrl-C stops everything it started.
#
#   scripts/local-cluster.sh                         # defaults
#   scripts/local-cluster.sh --nodes 2 --port 9000 --affinity cookie -e AUTH_SECRET=s3cret
#   PROFILE=release scripts/local-cluster.sh         # optimised build
#   scripts/local-cluster.sh --help                  # every option
# Needs redis-server and nginx (scripts/deps.sh installs them).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/realtime-operator/target}"
PROFILE="${PROFILE:-dev}"
case "$PROFILE" in dev) OUT=debug ;; *) OUT="$PROFILE" ;; esac

(cd "$ROOT" && cargo build -q --profile "$PROFILE" -p realtime-server --bin realtime-server \
  -p realtime-e2e --bin local-cluster)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$CARGO_TARGET_DIR/$OUT/local-cluster" --server-bin "$CARGO_TARGET_DIR/$OUT/realtime-server" "$@"
