#!/usr/bin/env bash
# Regenerates the Go wrapper modules under go/ from versions.env (run after a version bump, then
# commit go.mod and go.sum). k8s.io/kubernetes requires its staging modules at v0.0.0, so the
# wrapper replaces each one (as listed by the module's own go.mod) with its published v0.Y.Z tag.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
export GOFLAGS=-mod=mod

k8s() {
  local d="$HERE/go/k8s" mod staging
  mod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  staging=$(awk '/=> \.\/staging\/src\// {print $1}' "$mod")
  rm -f "$d/go.mod" "$d/go.sum"
  (cd "$d" && go mod init realtime-operator/e2e/tools/k8s >/dev/null 2>&1)
  {
    echo
    echo "replace ("
    for m in $staging; do echo "	$m => $m v0.${K8S_VERSION#v1.}"; done
    echo ")"
  } >> "$d/go.mod"
  (cd "$d" && go get "k8s.io/kubernetes@$K8S_VERSION" \
    && go get -tool k8s.io/kubernetes/cmd/kube-apiserver@"$K8S_VERSION" \
    && go get -tool k8s.io/kubernetes/cmd/kube-controller-manager@"$K8S_VERSION" \
    && go get -tool k8s.io/kubernetes/cmd/kubectl@"$K8S_VERSION" \
    && go mod tidy)
}

etcd() {
  local d="$HERE/go/etcd"
  rm -f "$d/go.mod" "$d/go.sum"
  (cd "$d" && go mod init realtime-operator/e2e/tools/etcd >/dev/null 2>&1 \
    && go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION" && go mod tidy)
}

helm() {
  local d="$HERE/go/helm" major="${HELM_VERSION%%.*}"
  rm -f "$d/go.mod" "$d/go.sum"
  (cd "$d" && go mod init realtime-operator/e2e/tools/helm >/dev/null 2>&1 \
    && go get -tool "helm.sh/helm/$major/cmd/helm@$HELM_VERSION" && go mod tidy)
}

for what in "${@:-k8s etcd helm}"; do $what; done
