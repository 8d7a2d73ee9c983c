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
    && go get -tool k8s.io/kubernetes/cmd/kube-scheduler@"$K8S_VERSION" \
    && go get -tool k8s.io/kubernetes/cmd/kubelet@"$K8S_VERSION" \
    && go get -tool k8s.io/kubernetes/cmd/kube-proxy@"$K8S_VERSION" \
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

# CoreDNS with only the plugins the test node needs: main.go names them; tidy keeps just their deps.
coredns() {
  local d="$HERE/go/coredns"
  rm -f "$d/go.mod" "$d/go.sum"
  (cd "$d" && go mod init realtime-operator/e2e/tools/coredns >/dev/null 2>&1 \
    && go get "github.com/coredns/coredns@$COREDNS_VERSION" && go mod tidy)
}

# Traefik needs three modules the Go module proxy does not serve (see README.md): local
# replacements ./ext (committed stub), ./go-http-auth (committed), ./lego (laid out by
# prepare-lego.sh); Traefik's own gorilla/mux replace and excludes are carried over from its go.mod.
traefik() {
  local d="$HERE/go/traefik" tmod lego mux excludes
  tmod=$(go mod download -json "github.com/traefik/traefik/v3@$TRAEFIK_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  lego=$(awk '$1 == "github.com/go-acme/lego/v5" && $2 ~ /^v/ {print $2; exit}' "$tmod")
  mux=$(awk '$1 == "github.com/gorilla/mux" && $2 == "=>" {print $3, $4; exit}' "$tmod")
  excludes=$(grep '^exclude ' "$tmod" || true)
  [[ -n "$lego" && -n "$mux" ]] || { echo "regen-go-mods.sh: unexpected $tmod" >&2; return 1; }
  rm -f "$d/go.mod" "$d/go.sum"
  (cd "$d" && go mod init realtime-operator/e2e/tools/traefik >/dev/null 2>&1)
  cat >> "$d/go.mod" <<EOF

require github.com/go-acme/lego/v5 $lego

replace (
	github.com/abbot/go-http-auth => ./go-http-auth
	github.com/go-acme/lego/v5 => ./lego
	github.com/gorilla/mux => $mux
	github.com/traefik/traefik/dynamic/ext => ./ext
)

$excludes
EOF
  "$d/prepare-lego.sh"
  (cd "$d" && go get -tool "github.com/traefik/traefik/v3/cmd/traefik@$TRAEFIK_VERSION" && go mod tidy)
}

# The kind path's own tools (install.sh kind): kubeadm for the offline node image (same staging
# replaces as go/k8s) and kind itself.
kubeadm() {
  local d="$HERE/go/kubeadm" mod staging
  mod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  staging=$(awk '/=> \.\/staging\/src\// {print $1}' "$mod")
  mkdir -p "$d"
  rm -f "$d/go.mod" "$d/go.sum"
  (cd "$d" && go mod init realtime-operator/e2e/tools/kubeadm >/dev/null 2>&1)
  {
    echo
    echo "replace ("
    for m in $staging; do echo "	$m => $m v0.${K8S_VERSION#v1.}"; done
    echo ")"
  } >> "$d/go.mod"
  (cd "$d" && go get "k8s.io/kubernetes@$K8S_VERSION" \
    && go get -tool k8s.io/kubernetes/cmd/kubeadm@"$K8S_VERSION" && go mod tidy)
}

kind() {
  local d="$HERE/go/kind"
  mkdir -p "$d"
  rm -f "$d/go.mod" "$d/go.sum"
  (cd "$d" && go mod init realtime-operator/e2e/tools/kind >/dev/null 2>&1 \
    && go get -tool "sigs.k8s.io/kind@$KIND_VERSION" && go mod tidy)
}

actionlint() {
  local d="$HERE/go/actionlint"
  mkdir -p "$d"
  rm -f "$d/go.mod" "$d/go.sum"
  (cd "$d" && go mod init realtime-operator/e2e/tools/actionlint >/dev/null 2>&1 \
    && go get -tool "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION" && go mod tidy)
}

# No argument: all of them.
if [[ $# -eq 0 ]]; then set -- k8s etcd helm coredns traefik kubeadm kind actionlint; fi
for what in "$@"; do $what; done
