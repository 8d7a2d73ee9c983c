#!/usr/bin/env bash
# shellcheck disable=SC2317 # the image functions are called by name (for w in ...)
# Makes, without any registry, the base images that docker/*.Dockerfile and the offline kind path
# take through build arguments, and loads them into the running Docker daemon:
#
#   docker/local-base-images.sh [--prepare] [runtime] [builder] [redis]     (none: all three)
#
# --prepare only makes the cached tarballs (no Docker daemon needed): the slow part can run
# before a daemon is started.
#
# Prints one NAME=IMAGE line per image on stdout (progress goes to stderr):
#   runtime  localhost/realtime-operator/base-runtime:bookworm-<key>
#            Debian bookworm minbase (glibc, libgcc) + ca-certificates: what the distroless/cc
#            runtime gives (RUNTIME_IMAGE=...). It has a shell and dpkg, unlike distroless.
#   builder  localhost/realtime-operator/base-rust:<rustc version>-bookworm-<key>
#            bookworm + gcc, libc6-dev, ca-certificates + this machine's Rust toolchain (the one
#            `rustc` runs, without its docs) + every crate of Cargo.lock, vendored (`cargo vendor`,
#            from this machine's cargo, which fetches from crates.io as its builds do) and named
#            as the crates-io source in $CARGO_HOME/config.toml with `net.offline = true`: the
#            Dockerfiles' `cargo build --locked` then needs no network (BUILDER_IMAGE=...).
#            Made again when Cargo.lock or the toolchain changes (both are in its key).
#   redis    localhost/realtime-operator/redis:bookworm-<key>
#            bookworm + Debian's redis-server and redis-tools, user 999, Cmd redis-server,
#            /data as working directory: the managed Redis offline (the chart's defaultRedisImage).
#
# The root filesystems come from mmdebstrap (Debian's package mirror, the only network used) and
# are cached as tarballs under ${RT_CACHE_DIR:-~/.cache/realtime-operator}/images/docker-*.tar;
# an image already in the daemon under its keyed tag is not made again.
# Needs root (mmdebstrap --mode=root), mmdebstrap, a reachable Docker daemon (DOCKER_HOST; on these
# machines run it through e2e/kind/with-docker.sh) and, for the builder, cargo and rustc.
# Settings (environment): RT_CACHE_DIR; RT_DEBIAN_MIRROR; RT_DEBIAN_SECURITY_MIRROR.
set -euo pipefail
umask 022

PROG=local-base-images.sh
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

PREPARE=0
if [[ ${1:-} == --prepare ]]; then
	PREPARE=1
	shift
fi
want=("$@")
[[ ${#want[@]} -gt 0 ]] || want=(runtime builder redis)
for w in "${want[@]}"; do
	case $w in runtime | builder | redis) ;; *) die "unknown image $w (runtime, builder, redis)" ;; esac
done
for tool in mmdebstrap sha256sum flock; do
	command -v "$tool" >/dev/null || die "$tool not found"
done
[[ $EUID -eq 0 ]] || die "needs root (mmdebstrap --mode=root)"
if [[ $PREPARE == 0 ]] && ! docker version >/dev/null 2>&1; then
	die "no Docker daemon (DOCKER_HOST=${DOCKER_HOST:-unset}); on these machines: e2e/kind/with-docker.sh $0 $*"
fi

CACHE=${RT_CACHE_DIR:-$HOME/.cache/realtime-operator}/images
mkdir -p "$CACHE"
SUITE=bookworm
ARCH=$(dpkg --print-architecture)
MIRROR=${RT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${RT_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SOURCES=("deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY_MIRROR $SUITE-security main")
DPKG_OPTS=('path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*' 'path-exclude=/usr/share/doc/*'
	'path-include=/usr/share/doc/*/copyright' 'path-exclude=/usr/share/locale/*' 'path-exclude=/usr/share/lintian/*')
MERGED_USR_HOOK=/usr/share/mmdebstrap/hooks/merged-usr
# Bump when the way an image is made changes (packages, hooks, layout): it is part of every key.
RECIPE=1
PATH_ENV=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Builds (once) a root filesystem tarball of minbase + PACKAGES, extra mmdebstrap args after --.
rootfs() { # NAME KEY PACKAGES [-- MMDEBSTRAP_ARG...]
	local name=$1 key=$2 packages=$3
	shift 3
	[[ ${1:-} == -- ]] && shift
	local tarball=$CACHE/docker-$name-$SUITE-$ARCH-$key.tar
	ROOTFS=$tarball
	[[ -f $tarball ]] && return 0
	local lock
	exec {lock}>"$tarball.lock"
	flock "$lock"
	if [[ ! -f $tarball ]]; then
		local args=(--mode=root --format=tar --variant=minbase "--architectures=$ARCH" "--hook-dir=$MERGED_USR_HOOK")
		[[ -n $packages ]] && args+=("--include=$packages")
		local opt
		for opt in "${DPKG_OPTS[@]}"; do args+=("--dpkgopt=$opt"); done
		# shellcheck disable=SC2016 # $1 is expanded by mmdebstrap's hook shell
		args+=(--customize-hook='rm -f "$1/etc/resolv.conf" "$1/etc/hostname"' "$@")
		log "building the $name root filesystem (bookworm minbase${packages:+ + $packages}) with mmdebstrap..."
		local t0=$SECONDS
		SOURCE_DATE_EPOCH=0 mmdebstrap "${args[@]}" "$SUITE" "$tarball.tmp" "${SOURCES[@]}" >&2 ||
			die "mmdebstrap failed for $name"
		mv "$tarball.tmp" "$tarball"
		log "$name root filesystem: $(du -h "$tarball" | cut -f1) in $((SECONDS - t0)) s"
	fi
	exec {lock}>&-
}

# docker import TARBALL as IMAGE unless the daemon has it; CHANGE... are Dockerfile instructions.
import() { # IMAGE TARBALL CHANGE...
	local image=$1 tarball=$2
	shift 2
	if [[ $PREPARE == 1 ]]; then
		log "prepared $tarball"
		return 0
	fi
	if ! docker image inspect "$image" >/dev/null 2>&1; then
		local changes=() c
		for c in "$@"; do changes+=(--change "$c"); done
		log "docker import $image"
		docker import "${changes[@]}" "$tarball" "$image" >/dev/null
	fi
	echo "$IMAGE_VAR=$image"
}

key_of() { printf '%s\n' "recipe=$RECIPE" "suite=$SUITE" "arch=$ARCH" "${SOURCES[@]}" "$@" | sha256sum | cut -c1-12; }

runtime() {
	local key
	key=$(key_of runtime ca-certificates)
	rootfs runtime "$key" ca-certificates
	IMAGE_VAR=runtime import "localhost/realtime-operator/base-runtime:$SUITE-$key" "$ROOTFS" \
		"ENV PATH=$PATH_ENV" 'WORKDIR /'
}

redis() {
	local key
	key=$(key_of redis redis-server redis-tools)
	# shellcheck disable=SC2016 # $1 is expanded by mmdebstrap's hook shell
	rootfs redis "$key" redis-server,redis-tools -- \
		--customize-hook='install -d -m 0755 -o 999 -g 999 "$1/data"'
	IMAGE_VAR=redis import "localhost/realtime-operator/redis:$SUITE-$key" "$ROOTFS" \
		"ENV PATH=$PATH_ENV" 'USER 999:999' 'WORKDIR /data' 'EXPOSE 6379' 'CMD ["redis-server"]'
}

builder() {
	{ command -v rustc >/dev/null && command -v cargo >/dev/null; } || die "rustc and cargo are needed for the builder image"
	local sysroot version lock_sha key
	sysroot=$(rustc --print sysroot)
	version=$(rustc --version | cut -d' ' -f2)
	lock_sha=$(sha256sum "$ROOT/Cargo.lock" | cut -c1-16)
	key=$(key_of builder gcc libc6-dev ca-certificates "rustc=$(rustc -Vv | sha256sum | cut -c1-16)" "lock=$lock_sha")
	local image=localhost/realtime-operator/base-rust:$version-$SUITE-$key
	local tarball=$CACHE/docker-builder-$SUITE-$ARCH-$key.tar
	if [[ $PREPARE == 0 ]] && docker image inspect "$image" >/dev/null 2>&1; then
		echo "builder=$image"
		return 0
	fi
	if [[ ! -f $tarball ]]; then
		local work t0=$SECONDS
		work=$(mktemp -d "$CACHE/.builder.XXXXXX")
		# shellcheck disable=SC2064 # expand now
		trap "rm -rf '$work'" EXIT
		log "cargo vendor (Cargo.lock $lock_sha) ..."
		(cd "$ROOT" && cargo vendor --locked --versioned-dirs "$work/vendor" >/dev/null) || die "cargo vendor failed"
		log "vendored $(find "$work/vendor" -mindepth 1 -maxdepth 1 | wc -l) crates ($(du -sh "$work/vendor" | cut -f1)) in $((SECONDS - t0)) s"
		cat >"$work/config.toml" <<-'EOF'
			# Every crate of the workspace's Cargo.lock is in /usr/local/cargo/vendor (cargo vendor): builds
			# in this image need no network.
			[source.crates-io]
			replace-with = "vendored-sources"

			[source.vendored-sources]
			directory = "/usr/local/cargo/vendor"

			[net]
			offline = true
		EOF
		rootfs builder-base "$(key_of builder-base gcc libc6-dev ca-certificates)" gcc,libc6-dev,ca-certificates
		local base_tar=$ROOTFS
		log "assembling the builder root filesystem (toolchain $sysroot without its docs) ..."
		mkdir -p "$work/root/usr/local/rust" "$work/root/usr/local/cargo"
		cp -a "$sysroot/bin" "$sysroot/lib" "$work/root/usr/local/rust/"
		if [[ -d $sysroot/libexec ]]; then cp -a "$sysroot/libexec" "$work/root/usr/local/rust/"; fi
		mv "$work/vendor" "$work/root/usr/local/cargo/vendor"
		mv "$work/config.toml" "$work/root/usr/local/cargo/config.toml"
		# One tarball: the Debian root filesystem, then the toolchain and crates on top.
		cp "$base_tar" "$work/builder.tar"
		tar --append --file="$work/builder.tar" --owner=0 --group=0 --numeric-owner -C "$work/root" usr/local/rust usr/local/cargo
		mv "$work/builder.tar" "$tarball"
		rm -rf "$work"
		trap - EXIT
		log "builder root filesystem: $(du -h "$tarball" | cut -f1) in $((SECONDS - t0)) s"
	fi
	IMAGE_VAR=builder import "$image" "$tarball" \
		"ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:$PATH_ENV" 'ENV CARGO_HOME=/usr/local/cargo' 'WORKDIR /'
}
for w in "${want[@]}"; do "$w"; done
