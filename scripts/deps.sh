#!/usr/bin/env bash
# Installs what the tests need and the project does not build itself:
#   Debian packages: redis-server, redis-tools (redis-cli), redis-sentinel and nginx (tier 1); containerd, runc, CNI plugins, iptables,
#   conntrack, iproute2, mmdebstrap and jq (the real node and its locally built images);
#   socket.io-client (npm, pinned by e2e/client's package-lock.json);
#   checkov (PyPI, CHECKOV_VERSION in e2e/tools/versions.env) in its own Python venv, cached
#   under ~/.cache/realtime-operator/tools/checkov-<version> (e2e/tests/security.rs runs it);
#   the control plane's and the node's binaries (e2e/tools/install.sh, built from Go modules,
#   cached under ~/.cache/realtime-operator).
# Safe to run again: each step is skipped when its part is already there.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

missing=()
have() { command -v "$1" >/dev/null || [[ -x "/usr/sbin/$1" || -x "/sbin/$1" ]]; }
have redis-server || missing+=(redis-server)
have redis-sentinel || missing+=(redis-sentinel)
# redis-cli joins the Redis Cluster of e2e/tests/redis_cluster.rs (redis-server depends on it).
have redis-cli || missing+=(redis-tools)
have nginx || missing+=(nginx)
have containerd || missing+=(containerd)
have runc || missing+=(runc)
[[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
have iptables || missing+=(iptables)
have conntrack || missing+=(conntrack)
have ip || missing+=(iproute2)
have mmdebstrap || missing+=(mmdebstrap)
have jq || missing+=(jq)
# make lint checks the shell scripts.
have shellcheck || missing+=(shellcheck)
# gcc with a static libc builds the pause binary (e2e/tools/install.sh).
have gcc || missing+=(gcc)
[[ -n "$(gcc -print-file-name=libc.a 2>/dev/null | grep /)" ]] || missing+=(libc6-dev)
# Python 3 with venv and ensurepip (Debian splits them into python3-venv) for checkov.
have python3 || missing+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
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

# The Node.js folders the tests use, each pinned by its package-lock.json: the official
# socket.io-client (e2e/client) and the example chat server run through spec.app.
for pkg in e2e/client:socket.io-client examples/node-chat:socket.io; do
  dir="$ROOT/${pkg%%:*}" module="${pkg#*:}"
  if [[ -f "$dir/package-lock.json" && ! -d "$dir/node_modules/$module" ]]; then
    command -v npm >/dev/null || { echo "deps: npm (Node.js 18+) is required" >&2; exit 1; }
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done

# checkov in a venv of its own, at the pinned version. The venv is made in its final folder
# (a moved venv breaks its scripts' paths); the .installed marker is written last, so a run
# that died half-way is redone from scratch, as is a venv whose Python has gone away. One
# install at a time (flock), like install.sh.
CHECKOV_VERSION=$(sed -n 's/^CHECKOV_VERSION=//p' "$ROOT/e2e/tools/versions.env")
CHECKOV_DIR="${RT_TOOLS_DIR:-$HOME/.cache/realtime-operator/tools}/checkov-$CHECKOV_VERSION"
checkov_ok() { [[ -f "$CHECKOV_DIR/.installed" ]] && "$CHECKOV_DIR/bin/python" -c '' 2>/dev/null; }
if ! checkov_ok; then
  mkdir -p "$(dirname "$CHECKOV_DIR")"
  (
    flock 9
    if ! checkov_ok; then
      echo "deps: installing checkov $CHECKOV_VERSION (PyPI) into $CHECKOV_DIR"
      rm -rf "$CHECKOV_DIR"
      python3 -m venv "$CHECKOV_DIR"
      "$CHECKOV_DIR/bin/pip" install --quiet --disable-pip-version-check --no-input \
        "checkov==$CHECKOV_VERSION"
      [[ "$(CKV_SKIP_PACKAGE_UPDATE_CHECK=true "$CHECKOV_DIR/bin/checkov" --version)" == "$CHECKOV_VERSION" ]] ||
        { echo "deps: $CHECKOV_DIR/bin/checkov is not version $CHECKOV_VERSION" >&2; exit 1; }
      touch "$CHECKOV_DIR/.installed"
    fi
  ) 9>"$(dirname "$CHECKOV_DIR")/checkov.lock"
fi

"$ROOT/e2e/tools/install.sh" >/dev/null
