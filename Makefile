# Build outputs live outside the clone so that later runs (and CI on this machine) reuse them.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/realtime-operator/target
CARGO ?= cargo

.PHONY: run test deps build release lint vendor-test unit crds cluster control-plane e2e-kind e2e-kind-offline docker-test bench bench-drain bench-floor bench-growth clean-cache bench-recovery

## run: one realtime-server node on :3000 with the in-memory adapter and the demo page
## (probes and metrics on the admin port :9090)
run:
	$(CARGO) run -p realtime-server -- --demo-page

## test: every test tier that runs on this machine (installs its parts first; the real-node
## tier needs root). Prints how long each part took.
test:
	@scripts/timed.sh deps $(MAKE) --no-print-directory deps
	@scripts/timed.sh build $(MAKE) --no-print-directory build release
	@scripts/timed.sh lint $(MAKE) --no-print-directory lint
	@scripts/timed.sh tests $(CARGO) test --workspace --no-fail-fast
	@scripts/timed.sh vendor-test $(MAKE) --no-print-directory vendor-test
	@scripts/timed.sh bench-tools python3 -m unittest discover -s bench -p 'test_*.py'
	@scripts/timed.sh --summary

## vendor-test: the tests of the patched engineioxide and socketioxide (server/vendor, their own
## workspaces)
vendor-test:
	cd server/vendor/engineioxide && $(CARGO) test --locked --features tracing,__test_harness
	cd server/vendor/socketioxide && $(CARGO) test --locked --features tracing,state,extensions,__test_harness --lib --tests

## lint: formatting and clippy, warnings are errors; shellcheck of the scripts and actionlint of
## the GitHub workflows (actionlint built by e2e/tools/install.sh lint, a few seconds)
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	shellcheck -S warning $$(git ls-files '*.sh')
	"$$(e2e/tools/install.sh lint | tail -n1)/actionlint" .github/workflows/*.yml

deps:
	scripts/deps.sh

build:
	$(CARGO) build --workspace --bins

## release: the release binaries the real node's images are made of
release:
	$(CARGO) build --release -p realtime-server -p realtime-operator --bins

## unit: the fast tests only, no external parts
unit:
	$(CARGO) test --workspace --lib --bins

## crds: regenerate crds/ and the chart's copy from the Rust types
crds:
	$(CARGO) run -q -p realtime-operator -- crd > crds/realtimecluster.yaml
	cp crds/realtimecluster.yaml charts/realtime-operator/crds/realtimecluster.yaml

## cluster: a real single-node cluster on this machine (root): kubelet on containerd, kube-proxy,
## CoreDNS, Traefik as the nginx ingress class, the project's images imported; prints KUBECONFIG,
## RT_INGRESS_URL and the image references, Ctrl-C tears it all down
cluster: deps release
	$(CARGO) run -q -p realtime-e2e --bin rt-cluster

## control-plane: a local kube-apiserver (+ etcd, kube-controller-manager) with the CRDs, until Ctrl-C
control-plane:
	e2e/tools/install.sh >/dev/null
	$(CARGO) run -q -p realtime-e2e --bin rt-control-plane

## bench: realtime-server vs the Node.js socket.io + Redis adapter reference, same machine, one run
## (~15 min; QUICK=1 for a short debug run). Results under ~/.cache/realtime-operator/bench/results/
bench:
	bench/run.sh

## bench-drain: reconnects/s seen by the other nodes while a node with 1000 clients drains after
## SIGTERM, DRAIN_CLOSE_RATE=0 against the default (loopback: Redis, 3 nodes, nginx; ~1 min with
## the build done). Results under ~/.cache/realtime-operator/bench/drain/
bench-drain:
	bench/drain.sh

## bench-floor: realtime-server against the floor (bench/floor/, a minimal broadcaster writing one
## pre-encoded frame per receiver): CPU per delivery at 50/s x 1000 and saturation, through nginx,
## direct to 2 nodes, 1 node (~4 min a round; SECTIONS=conns for the 20k-connection figures, ~2 min).
## Holds /tmp/rt-bench.lock while measuring. Results under ~/.cache/realtime-operator/bench/floor/
bench-floor:
	bench/floor.sh

## bench-growth: node CPU, Redis CPU and Redis deliveries per private message and per broadcast
## with 1, 2, 4 and 8 nodes on one Redis, PRIVATE_ROUTING=broadcast against node (loopback, no
## nginx; ~5 min per round, holds /tmp/rt-bench.lock). Results under
## ~/.cache/realtime-operator/bench/growth/
bench-growth:
	flock /tmp/rt-bench.lock bench/growth.sh

## bench-recovery: what connection state recovery costs (Redis memory per session and per logged
## packet, CPU per restore and per replayed packet, restore latency, fan-out with recovery on/off)
## against socket.io with @socket.io/redis-streams-adapter; takes /tmp/rt-bench.lock per section
## (~12 min of measuring). Results under ~/.cache/realtime-operator/bench/recovery-<timestamp>/
bench-recovery:
	bench/recovery.sh

## e2e-kind: the end-to-end scenarios on a kind cluster through ingress-nginx (needs Docker, kind,
## kubectl, helm, Node.js 20+); KEEP=1 keeps the cluster, RT_E2E_SCENARIOS="hello scale" picks some;
## the variables of e2e/kind/run.sh replace the node image, the ingress and the images
e2e-kind:
	e2e/kind/run.sh

## e2e-kind-offline: the same on this kind of machine with nothing from a registry (root; cold about
## 35 min on 2 shared cores, most of it the image builds; 1.5-2.5 min with the node image in the
## data root and RT_SERVER_IMAGE/RT_OPERATOR_IMAGE given): Debian's docker.io, a private dockerd under the real-node
## lock (e2e/kind/with-docker.sh), the node image of e2e/kind/node-image.sh, Traefik as the nginx
## IngressClass, images from local base images. Not in `make test` (see docker/README.md).
e2e-kind-offline: deps
	@command -v dockerd >/dev/null || apt-get install -y -qq --no-install-recommends docker.io
	docker/local-base-images.sh --prepare
	e2e/kind/node-image.sh --prepare
	e2e/tools/install.sh node kind control-plane >/dev/null
	$(CARGO) build --locked -q -p realtime-e2e --bin e2e-kind
	e2e/kind/with-docker.sh env RT_KIND_OFFLINE=1 e2e/kind/run.sh

## docker-test: builds both images offline (local base images, Debian's legacy builder) and runs the
## server image as 65532 with a read-only root until /healthz answers (root; RT_BUILDER=buildkit
## for the daemon's BuildKit)
docker-test:
	@command -v dockerd >/dev/null || apt-get install -y -qq --no-install-recommends docker.io
	docker/local-base-images.sh --prepare runtime builder
	e2e/kind/with-docker.sh env RT_OFFLINE=1 docker/test-images.sh

## clean-cache: removes this project's caches under ~/.cache/realtime-operator (cargo targets,
## Go-built tools, checkov, the real node's images, the offline kind Docker data root and node
## image, bench results); the next `make test` rebuilds them (a fresh machine's run)
clean-cache:
	@if grep -qs " $(HOME)/.cache/realtime-operator/" /proc/mounts; then \
		echo "clean-cache: something is mounted under ~/.cache/realtime-operator (a running dockerd of e2e/kind/with-docker.sh?); stop it first" >&2; exit 1; fi
	rm -rf "$(HOME)/.cache/realtime-operator"
