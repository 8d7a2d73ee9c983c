#!/usr/bin/env bash
# Builds both images from docker/*.Dockerfile and runs the server image the way the operator runs
# it (user 65532, read-only root file system, no capabilities, no privilege escalation) until its
# /healthz answers on 127.0.0.1; the operator image must run `--help` as 65532.
#
#   docker/test-images.sh                   needs a Docker daemon (DOCKER_HOST or the default)
#   make docker-test                        on these machines: the offline build below, through
#                                           e2e/kind/with-docker.sh (private dockerd, then teardown)
#
# Settings (environment):
#   RT_BUILDER=legacy|buildkit   legacy: DOCKER_BUILDKIT=0 (Debian's docker.io, no buildx);
#                                buildkit: `docker buildx build --load` when buildx exists, else
#                                DOCKER_BUILDKIT=1 (the daemon's built-in BuildKit). Default: legacy
#                                when buildx is missing, else buildkit.
#   RT_OFFLINE=1                 build from local base images (docker/local-base-images.sh: runtime
#                                and builder, made first) instead of rust:*-slim-trixie and
#                                distroless: no registry and no crates.io at build time
#   RT_IMAGE_TAG                 tag of the images (test); they are named realtime-server:TAG and
#                                realtime-operator:TAG
#   BUILDER_IMAGE, RUNTIME_IMAGE passed on as build arguments when set
# Prints the build durations and the result; exits non-zero if a build or a check fails.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PROG=test-images.sh
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
	log "FAIL: $*"
	exit 1
}
command -v docker >/dev/null || die "docker not found"
docker version >/dev/null 2>&1 || die "no Docker daemon (on these machines: make docker-test)"
command -v curl >/dev/null || die "curl not found"

TAG=${RT_IMAGE_TAG:-test}
if [[ -z ${RT_BUILDER:-} ]]; then
	if docker buildx version >/dev/null 2>&1; then RT_BUILDER=buildkit; else RT_BUILDER=legacy; fi
fi
build_args=(--build-arg "VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
	--build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)")
if [[ ${RT_OFFLINE:-0} == 1 ]]; then
	t0=$SECONDS
	bases=$(docker/local-base-images.sh runtime builder)
	log "local base images in $((SECONDS - t0)) s"
	: "${BUILDER_IMAGE:=$(sed -n 's/^builder=//p' <<<"$bases")}"
	: "${RUNTIME_IMAGE:=$(sed -n 's/^runtime=//p' <<<"$bases")}"
fi
[[ -n ${BUILDER_IMAGE:-} ]] && build_args+=(--build-arg "BUILDER_IMAGE=$BUILDER_IMAGE")
[[ -n ${RUNTIME_IMAGE:-} ]] && build_args+=(--build-arg "RUNTIME_IMAGE=$RUNTIME_IMAGE")

build() { # IMAGE
	local t0=$SECONDS
	log "building $1:$TAG ($RT_BUILDER builder${BUILDER_IMAGE:+, BUILDER_IMAGE=$BUILDER_IMAGE}${RUNTIME_IMAGE:+, RUNTIME_IMAGE=$RUNTIME_IMAGE})"
	case $RT_BUILDER in
	legacy) DOCKER_BUILDKIT=0 docker build -q -f "docker/$1.Dockerfile" -t "$1:$TAG" "${build_args[@]}" . >/dev/null ;;
	buildkit)
		if docker buildx version >/dev/null 2>&1; then
			docker buildx build --load --provenance=false -f "docker/$1.Dockerfile" -t "$1:$TAG" "${build_args[@]}" .
		else
			DOCKER_BUILDKIT=1 docker build -f "docker/$1.Dockerfile" -t "$1:$TAG" "${build_args[@]}" .
		fi
		;;
	*) die "RT_BUILDER must be legacy or buildkit" ;;
	esac || die "building $1 failed"
	log "built $1:$TAG in $((SECONDS - t0)) s ($(docker image inspect -f '{{.Size}}' "$1:$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
}
build realtime-server
build realtime-operator

# The images' own user is 65532 (the chart and the operator set it again in the pods).
for image in realtime-server realtime-operator; do
	user=$(docker image inspect -f '{{.Config.User}}' "$image:$TAG")
	[[ $user == 65532:65532 ]] || die "$image:$TAG runs as '$user', not 65532:65532"
done

name=rt-test-server-$$
cleanup() { docker rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
docker run -d --name "$name" --read-only --user 65532:65532 --cap-drop ALL \
	--security-opt no-new-privileges -p 127.0.0.1::9090 -p 127.0.0.1::3000 "realtime-server:$TAG" >/dev/null
port=$(docker port "$name" 9090/tcp | head -n1 | sed 's/.*://')
log "server container $name: admin port 9090 on 127.0.0.1:$port"
t0=$SECONDS
ok=0
for _ in $(seq 1 60); do
	if [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/healthz") == 200 ]]; then
		ok=1
		break
	fi
	[[ $(docker inspect -f '{{.State.Running}}' "$name") == true ]] || break
	sleep 0.5
done
if [[ $ok != 1 ]]; then
	docker logs "$name" >&2 || true
	die "realtime-server:$TAG did not answer /healthz"
fi
body=$(curl -s "http://127.0.0.1:$port/healthz")
sio_port=$(docker port "$name" 3000/tcp | head -n1 | sed 's/.*://')
handshake=$(curl -s "http://127.0.0.1:$sio_port/socket.io/?EIO=4&transport=polling" | head -c 40)
[[ $handshake == 0\{* ]] || die "no engine.io handshake on :3000 (got '$handshake')"
log "realtime-server:$TAG (uid 65532, read-only root, no capabilities): /healthz 200 '$body' after $((SECONDS - t0)) s; socket.io handshake '$handshake'"
docker run --rm --read-only --user 65532:65532 --cap-drop ALL "realtime-operator:$TAG" --help >/dev/null ||
	die "realtime-operator:$TAG --help failed"
log "realtime-operator:$TAG --help runs as 65532 on a read-only root"
echo "docker images: 2 passed, 0 failed"
