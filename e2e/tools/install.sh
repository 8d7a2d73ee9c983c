#!/usr/bin/env bash
# Builds the test tools from Go modules (versions in versions.env) and caches them by version
# outside the clone: $RT_TOOLS_DIR (default ~/.cache/realtime-operator/tools).
# control-plane: k8s-<v>-etcd-<v>-helm-<v>/bin
#   kube-apiserver, kube-controller-manager, kubectl   k8s.io/kubernetes (wrapper module go/k8s)
#   etcd                                                go.etcd.io/etcd/server/v3 (go/etcd)
#   helm                                                helm.sh/helm (go/helm)
# node (a real single-node cluster's extra parts): node-k8s-<v>-coredns-<v>-traefik-<v>/bin
#   kubelet, kube-proxy, kube-scheduler                 k8s.io/kubernetes (go/k8s)
#   coredns                                             github.com/coredns/coredns, trimmed (go/coredns)
#   traefik                                             github.com/traefik/traefik/v3 (go/traefik)
#   kube-network-policies                               sigs.k8s.io/kube-network-policies, patched
#                                                       (go/kube-network-policies, prepare-knp.sh)
#   pause                                               build/pause/linux/pause.c of k8s.io/kubernetes (gcc -static)
# kind (the kind path, e2e/kind): kind-<v>-k8s-<v>/bin
#   kind                                                sigs.k8s.io/kind (go/kind)
#   kubeadm                                             k8s.io/kubernetes (go/kubeadm), for the offline node image
# lint: lint-actionlint-<v>/bin
#   actionlint                                          github.com/rhysd/actionlint (go/actionlint), make lint
# A second run finds the binaries and does nothing. Prints each selected bin folder, the control
# plane's on the last line.
#   e2e/tools/install.sh [control-plane] [node] [kind] [lint]   (none: control-plane and node)
#   e2e/tools/install.sh --print-dir | --print-node-dir | --print-kind-dir
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
TOOLS="${RT_TOOLS_DIR:-$HOME/.cache/realtime-operator/tools}"
BIN="$TOOLS/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION/bin"
NODE_BIN="$TOOLS/node-k8s-$K8S_VERSION-coredns-$COREDNS_VERSION-traefik-$TRAEFIK_VERSION/bin"
KIND_BIN="$TOOLS/kind-$KIND_VERSION-k8s-$K8S_VERSION/bin"
LINT_BIN="$TOOLS/lint-actionlint-$ACTIONLINT_VERSION/bin"
want_cp=false want_node=false want_kind=false want_lint=false
for arg in "$@"; do
  case "$arg" in
    --print-dir) echo "$BIN"; exit 0 ;;
    --print-node-dir) echo "$NODE_BIN"; exit 0 ;;
    --print-kind-dir) echo "$KIND_BIN"; exit 0 ;;
    control-plane) want_cp=true ;;
    node) want_node=true ;;
    kind) want_kind=true ;;
    lint) want_lint=true ;;
    *) echo "usage: install.sh [control-plane] [node] [kind] [lint] | --print-dir | --print-node-dir | --print-kind-dir" >&2; exit 2 ;;
  esac
done
if ! $want_cp && ! $want_node && ! $want_kind && ! $want_lint; then want_cp=true want_node=true; fi

# -mod=readonly: the committed go.mod/go.sum are the pin; a drifted module fails loudly here
# instead of being rewritten (regen-go-mods.sh is the way to change them).
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath"
command -v go >/dev/null || { echo "install.sh: Go is required (https://go.dev/dl/)" >&2; exit 1; }

OUT= # the bin folder being filled (set by use)
use() { # use BIN_DIR: create it and hold its lock, one build at a time per folder (a developer
  # and a test run may start it together); fd 9 is reopened, so the previous folder's lock goes.
  OUT=$1
  mkdir -p "$OUT"
  exec 9>"$(dirname "$OUT")/install.lock"
  flock 9
}

build() { # build NAME MODULE_DIR PACKAGE LDFLAGS
  local name=$1 dir=$2 pkg=$3 ldflags=$4 t0
  if [[ -x "$OUT/$name" ]]; then return 0; fi
  t0=$(date +%s)
  echo "building $name ($pkg) ..." >&2
  (cd "$HERE/go/$dir" && go build -ldflags "-s -w $ldflags" -o "$OUT/$name.tmp" "$pkg")
  mv "$OUT/$name.tmp" "$OUT/$name"
  echo "built $name in $(( $(date +%s) - t0 ))s" >&2
}

KV="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$KUBE_MINOR -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$KUBE_MINOR"

control_plane_tools() {
  local helm_major="${HELM_VERSION%%.*}"
  use "$BIN"
  build etcd etcd go.etcd.io/etcd/server/v3 ""
  build kube-apiserver k8s k8s.io/kubernetes/cmd/kube-apiserver "$KV"
  build kube-controller-manager k8s k8s.io/kubernetes/cmd/kube-controller-manager "$KV"
  build kubectl k8s k8s.io/kubernetes/cmd/kubectl "$KV"
  build helm helm "helm.sh/helm/$helm_major/cmd/helm" "-X helm.sh/helm/$helm_major/internal/version.version=$HELM_VERSION -X helm.sh/helm/$helm_major/internal/version.gitTreeState=clean"
}

# The pod sandbox's pause binary, as Kubernetes builds its pause image (build/pause/Makefile:
# CFLAGS -Os -Wall -Werror -static, VERSION from its TAG), from the k8s.io/kubernetes module.
build_pause() {
  local src tag t0
  if [[ -x "$OUT/pause" ]]; then return 0; fi
  command -v gcc >/dev/null || { echo "install.sh: gcc (and static libc, Debian libc6-dev) is required for pause" >&2; exit 1; }
  t0=$(date +%s)
  echo "building pause (k8s.io/kubernetes@$K8S_VERSION build/pause/linux/pause.c) ..." >&2
  src=$(cd "$HERE/go/k8s" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [[ -f "$src/build/pause/linux/pause.c" ]] || { echo "install.sh: no pause.c in k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
  tag=$(sed -n 's/^TAG ?= *//p' "$src/build/pause/Makefile")
  gcc -Os -Wall -Werror -static -s -DVERSION="v$tag" -o "$OUT/pause.tmp" "$src/build/pause/linux/pause.c"
  mv "$OUT/pause.tmp" "$OUT/pause"
  echo "built pause in $(( $(date +%s) - t0 ))s" >&2
}

node_tools() {
  use "$NODE_BIN"
  build kubelet k8s k8s.io/kubernetes/cmd/kubelet "$KV"
  build kube-proxy k8s k8s.io/kubernetes/cmd/kube-proxy "$KV"
  build kube-scheduler k8s k8s.io/kubernetes/cmd/kube-scheduler "$KV"
  build coredns coredns . ""
  if [[ ! -x "$OUT/traefik" ]]; then
    # go/traefik replaces lego with ./lego, laid out from the module cache (see README.md).
    "$HERE/go/traefik/prepare-lego.sh"
    build traefik traefik github.com/traefik/traefik/v3/cmd/traefik "-X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION"
  fi
  if [[ ! -x "$OUT/kube-network-policies" ]]; then
    # The NetworkPolicy implementation; go/kube-network-policies replaces the module with ./knp
    # (its nftables queue as an xtables NFQUEUE target, see prepare-knp.sh).
    grep -Eq "^(require)?[[:space:]]*sigs.k8s.io/kube-network-policies $KUBE_NETWORK_POLICIES_VERSION\$" "$HERE/go/kube-network-policies/go.mod" \
      || { echo "install.sh: go/kube-network-policies/go.mod does not require $KUBE_NETWORK_POLICIES_VERSION (versions.env)" >&2; exit 1; }
    "$HERE/go/kube-network-policies/prepare-knp.sh"
    build kube-network-policies kube-network-policies . ""
  fi
  build_pause
  echo "$NODE_BIN"
}

# kind and kubeadm: the kind path's tools (e2e/kind/run.sh, e2e/kind/node-image.sh).
kind_tools() {
  use "$KIND_BIN"
  build kind kind sigs.k8s.io/kind ""
  build kubeadm kubeadm k8s.io/kubernetes/cmd/kubeadm "$KV"
  echo "$KIND_BIN"
}

# actionlint for make lint (the GitHub workflows).
lint_tools() {
  use "$LINT_BIN"
  build actionlint actionlint github.com/rhysd/actionlint/cmd/actionlint "-X github.com/rhysd/actionlint.version=$ACTIONLINT_VERSION"
  echo "$LINT_BIN"
}

if $want_lint; then lint_tools; fi
if $want_kind; then kind_tools; fi
if $want_cp; then control_plane_tools; fi
if $want_node; then node_tools; fi
if $want_cp; then echo "$BIN"; fi
