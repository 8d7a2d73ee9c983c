#!/usr/bin/env bash
# Path A of the end-to-end suite (`make e2e-kind`): the scenarios of e2e/src/scenarios on a real
# Kubernetes cluster made with kind, through ingress-nginx (or Traefik's ingress-nginx provider).
#
#   1. checks docker (daemon reachable), kind, kubectl, helm, cargo, node >= 20 and npm, and stops
#      before doing anything if one is missing;
#   2. creates the kind cluster from e2e/kind/cluster.yaml (ingress-ready node, ports on 127.0.0.1);
#   3. installs ingress-nginx from a pinned manifest and waits for its controller (or Traefik,
#      RT_KIND_INGRESS=traefik);
#   4. builds both images from docker/*.Dockerfile (or takes RT_SERVER_IMAGE/RT_OPERATOR_IMAGE) and
#      loads them with `kind load docker-image`;
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
#   KIND                    the kind binary (kind on PATH)
#   RT_KIND_CONFIG          cluster config (e2e/kind/cluster.yaml)
#   RT_KIND_NODE_IMAGE      node image (kind's default for its version, from its registry)
#   RT_KIND_INGRESS         ingress-nginx (default: its pinned kind manifest, from the network) or
#                           traefik (e2e/kind/traefik.yaml: Traefik's kubernetesIngressNGINX
#                           provider as IngressClass nginx, image RT_TRAEFIK_IMAGE)
#   RT_TRAEFIK_IMAGE        Traefik image for RT_KIND_INGRESS=traefik (default: built here from
#                           RT_RUNTIME_IMAGE and the Traefik of e2e/tools/install.sh node)
#   RT_SERVER_IMAGE, RT_OPERATOR_IMAGE   use these images instead of building them
#   RT_BUILDER_IMAGE, RT_RUNTIME_IMAGE   the Dockerfiles' BUILDER_IMAGE / RUNTIME_IMAGE build args
#   RT_REDIS_IMAGE          the chart's defaultRedisImage (empty: the operator's default, pulled)
#   RT_KIND_OFFLINE=1       all of the above from this machine, nothing from a registry: the node
#                           image of e2e/kind/node-image.sh with e2e/kind/cluster-offline.yaml,
#                           Traefik, the local base images and Redis of docker/local-base-images.sh,
#                           kind/kubectl/helm from e2e/tools/install.sh, CoreDNS's Corefile without
#                           the plugins the trimmed CoreDNS lacks (forward, loop, reload,
#                           loadbalance: no upstream DNS offline). On these machines run it as
#                           `make e2e-kind-offline` (e2e/kind/with-docker.sh: private dockerd,
#                           the real-node lock, network fence, teardown).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

KIND_VERSION=$(sed -n 's/^KIND_VERSION=//p' e2e/tools/versions.env)
RUN_T0=$SECONDS
OFFLINE=${RT_KIND_OFFLINE:-0}
if [ "$OFFLINE" = 1 ]; then
    # kind, kubeadm, kubectl and helm built from Go modules (cached under ~/.cache/realtime-operator).
    KIND_DIR=$(e2e/tools/install.sh kind | tail -n1)
    CP_DIR=$(e2e/tools/install.sh control-plane | tail -n1)
    export PATH="$KIND_DIR:$CP_DIR:$PATH"
    : "${RT_KIND_CONFIG:=e2e/kind/cluster-offline.yaml}"
    : "${RT_KIND_INGRESS:=traefik}"
fi
KIND=${KIND:-kind}
KIND_CONFIG=${RT_KIND_CONFIG:-e2e/kind/cluster.yaml}
INGRESS=${RT_KIND_INGRESS:-ingress-nginx}
case $INGRESS in ingress-nginx | traefik) ;; *) echo "RT_KIND_INGRESS must be ingress-nginx or traefik" >&2; exit 2 ;; esac
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
need "$KIND" "install kind ${KIND_VERSION}: \`go install sigs.k8s.io/kind@${KIND_VERSION}\` or https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
need kubectl "install kubectl: https://kubernetes.io/docs/tasks/tools/"
need helm "install Helm 3.14+ or 4: https://helm.sh/docs/intro/install/"
need cargo "install Rust with rustup: https://rustup.rs"
need node "install Node.js 20 or newer: https://nodejs.org/en/download"
need npm "install npm (it comes with Node.js): https://nodejs.org/en/download"
if command -v docker >/dev/null 2>&1; then
    if ! docker info >/dev/null 2>&1; then
        missing+=("docker daemon: \`docker info\` cannot reach it; start Docker (or give your user access to its socket)")
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
    "$KIND" export logs "$LOGS/kind" --name "$CLUSTER" >/dev/null 2>&1 || true
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
        "$KIND" delete cluster --name "$CLUSTER" || true
    elif [ "$USED" = 1 ]; then
        echo "cluster $CLUSTER kept: kubectl --context $CONTEXT ...; delete it with: kind delete cluster --name $CLUSTER" >&2
    fi
    say "e2e-kind: exit $rc after $((SECONDS - RUN_T0)) s"
    exit "$rc"
}
trap on_exit EXIT
phase() { # NAME T0: prints how long a phase took
    printf '==> %s: %d s\n' "$1" "$((SECONDS - $2))"
}

# ---- offline parts (RT_KIND_OFFLINE=1): node image, base images, Redis ---------------------------
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
NODE_IMAGE=${RT_KIND_NODE_IMAGE:-}
REDIS_IMAGE=${RT_REDIS_IMAGE:-}
BUILDER_IMAGE=${RT_BUILDER_IMAGE:-}
RUNTIME_IMAGE=${RT_RUNTIME_IMAGE:-}
if [ "$OFFLINE" = 1 ]; then
    t=$SECONDS
    say "offline: the kind node image (e2e/kind/node-image.sh)"
    [ -n "$NODE_IMAGE" ] || NODE_IMAGE=$(e2e/kind/node-image.sh | sed -n 's/^node=//p')
    phase "node image $NODE_IMAGE" "$t"
    t=$SECONDS
    say "offline: local base images and Redis (docker/local-base-images.sh)"
    want=(runtime redis)
    # The builder (toolchain + vendored crates) only when an image is to be built.
    if [ -z "${RT_SERVER_IMAGE:-}" ] || [ -z "${RT_OPERATOR_IMAGE:-}" ]; then want+=(builder); fi
    bases=$(docker/local-base-images.sh "${want[@]}")
    [ -n "$BUILDER_IMAGE" ] || BUILDER_IMAGE=$(sed -n 's/^builder=//p' <<<"$bases")
    [ -n "$RUNTIME_IMAGE" ] || RUNTIME_IMAGE=$(sed -n 's/^runtime=//p' <<<"$bases")
    [ -n "$REDIS_IMAGE" ] || REDIS_IMAGE=$(sed -n 's/^redis=//p' <<<"$bases")
    phase "base images" "$t"
fi

# ---- 2. cluster --------------------------------------------------------------------------------
if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    if [ "${RT_KIND_REUSE:-0}" != 1 ]; then
        echo "a kind cluster named $CLUSTER exists already: delete it (kind delete cluster --name $CLUSTER)," >&2
        echo "set RT_KIND_CLUSTER to another name, or RT_KIND_REUSE=1 to use it" >&2
        exit 2
    fi
    say "reusing kind cluster $CLUSTER"
else
    say "creating kind cluster $CLUSTER from $KIND_CONFIG${NODE_IMAGE:+ (node image $NODE_IMAGE)} (ingress on 127.0.0.1:$HTTP_PORT and :$HTTPS_PORT)"
    t=$SECONDS
    config=$(mktemp)
    sed -e "s/hostPort: 8080/hostPort: $HTTP_PORT/" -e "s/hostPort: 8443/hostPort: $HTTPS_PORT/" \
        "$KIND_CONFIG" >"$config"
    CREATED=1
    "$KIND" create cluster --name "$CLUSTER" --config "$config" --wait 120s ${NODE_IMAGE:+--image "$NODE_IMAGE"}
    rm -f "$config"
    phase "kind create cluster" "$t"
fi
USED=1
if [ "$OFFLINE" = 1 ]; then
    # The trimmed CoreDNS (e2e/tools/go/coredns) lacks forward, loop, reload and loadbalance, which
    # kubeadm's Corefile names; offline there is no upstream DNS to forward to anyway.
    say "offline: CoreDNS's Corefile without forward/loop/reload/loadbalance"
    kc -n kube-system get configmap coredns -o jsonpath='{.data.Corefile}' |
        sed -e '/^ *forward /,/^ *}/d' -e '/^ *\(loop\|reload\|loadbalance\)$/d' >"$LOGS.Corefile"
    kc -n kube-system create configmap coredns --from-file=Corefile="$LOGS.Corefile" --dry-run=client -o yaml |
        kc apply -f - >/dev/null
    rm -f "$LOGS.Corefile"
    kc -n kube-system rollout restart deployment/coredns >/dev/null
fi

# ---- 3. ingress -------------------------------------------------------------------------------
t=$SECONDS
if [ "$INGRESS" = ingress-nginx ]; then
    say "installing ingress-nginx $INGRESS_NGINX_VERSION"
    kc apply -f "$INGRESS_NGINX_MANIFEST"
    # The controller becomes ready only once its admission webhook certificate exists.
    kc -n ingress-nginx rollout status deployment/ingress-nginx-controller --timeout=300s
else
    TRAEFIK_IMAGE=${RT_TRAEFIK_IMAGE:-}
    if [ -z "$TRAEFIK_IMAGE" ]; then
        [ -n "$RUNTIME_IMAGE" ] || { echo "RT_KIND_INGRESS=traefik needs RT_TRAEFIK_IMAGE or RT_RUNTIME_IMAGE" >&2; exit 2; }
        traefik_bin=$(e2e/tools/install.sh node | tail -n1)/traefik
        TRAEFIK_IMAGE=localhost/realtime-operator/traefik:$(sha256sum "$traefik_bin" | cut -c1-12)
        if ! docker image inspect "$TRAEFIK_IMAGE" >/dev/null 2>&1; then
            say "building $TRAEFIK_IMAGE from $RUNTIME_IMAGE and $traefik_bin"
            ctx=$(mktemp -d)
            cp "$traefik_bin" "$ctx/traefik"
            printf 'FROM %s\nCOPY traefik /usr/local/bin/traefik\nENTRYPOINT ["/usr/local/bin/traefik"]\n' "$RUNTIME_IMAGE" >"$ctx/Dockerfile"
            DOCKER_BUILDKIT=0 docker build -q --network none -t "$TRAEFIK_IMAGE" "$ctx" >/dev/null
            rm -rf "$ctx"
        fi
    fi
    say "installing Traefik ($TRAEFIK_IMAGE) as IngressClass nginx"
    "$KIND" load docker-image "$TRAEFIK_IMAGE" --name "$CLUSTER"
    sed "s|TRAEFIK_IMAGE|$TRAEFIK_IMAGE|" e2e/kind/traefik.yaml | kc apply -f -
    kc -n traefik rollout status deployment/traefik --timeout=300s
fi
phase "ingress ($INGRESS)" "$t"

# ---- 4. images ---------------------------------------------------------------------------------
t=$SECONDS
SERVER_IMAGE=${RT_SERVER_IMAGE:-}
OPERATOR_IMAGE=${RT_OPERATOR_IMAGE:-}
build_args=(--build-arg "VERSION=$VERSION" --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)")
[ -n "$BUILDER_IMAGE" ] && build_args+=(--build-arg "BUILDER_IMAGE=$BUILDER_IMAGE")
[ -n "$RUNTIME_IMAGE" ] && build_args+=(--build-arg "RUNTIME_IMAGE=$RUNTIME_IMAGE")
for image in realtime-server realtime-operator; do
    if [ "$image" = realtime-server ] && [ -n "$SERVER_IMAGE" ]; then continue; fi
    if [ "$image" = realtime-operator ] && [ -n "$OPERATOR_IMAGE" ]; then continue; fi
    say "building $image:$TAG"
    if docker buildx version >/dev/null 2>&1; then
        # --provenance=false: no attestation manifest, which `kind load` cannot import from
        # Docker's containerd image store.
        docker buildx build --load --provenance=false -f "docker/$image.Dockerfile" -t "$image:$TAG" "${build_args[@]}" .
    else
        # Debian's docker.io has no buildx: its legacy builder (the Dockerfiles need no BuildKit).
        DOCKER_BUILDKIT=0 docker build -f "docker/$image.Dockerfile" -t "$image:$TAG" "${build_args[@]}" .
    fi
done
: "${SERVER_IMAGE:=realtime-server:$TAG}"
: "${OPERATOR_IMAGE:=realtime-operator:$TAG}"
load=("$SERVER_IMAGE" "$OPERATOR_IMAGE")
[ -n "$REDIS_IMAGE" ] && load+=("$REDIS_IMAGE")
say "loading ${load[*]} into $CLUSTER"
"$KIND" load docker-image "${load[@]}" --name "$CLUSTER"
phase "images built and loaded" "$t"

# ---- 5. operator -------------------------------------------------------------------------------
t=$SECONDS
say "helm install realtime-operator"
# --set-string for tags: an all-digit tag would be a number to --set (the schema wants a string).
helm_args=(--set "image.repository=${OPERATOR_IMAGE%:*}" --set-string "image.tag=${OPERATOR_IMAGE##*:}"
    --set "serverImage.repository=${SERVER_IMAGE%:*}" --set-string "serverImage.tag=${SERVER_IMAGE##*:}")
[ -n "$REDIS_IMAGE" ] && helm_args+=(--set "defaultRedisImage=$REDIS_IMAGE")
helm upgrade --install realtime-operator charts/realtime-operator \
    --kube-context "$CONTEXT" --namespace "$OPERATOR_NS" --create-namespace \
    "${helm_args[@]}" --wait --timeout 5m
phase "helm install" "$t"

# ---- 6. the RealtimeCluster --------------------------------------------------------------------
t=$SECONDS
say "kubectl apply -f $RTC_FILE (namespace $NS) and wait for Ready"
kc create namespace "$NS" --dry-run=client -o yaml | kc apply -f -
kc -n "$NS" apply -f "$RTC_FILE"
kc -n "$NS" wait "rtc/$RTC_NAME" --for=condition=Ready --timeout=300s
kc -n "$NS" get rtc "$RTC_NAME"
phase "RealtimeCluster Ready" "$t"

# ---- 7. scenarios ------------------------------------------------------------------------------
if [ ! -f e2e/client/node_modules/socket.io-client/package.json ]; then
    say "installing the socket.io-client driver (npm ci in e2e/client)"
    (cd e2e/client && npm ci --no-audit --no-fund)
fi
args=(--context "$CONTEXT" --namespace "$NS" --name "$RTC_NAME" --url "http://localhost:$HTTP_PORT")
for s in ${RT_E2E_SCENARIOS:-}; do args+=(--scenario "$s"); done
t=$SECONDS
say "running the scenarios through the ingress at http://localhost:$HTTP_PORT"
cargo run --locked -q -p realtime-e2e --bin e2e-kind -- "${args[@]}"
phase "scenarios" "$t"
say "all scenarios passed on kind"
