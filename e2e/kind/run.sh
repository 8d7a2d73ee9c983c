#!/usr/bin/env bash
# Path A of the end-to-end suite (`make e2e-kind`): the scenarios of e2e/src/scenarios on a real
# Kubernetes cluster made with kind, through ingress-nginx.
#
#   1. checks docker (daemon reachable), kind, kubectl, helm, cargo, node >= 20 and npm, and stops
#      before doing anything if one is missing;
#   2. creates the kind cluster from e2e/kind/cluster.yaml (ingress-ready node, ports on 127.0.0.1);
#   3. installs ingress-nginx from a pinned manifest and waits for its controller;
#   4. builds both images from docker/*.Dockerfile and loads them with `kind load docker-image`;
#   5. `helm install`s charts/realtime-operator with those images;
#   6. `kubectl apply`s e2e/kind/realtimecluster.yaml and waits for Ready;
#   7. runs the scenarios through the ingress (the `e2e-kind` binary);
#   8. on failure, collects logs (describe, pod and operator logs, events, `kind export logs`);
#   9. deletes the cluster, unless KEEP=1.
#
# Settings (environment):
#   KEEP=1                  keep the cluster afterwards (it prints how to delete it)
#   RT_KIND_CLUSTER         cluster name (rt-e2e)
#   RT_KIND_REUSE=1         use an existing cluster of that name instead of failing
#   RT_KIND_HTTP_PORT       host port of the ingress's HTTP (8080); RT_KIND_HTTPS_PORT (8443)
#   RT_E2E_NAMESPACE        namespace of the RealtimeCluster (rt-e2e)
#   RT_E2E_SCENARIOS        space-separated scenario names to run (all by default)
#   RT_E2E_LOGS             where logs go on failure (${TMPDIR:-/tmp}/rt-e2e-kind-logs)
#   RT_E2E_TAG              image tag (e2e-<unix time>)
#   INGRESS_NGINX_VERSION   ingress-nginx release (controller-v1.12.3)
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

KIND_VERSION=v0.33.0
INGRESS_NGINX_VERSION=${INGRESS_NGINX_VERSION:-controller-v1.12.3}
INGRESS_NGINX_MANIFEST="https://raw.githubusercontent.com/kubernetes/ingress-nginx/${INGRESS_NGINX_VERSION}/deploy/static/provider/kind/deploy.yaml"
CLUSTER=${RT_KIND_CLUSTER:-rt-e2e}
CONTEXT="kind-${CLUSTER}"
NS=${RT_E2E_NAMESPACE:-rt-e2e}
HTTP_PORT=${RT_KIND_HTTP_PORT:-8080}
HTTPS_PORT=${RT_KIND_HTTPS_PORT:-8443}
TAG=${RT_E2E_TAG:-e2e-$(date +%s)}
LOGS=${RT_E2E_LOGS:-${TMPDIR:-/tmp}/rt-e2e-kind-logs}
KEEP=${KEEP:-0}
RTC_FILE=e2e/kind/realtimecluster.yaml
RTC_NAME=chat
OPERATOR_NS=realtime-system

say() { printf '\n==> %s\n' "$*"; }
kc() { kubectl --context "$CONTEXT" "$@"; }

# ---- 1. prerequisites: all checked before anything is created ---------------------------------
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1: $2"); }
need docker "install Docker Engine or Docker Desktop: https://docs.docker.com/get-docker/"
need kind "install kind ${KIND_VERSION}: \`go install sigs.k8s.io/kind@${KIND_VERSION}\` or https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
need kubectl "install kubectl: https://kubernetes.io/docs/tasks/tools/"
need helm "install Helm 3.14+ or 4: https://helm.sh/docs/intro/install/"
need cargo "install Rust with rustup: https://rustup.rs"
need node "install Node.js 20 or newer: https://nodejs.org/en/download"
need npm "install npm (it comes with Node.js): https://nodejs.org/en/download"
if command -v docker >/dev/null 2>&1; then
    if ! docker info >/dev/null 2>&1; then
        missing+=("docker daemon: \`docker info\` cannot reach it; start Docker (or give your user access to its socket)")
    fi
    if ! docker buildx version >/dev/null 2>&1; then
        missing+=("docker buildx: the images need BuildKit; install the buildx plugin (docker-buildx-plugin), Docker Desktop has it")
    fi
fi
if command -v node >/dev/null 2>&1; then
    major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
    if [ "$major" -lt 20 ]; then
        missing+=("node >= 20: found $(node --version); the client resolves localhost to ::1 and 127.0.0.1 alike only from Node 20 on")
    fi
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "make e2e-kind cannot run; nothing was created. Missing:" >&2
    for m in "${missing[@]}"; do echo "  - $m" >&2; done
    echo "Without Docker, the same scenarios run on local parts: make test (e2e/tests/real_node.rs, a real node on this machine, as root)." >&2
    exit 2
fi

# ---- teardown and logs ------------------------------------------------------------------------
CREATED=0
USED=0
collect_logs() {
    mkdir -p "$LOGS"
    echo "collecting logs into $LOGS" >&2
    {
        kc get nodes -o wide
        kc get all,ingress,pdb,rtc -A -o wide
        kc get secrets -A
    } >"$LOGS/overview.txt" 2>&1 || true
    kc -n "$NS" get rtc "$RTC_NAME" -o yaml >"$LOGS/realtimecluster.yaml" 2>&1 || true
    kc -n "$NS" describe rtc,deployment,statefulset,pods,services,ingress >"$LOGS/describe-$NS.txt" 2>&1 || true
    kc -n "$OPERATOR_NS" describe deployment,pods >"$LOGS/describe-$OPERATOR_NS.txt" 2>&1 || true
    kc get events -A --sort-by=.lastTimestamp >"$LOGS/events.txt" 2>&1 || true
    for ns in "$NS" "$OPERATOR_NS" ingress-nginx; do
        for pod in $(kc -n "$ns" get pods -o name 2>/dev/null); do
            f="$LOGS/logs-$ns-${pod#pod/}.txt"
            kc -n "$ns" logs "$pod" --all-containers --timestamps >"$f" 2>&1 || true
            kc -n "$ns" logs "$pod" --all-containers --timestamps --previous >>"$f" 2>/dev/null || true
        done
    done
    kind export logs "$LOGS/kind" --name "$CLUSTER" >/dev/null 2>&1 || true
    echo "logs: $LOGS" >&2
}
on_exit() {
    rc=$?
    trap - EXIT
    if [ "$rc" -ne 0 ] && [ "$USED" = 1 ]; then
        collect_logs
    fi
    if [ "$CREATED" = 1 ] && [ "$KEEP" != 1 ]; then
        say "deleting kind cluster $CLUSTER (KEEP=1 keeps it)"
        kind delete cluster --name "$CLUSTER" || true
    elif [ "$USED" = 1 ]; then
        echo "cluster $CLUSTER kept: kubectl --context $CONTEXT ...; delete it with: kind delete cluster --name $CLUSTER" >&2
    fi
    exit "$rc"
}
trap on_exit EXIT

# ---- 2. cluster --------------------------------------------------------------------------------
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    if [ "${RT_KIND_REUSE:-0}" != 1 ]; then
        echo "a kind cluster named $CLUSTER exists already: delete it (kind delete cluster --name $CLUSTER)," >&2
        echo "set RT_KIND_CLUSTER to another name, or RT_KIND_REUSE=1 to use it" >&2
        exit 2
    fi
    say "reusing kind cluster $CLUSTER"
else
    say "creating kind cluster $CLUSTER (ingress on 127.0.0.1:$HTTP_PORT and :$HTTPS_PORT)"
    config=$(mktemp)
    sed -e "s/hostPort: 8080/hostPort: $HTTP_PORT/" -e "s/hostPort: 8443/hostPort: $HTTPS_PORT/" \
        e2e/kind/cluster.yaml >"$config"
    CREATED=1
    kind create cluster --name "$CLUSTER" --config "$config" --wait 120s
    rm -f "$config"
fi
USED=1

# ---- 3. ingress-nginx --------------------------------------------------------------------------
say "installing ingress-nginx $INGRESS_NGINX_VERSION"
kc apply -f "$INGRESS_NGINX_MANIFEST"
# The controller becomes ready only once its admission webhook certificate exists.
kc -n ingress-nginx rollout status deployment/ingress-nginx-controller --timeout=300s

# ---- 4. images ---------------------------------------------------------------------------------
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
for image in realtime-server realtime-operator; do
    say "building $image:$TAG"
    # --provenance=false: no attestation manifest, which `kind load` cannot import from Docker's
    # containerd image store.
    docker buildx build --load --provenance=false -f "docker/$image.Dockerfile" -t "$image:$TAG" \
        --build-arg "VERSION=$VERSION" --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)" .
done
say "loading the images into $CLUSTER"
kind load docker-image "realtime-server:$TAG" "realtime-operator:$TAG" --name "$CLUSTER"

# ---- 5. operator -------------------------------------------------------------------------------
say "helm install realtime-operator"
helm upgrade --install realtime-operator charts/realtime-operator \
    --kube-context "$CONTEXT" --namespace "$OPERATOR_NS" --create-namespace \
    --set image.repository=realtime-operator --set "image.tag=$TAG" \
    --set serverImage.repository=realtime-server --set "serverImage.tag=$TAG" \
    --wait --timeout 5m

# ---- 6. the RealtimeCluster --------------------------------------------------------------------
say "kubectl apply -f $RTC_FILE (namespace $NS) and wait for Ready"
kc create namespace "$NS" --dry-run=client -o yaml | kc apply -f -
kc -n "$NS" apply -f "$RTC_FILE"
kc -n "$NS" wait "rtc/$RTC_NAME" --for=condition=Ready --timeout=300s
kc -n "$NS" get rtc "$RTC_NAME"

# ---- 7. scenarios ------------------------------------------------------------------------------
if [ ! -f e2e/client/node_modules/socket.io-client/package.json ]; then
    say "installing the socket.io-client driver (npm ci in e2e/client)"
    (cd e2e/client && npm ci --no-audit --no-fund)
fi
args=(--context "$CONTEXT" --namespace "$NS" --name "$RTC_NAME" --url "http://localhost:$HTTP_PORT")
for s in ${RT_E2E_SCENARIOS:-}; do args+=(--scenario "$s"); done
say "running the scenarios through the ingress at http://localhost:$HTTP_PORT"
cargo run --locked -q -p realtime-e2e --bin e2e-kind -- "${args[@]}"
say "all scenarios passed on kind"
