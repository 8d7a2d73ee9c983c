#!/usr/bin/env bash
# Installs what the tests need and the project does not build itself:
#   Debian packages: redis-server, redis-sentinel and nginx (tier 1); containerd, runc, CNI plugins, iptables,
#   conntrack, iproute2, mmdebstrap and jq (the real node and its locally built images);
#   socket.io-client (npm, pinned by e2e/client's package-lock.json);
#   the control plane's and the node's binaries (e2e/tools/install.sh, built from Go modules,
#   cached under ~/.cache/realtime-operator).
# Safe to run again: each step is skipped when its part is already there.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

missing=()
have() { command -v "$1" >/dev/null || [[ -x "/usr/sbin/$1" || -x "/sbin/$1" ]]; }
have redis-server || missing+=(redis-server)
have redis-sentinel || missing+=(redis-sentinel)
have nginx || missing+=(nginx)
have containerd || missing+=(containerd)
have runc || missing+=(runc)
[[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
have iptables || missing+=(iptables)
have conntrack || missing+=(conntrack)
have ip || missing+=(iproute2)
have mmdebstrap || missing+=(mmdebstrap)
have jq || missing+=(jq)
# gcc with a static libc builds the pause binary (e2e/tools/install.sh).
have gcc || missing+=(gcc)
[[ -n "$(gcc -print-file-name=libc.a 2>/dev/null | grep /)" ]] || missing+=(libc6-dev)
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "deps: installing ${missing[*]} (Debian packages)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "deps: please install ${missing[*]} (e.g. sudo apt-get install ${missing[*]})" >&2
    [[ "${CI:-}" == true ]] && exit 1
  fi
fi

if [[ -f "$ROOT/e2e/client/package-lock.json" ]]; then
  if [[ ! -d "$ROOT/e2e/client/node_modules/socket.io-client" ]]; then
    command -v npm >/dev/null || { echo "deps: npm (Node.js 18+) is required" >&2; exit 1; }
    (cd "$ROOT/e2e/client" && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi

"$ROOT/e2e/tools/install.sh" >/dev/null
