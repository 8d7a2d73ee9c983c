#!/usr/bin/env bash
# Builds the local control plane's binaries from Go modules (versions in versions.env) and caches
# them by version outside the clone: $RT_TOOLS_DIR (default ~/.cache/realtime-operator/tools).
#   kube-apiserver, kube-controller-manager, kubectl   k8s.io/kubernetes (wrapper module go/k8s)
#   etcd                                                go.etcd.io/etcd/server/v3 (go/etcd)
#   helm                                                helm.sh/helm (go/helm)
# A second run finds the binaries and does nothing. Prints the bin folder on its last line.
#   e2e/tools/install.sh [--print-dir]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
TOOLS="${RT_TOOLS_DIR:-$HOME/.cache/realtime-operator/tools}"
BIN="$TOOLS/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION/bin"
if [[ "${1:-}" == "--print-dir" ]]; then echo "$BIN"; exit 0; fi
mkdir -p "$BIN"
# One build at a time per cache (a developer and a test run may start it together).
exec 9>"$(dirname "$BIN")/install.lock"
flock 9
# -mod=readonly: the committed go.mod/go.sum are the pin; a drifted module fails loudly here
# instead of being rewritten (regen-go-mods.sh is the way to change them).
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath"

build() { # build NAME MODULE_DIR PACKAGE LDFLAGS
  local name=$1 dir=$2 pkg=$3 ldflags=$4 t0
  if [[ -x "$BIN/$name" ]]; then return 0; fi
  t0=$(date +%s)
  echo "building $name ($pkg) ..." >&2
  (cd "$HERE/go/$dir" && go build -ldflags "-s -w $ldflags" -o "$BIN/$name.tmp" "$pkg")
  mv "$BIN/$name.tmp" "$BIN/$name"
  echo "built $name in $(( $(date +%s) - t0 ))s" >&2
}

command -v go >/dev/null || { echo "install.sh: Go is required (https://go.dev/dl/)" >&2; exit 1; }
KV="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$KUBE_MINOR -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$KUBE_MINOR"
HELM_MAJOR="${HELM_VERSION%%.*}"
build etcd etcd go.etcd.io/etcd/server/v3 ""
build kube-apiserver k8s k8s.io/kubernetes/cmd/kube-apiserver "$KV"
build kube-controller-manager k8s k8s.io/kubernetes/cmd/kube-controller-manager "$KV"
build kubectl k8s k8s.io/kubernetes/cmd/kubectl "$KV"
build helm helm "helm.sh/helm/$HELM_MAJOR/cmd/helm" "-X helm.sh/helm/$HELM_MAJOR/internal/version.version=$HELM_VERSION -X helm.sh/helm/$HELM_MAJOR/internal/version.gitTreeState=clean"
echo "$BIN"
