#!/usr/bin/env bash
# Installs what the tests need and the project does not build itself:
#   redis-server and nginx (Debian packages), socket.io-client (npm, pinned by e2e/client's
#   package-lock.json), and the local control plane's binaries (e2e/tools/install.sh, cached).
# Safe to run again: each step is skipped when its part is already there.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
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
