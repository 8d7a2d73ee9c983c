#!/usr/bin/env bash
# Builds the project's container images as OCI image-layout archives, with no Docker, no registry
# and no network except Debian's package mirror (for the base root filesystems):
#
#   e2e/node/images.sh --out DIR --server BIN --operator BIN [--pause BIN] [--client DIR] [--app DIR]
#
# Writes DIR/server.oci.tar, DIR/operator.oci.tar, DIR/redis.oci.tar (and DIR/pause.oci.tar with
# --pause) and prints one line per image on stdout, nothing else (progress goes to stderr):
#
#   server=localhost/realtime-operator/realtime-server:0123456789ab /abs/DIR/server.oci.tar
#
# `ctr -n k8s.io images import ARCHIVE` names each image from its index.json annotations. The tag
# is the first 12 hex digits of the image manifest's sha256: a rebuilt binary gives a new tag, so a
# stale image in a node can never stand in for a new one.
#
# Images (one Debian bookworm `mmdebstrap --variant=minbase` root filesystem; the binaries are
# built on this Debian 12 machine, so its glibc is the one they need):
#   server    base layer + /usr/local/bin/realtime-server, user 65532:65532, BIND/PORT/ADMIN_PORT
#             env, 3000/tcp and 9090/tcp (the contract of docker/realtime-server.Dockerfile)
#   operator  base layer + /usr/local/bin/realtime-operator, user 65532:65532
#   redis     one layer: the base root filesystem + Debian's redis-server and redis-tools (apt
#             inside it); user 999:999, Cmd ["redis-server"] and no Entrypoint, so the
#             StatefulSet's args (redis-server ...) run as given; `sh` and `redis-cli` serve its
#             readiness probe; /data owned by 999 (the working directory)
#   pause     one layer with the given static binary at /pause, user 65535:65535 (the sandbox image)
#   client    base layer + this machine's Node.js (/usr/local/bin/node) + the test client folder
#             DIR (e2e/client: the official socket.io-client and the checks that run in pods) at
#             /client, user 65532:65532, Entrypoint ["/usr/local/bin/node"]
#   app       the same for DIR = examples/node-chat (a plain socket.io server with
#             @socket.io/redis-adapter) at /app, Entrypoint ["/usr/local/bin/node", "/app/index.js"]
#
# Caches (under ${RT_CACHE_DIR:-$HOME/.cache/realtime-operator}/images):
#   rootfs-<base|redis>-<suite>-<arch>-<key>.tar (+ .sha256)   the layer tarball of a root
#       filesystem, keyed by the suite, architecture, package lists, sources, dpkg excludes and
#       ROOTFS_RECIPE; building one needs root (mmdebstrap --mode=root) and the Debian mirror.
#       Delete them to pick up newer Debian packages (security updates).
#   An archive is rebuilt only when its key (this script, the binary's sha256, the root
#   filesystem key) changes: DIR/.<name>.oci.key holds it.
#
# Settings (environment): RT_CACHE_DIR; RT_DEBIAN_MIRROR (http://deb.debian.org/debian);
# RT_DEBIAN_SECURITY_MIRROR (http://deb.debian.org/debian-security).
set -euo pipefail
umask 022

PROG=images.sh
SELF=$(readlink -f "${BASH_SOURCE[0]}")

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
usage() {
	cat >&2 <<'EOF'
usage: e2e/node/images.sh --out DIR --server BIN --operator BIN [--pause BIN] [--client DIR] [--app DIR]
Builds OCI image archives DIR/{server,operator,redis[,pause][,client][,app]}.oci.tar and prints
NAME=REFERENCE ARCHIVE_PATH per image on stdout.
EOF
}

OUT='' SERVER_BIN='' OPERATOR_BIN='' PAUSE_BIN='' CLIENT_DIR='' APP_DIR=''
while [[ $# -gt 0 ]]; do
	case $1 in
	--out | --server | --operator | --pause | --client | --app)
		[[ $# -ge 2 ]] || {
			usage
			die "$1 needs a value"
		}
		case $1 in
		--out) OUT=$2 ;;
		--server) SERVER_BIN=$2 ;;
		--operator) OPERATOR_BIN=$2 ;;
		--pause) PAUSE_BIN=$2 ;;
		--client) CLIENT_DIR=$2 ;;
		--app) APP_DIR=$2 ;;
		esac
		shift 2
		;;
	--out=*) OUT=${1#*=} && shift ;;
	--server=*) SERVER_BIN=${1#*=} && shift ;;
	--operator=*) OPERATOR_BIN=${1#*=} && shift ;;
	--pause=*) PAUSE_BIN=${1#*=} && shift ;;
	--client=*) CLIENT_DIR=${1#*=} && shift ;;
	--app=*) APP_DIR=${1#*=} && shift ;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage
		die "unknown argument: $1"
		;;
	esac
done
if [[ -z $OUT || -z $SERVER_BIN || -z $OPERATOR_BIN ]]; then
	usage
	exit 2
fi
for tool in jq sha256sum tar od dpkg flock; do
	command -v "$tool" >/dev/null || die "$tool not found"
done

# --- platform -------------------------------------------------------------------------------
DPKG_ARCH=$(dpkg --print-architecture)
case $DPKG_ARCH in
amd64) OCI_ARCH=amd64 ELF_MACHINE=3e00 ;;
arm64) OCI_ARCH=arm64 ELF_MACHINE=b700 ;;
*) die "unsupported architecture $DPKG_ARCH (amd64 and arm64 are)" ;;
esac

# Each binary must be an ELF file for this architecture (a cheap check that catches a wrong path).
check_elf() { # LABEL PATH
	[[ -f $2 && -r $2 ]] || die "$1 binary $2: no such file"
	local head
	head=$(od -An -tx1 -N20 "$2" | tr -d ' \n')
	[[ ${head:0:8} == 7f454c46 ]] || die "$1 binary $2 is not an ELF executable"
	[[ ${head:36:4} == "$ELF_MACHINE" ]] || die "$1 binary $2 is not built for $DPKG_ARCH"
}
SERVER_BIN=$(readlink -f "$SERVER_BIN")
OPERATOR_BIN=$(readlink -f "$OPERATOR_BIN")
check_elf server "$SERVER_BIN"
check_elf operator "$OPERATOR_BIN"
if [[ -n $PAUSE_BIN ]]; then
	PAUSE_BIN=$(readlink -f "$PAUSE_BIN")
	check_elf pause "$PAUSE_BIN"
	# The pause image has no libc: the binary must be static.
	if ldd "$PAUSE_BIN" 2>/dev/null | grep -q '=>'; then
		die "pause binary $PAUSE_BIN is dynamically linked (build it with gcc -static)"
	fi
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CACHE=${RT_CACHE_DIR:-$HOME/.cache/realtime-operator}/images
mkdir -p "$CACHE"

# --- root filesystems -----------------------------------------------------------------------
SUITE=bookworm
# Bump when the way a root filesystem is made changes (options, hooks, excludes below): it is
# part of the cache key, so the cached tarballs are rebuilt.
ROOTFS_RECIPE=1
MIRROR=${RT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${RT_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SOURCES=(
	"deb $MIRROR $SUITE main"
	"deb $MIRROR $SUITE-updates main"
	"deb $SECURITY_MIRROR $SUITE-security main"
)
# No manuals, docs (copyright files stay) or translations in the images.
DPKG_OPTS=(
	'path-exclude=/usr/share/man/*'
	'path-exclude=/usr/share/info/*'
	'path-exclude=/usr/share/doc/*'
	'path-include=/usr/share/doc/*/copyright'
	'path-exclude=/usr/share/locale/*'
	'path-exclude=/usr/share/lintian/*'
)
# Fixed times: mmdebstrap's own files, every mtime in a layer, the image config's `created`.
EPOCH=0
CREATED=1970-01-01T00:00:00Z
# Extra packages of the base (none: libc and libgcc are in minbase).
BASE_PACKAGES=()
# init-system-helpers (essential) depends on "usrmerge | usr-is-merged": left alone, apt takes
# usrmerge, which pulls in perl (about 55 MB). mmdebstrap's merged-usr hook makes the /usr
# symlinks the way debootstrap does and installs usr-is-merged instead.
MERGED_USR_HOOK=/usr/share/mmdebstrap/hooks/merged-usr
# Installed on top of the base root filesystem (its tarball is the starting point).
REDIS_PACKAGES=(redis-server redis-tools)

BASE_KEY=$(
	{
		printf 'recipe=%s\nsuite=%s\narch=%s\nvariant=minbase\nepoch=%s\n' \
			"$ROOTFS_RECIPE" "$SUITE" "$DPKG_ARCH" "$EPOCH"
		printf 'package=%s\n' "${BASE_PACKAGES[@]}"
		printf 'hook=%s\n' "$MERGED_USR_HOOK"
		printf 'source=%s\n' "${SOURCES[@]}"
		printf 'dpkgopt=%s\n' "${DPKG_OPTS[@]}"
	} | sha256sum | cut -c1-16
)
REDIS_KEY=$(printf '%s\n' "base=$BASE_KEY" "${REDIS_PACKAGES[@]/#/package=}" | sha256sum | cut -c1-16)
BASE_ROOTFS=$CACHE/rootfs-base-$SUITE-$DPKG_ARCH-$BASE_KEY.tar
REDIS_ROOTFS=$CACHE/rootfs-redis-$SUITE-$DPKG_ARCH-$REDIS_KEY.tar

# Deterministic layer tar of DIR's contents (sorted, fixed mtimes, numeric owners kept).
layer_tar() { # DIR OUTPUT [TAR_OPTION...]
	local dir=$1 out=$2
	shift 2
	tar --create --file="$out" --format=gnu --sort=name --mtime="@$EPOCH" --numeric-owner \
		--directory="$dir" "$@" .
}

# Removes a directory tree that may hold leftover mounts (an interrupted mmdebstrap mounts
# /proc, /sys and /dev inside its target): unmount first and never cross into another filesystem.
remove_tree() { # DIR
	local dir=$1 mnt
	[[ -e $dir ]] || return 0
	while read -r mnt; do
		if [[ -n $mnt ]]; then umount -l "$mnt" 2>/dev/null || true; fi
	done < <(findmnt -rn -o TARGET 2>/dev/null | grep -F "$dir/" | sort -r || true)
	rm -rf --one-file-system "$dir"
}

# Temporary directories and files, removed at exit (also on failure).
CLEANUP_DIRS=()
cleanup() {
	local d
	for d in "${CLEANUP_DIRS[@]}"; do
		remove_tree "$d"
	done
}
trap cleanup EXIT

# Builds (once) the layer tarball TARBALL (base or redis) unless cached.
build_rootfs() { # base|redis TARBALL
	local name=$1 tarball=$2
	[[ -f $tarball && -f $tarball.sha256 ]] && return 0
	[[ $name == base ]] || build_rootfs base "$BASE_ROOTFS"

	[[ $EUID -eq 0 ]] || die "building the $name root filesystem needs root (mmdebstrap --mode=root)"
	command -v mmdebstrap >/dev/null || die "mmdebstrap not found (apt-get install mmdebstrap)"
	local lock
	exec {lock}>"$tarball.lock"
	flock "$lock"
	if [[ -f $tarball && -f $tarball.sha256 ]]; then # built meanwhile by another run
		exec {lock}>&-
		return 0
	fi
	local work
	work=$(mktemp -d "$CACHE/.rootfs-$name.XXXXXX")
	CLEANUP_DIRS+=("$work")
	local args=(--mode=root --format=directory "--architectures=$DPKG_ARCH") opt suite sources
	if [[ $name == base ]]; then
		[[ -d $MERGED_USR_HOOK ]] || die "$MERGED_USR_HOOK not found (mmdebstrap too old?)"
		args+=(--variant=minbase "--hook-dir=$MERGED_USR_HOOK")
		if [[ ${#BASE_PACKAGES[@]} -gt 0 ]]; then
			args+=("--include=$(
				IFS=,
				echo "${BASE_PACKAGES[*]}"
			)")
		fi
		for opt in "${DPKG_OPTS[@]}"; do
			args+=("--dpkgopt=$opt")
		done
		suite=$SUITE sources=("${SOURCES[@]}")
		log "building the base root filesystem ($SUITE minbase${BASE_PACKAGES[*]:+ + ${BASE_PACKAGES[*]}}) with mmdebstrap..."
	else
		# The base tarball as the starting point (its apt sources and dpkg excludes included), then
		# apt inside the chroot: what mmdebstrap(1) shows for refining an existing chroot.
		args+=(--variant=custom "--setup-hook=tar-in $BASE_ROOTFS /"
			"--customize-hook=chroot \"\$1\" env DEBIAN_FRONTEND=noninteractive apt-get install --yes --no-install-recommends ${REDIS_PACKAGES[*]}")
		suite='' sources=()
		log "building the $name root filesystem (base + ${REDIS_PACKAGES[*]}) with mmdebstrap..."
	fi
	# The runtime bind-mounts these; the host's copies would make the result host-dependent.
	# shellcheck disable=SC2016 # $1 is expanded by mmdebstrap's hook shell
	args+=(--customize-hook='rm -f "$1/etc/resolv.conf" "$1/etc/hostname"')
	local start=$SECONDS
	SOURCE_DATE_EPOCH=$EPOCH mmdebstrap "${args[@]}" "$suite" "$work/rootfs" "${sources[@]}" >&2 ||
		die "mmdebstrap failed for the $name root filesystem"
	if [[ $name == redis ]]; then
		# The working directory and volume mount point, writable by the redis user without a volume.
		install -d -m 0755 -o 999 -g 999 "$work/rootfs/data"
	fi
	# Device nodes and runtime directories come from the container runtime, not the image.
	layer_tar "$work/rootfs" "$work/layer.tar" \
		--exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
		--exclude='./run/*' --exclude='./tmp/*'
	sha256sum "$work/layer.tar" | cut -d' ' -f1 >"$tarball.sha256.tmp"
	mv "$tarball.sha256.tmp" "$tarball.sha256"
	mv "$work/layer.tar" "$tarball"
	remove_tree "$work"
	exec {lock}>&-
	log "$name root filesystem: $(du -h "$tarball" | cut -f1) in $((SECONDS - start)) s -> $tarball"
}

# --- OCI image assembly ---------------------------------------------------------------------
SELF_SHA=$(sha256sum "$SELF" | cut -d' ' -f1)
REPO_PREFIX=localhost/realtime-operator
PATH_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

labels_json() { # TITLE DESCRIPTION
	jq -cn --arg t "$1" --arg d "$2" '{
		"org.opencontainers.image.title": $t,
		"org.opencontainers.image.description": $d,
		"org.opencontainers.image.source": "https://github.com/realtime-operator/realtime-operator",
		"org.opencontainers.image.licenses": "Apache-2.0"
	}'
}

# Adds FILE as a blob of the layout in STAGE (hard link, copy across filesystems); sets BLOB_DIGEST
# and BLOB_SIZE. DIGEST may be given when already known.
add_blob() { # STAGE FILE [DIGEST]
	local stage=$1 file=$2 digest=${3:-}
	[[ -n $digest ]] || digest=$(sha256sum "$file" | cut -d' ' -f1)
	ln -f "$file" "$stage/blobs/sha256/$digest" 2>/dev/null || cp "$file" "$stage/blobs/sha256/$digest"
	BLOB_DIGEST=sha256:$digest
	BLOB_SIZE=$(stat -c %s "$file")
}

# Writes OUT/NAME.oci.tar: an OCI layout with one manifest whose layers are the given
# "TAR_FILE[:SHA256_HEX]" items (uncompressed) and whose config has CONFIG_JSON as `config`.
# Sets IMAGE_REF.
assemble() { # NAME REPO CONFIG_JSON LAYER...
	local name=$1 repo=$2 cfg=$3
	shift 3
	local stage
	stage=$(mktemp -d "$CACHE/.stage-$name.XXXXXX")
	CLEANUP_DIRS+=("$stage")
	mkdir -p "$stage/blobs/sha256"
	local layers='[]' diff_ids='[]' item file sha
	for item in "$@"; do
		file=$item sha=''
		if [[ $item =~ ^(.*):([0-9a-f]{64})$ ]]; then
			file=${BASH_REMATCH[1]} sha=${BASH_REMATCH[2]}
		fi
		add_blob "$stage" "$file" "$sha"
		layers=$(jq -c --arg d "$BLOB_DIGEST" --argjson s "$BLOB_SIZE" \
			'. + [{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $d, size: $s}]' <<<"$layers")
		diff_ids=$(jq -c --arg d "$BLOB_DIGEST" '. + [$d]' <<<"$diff_ids")
	done
	jq -cnj --arg created "$CREATED" --arg arch "$OCI_ARCH" --argjson cfg "$cfg" --argjson ids "$diff_ids" \
		'{created: $created, architecture: $arch, os: "linux", config: $cfg,
		  rootfs: {type: "layers", diff_ids: $ids}}' >"$stage/config.json"
	add_blob "$stage" "$stage/config.json"
	local config_digest=$BLOB_DIGEST config_size=$BLOB_SIZE
	jq -cnj --arg d "$config_digest" --argjson s "$config_size" --argjson layers "$layers" \
		'{schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
		  config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $d, size: $s},
		  layers: $layers}' >"$stage/manifest.json"
	add_blob "$stage" "$stage/manifest.json"
	rm -f "$stage/config.json" "$stage/manifest.json"
	IMAGE_REF=$REPO_PREFIX/$repo:${BLOB_DIGEST:7:12}
	jq -cnj --arg d "$BLOB_DIGEST" --argjson s "$BLOB_SIZE" --arg ref "$IMAGE_REF" --arg arch "$OCI_ARCH" \
		'{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
		  manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $d, size: $s,
		    platform: {architecture: $arch, os: "linux"},
		    annotations: {"io.containerd.image.name": $ref, "org.opencontainers.image.ref.name": $ref}}]}' \
		>"$stage/index.json"
	printf '{"imageLayoutVersion":"1.0.0"}' >"$stage/oci-layout"
	local tmp=$OUT/.$name.oci.tar.$$
	CLEANUP_DIRS+=("$tmp")
	tar --create --file="$tmp" --format=gnu --sort=name --mtime="@$EPOCH" \
		--owner=0 --group=0 --numeric-owner --directory="$stage" blobs index.json oci-layout
	mv "$tmp" "$OUT/$name.oci.tar"
	remove_tree "$stage"
}

# A layer holding one file (mode 0755, owned by root) at PATH_IN_IMAGE; sets APP_LAYER.
file_layer() { # NAME SOURCE PATH_IN_IMAGE
	local dir
	dir=$(mktemp -d "$CACHE/.layer-$1.XXXXXX")
	CLEANUP_DIRS+=("$dir")
	install -D -m 0755 "$2" "$dir/root/${3#/}"
	tar --create --file="$dir/layer.tar" --format=gnu --sort=name --mtime="@$EPOCH" \
		--owner=0 --group=0 --numeric-owner --directory="$dir/root" "$(cut -d/ -f2 <<<"$3")"
	APP_LAYER=$dir/layer.tar
}

# Prints the result line of NAME and returns 0 if OUT/NAME.oci.tar was built from KEY.
up_to_date() { # NAME KEY
	local keyfile=$OUT/.$1.oci.key key ref
	[[ -f $OUT/$1.oci.tar && -f $keyfile ]] || return 1
	{ read -r key && read -r ref; } <"$keyfile" || return 1
	[[ $key == "$2" && -n $ref ]] || return 1
	printf '%s=%s %s\n' "$1" "$ref" "$OUT/$1.oci.tar"
}
record() { # NAME KEY
	printf '%s\n%s\n' "$2" "$IMAGE_REF" >"$OUT/.$1.oci.key"
	log "$1: $IMAGE_REF ($(du -h "$OUT/$1.oci.tar" | cut -f1))"
	printf '%s=%s %s\n' "$1" "$IMAGE_REF" "$OUT/$1.oci.tar"
}
image_key() { # NAME PART...
	printf '%s\n' "self=$SELF_SHA" "arch=$OCI_ARCH" "$@" | sha256sum | cut -d' ' -f1
}
# Image built from the base root filesystem plus one binary.
binary_image() { # NAME REPO BINARY PATH_IN_IMAGE CONFIG_JSON
	local name=$1 repo=$2 bin=$3 dest=$4 cfg=$5 key
	key=$(image_key "name=$name" "base=$BASE_KEY" "bin=$(sha256sum "$bin" | cut -d' ' -f1)")
	up_to_date "$name" "$key" && return 0
	build_rootfs base "$BASE_ROOTFS"
	file_layer "$name" "$bin" "$dest"
	assemble "$name" "$repo" "$cfg" "$BASE_ROOTFS:$(cat "$BASE_ROOTFS.sha256")" "$APP_LAYER"
	record "$name" "$key"
}

SERVER_CFG=$(jq -cn --arg path "$PATH_ENV" --argjson labels "$(labels_json realtime-server \
	'Horizontally scaled socket.io gateway (socketioxide + Redis adapter)')" '{
	User: "65532:65532", Env: [$path, "BIND=0.0.0.0", "PORT=3000", "ADMIN_PORT=9090"],
	Entrypoint: ["/usr/local/bin/realtime-server"], ExposedPorts: {"3000/tcp": {}, "9090/tcp": {}},
	WorkingDir: "/", Labels: $labels}')
OPERATOR_CFG=$(jq -cn --arg path "$PATH_ENV" --argjson labels "$(labels_json realtime-operator \
	'Kubernetes operator for RealtimeCluster (horizontally scaled socket.io)')" '{
	User: "65532:65532", Env: [$path], Entrypoint: ["/usr/local/bin/realtime-operator"],
	WorkingDir: "/", Labels: $labels}')
REDIS_CFG=$(jq -cn --arg path "$PATH_ENV" --argjson labels "$(labels_json redis \
	"Debian $SUITE redis-server for the operator's managed Redis")" '{
	User: "999:999", Env: [$path], Cmd: ["redis-server"], ExposedPorts: {"6379/tcp": {}},
	WorkingDir: "/data", Labels: $labels}')
PAUSE_CFG=$(jq -cn --arg path "$PATH_ENV" '{
	User: "65535:65535", Env: [$path], Entrypoint: ["/pause"], WorkingDir: "/"}')

binary_image server realtime-server "$SERVER_BIN" /usr/local/bin/realtime-server "$SERVER_CFG"
binary_image operator realtime-operator "$OPERATOR_BIN" /usr/local/bin/realtime-operator "$OPERATOR_CFG"

key=$(image_key name=redis "rootfs=$REDIS_KEY")
if ! up_to_date redis "$key"; then
	build_rootfs redis "$REDIS_ROOTFS"
	assemble redis redis "$REDIS_CFG" "$REDIS_ROOTFS:$(cat "$REDIS_ROOTFS.sha256")"
	record redis "$key"
fi

if [[ -n $PAUSE_BIN ]]; then
	key=$(image_key name=pause "bin=$(sha256sum "$PAUSE_BIN" | cut -d' ' -f1)")
	if ! up_to_date pause "$key"; then
		file_layer pause "$PAUSE_BIN" /pause
		assemble pause pause "$PAUSE_CFG" "$APP_LAYER"
		record pause "$key"
	fi
fi

# Image of this machine's Node.js plus a folder with its node_modules, at /<name of the folder
# in the image>, user 65532:65532.
node_image() { # NAME REPO DIR DEST REQUIRED_MODULE ENTRYPOINT_JSON DESCRIPTION
	local name=$1 repo=$2 src dest=$4 module=$5 entry=$6 desc=$7 cfg sum key dir
	src=$(readlink -f "$3")
	[[ -d $src/node_modules/$module ]] || die "$src has no node_modules/$module (npm ci in it first)"
	NODE_BIN=$(readlink -f "$(command -v node)") || die "node not found (the $name image carries it)"
	check_elf node "$NODE_BIN"
	cfg=$(jq -cn --arg path "$PATH_ENV" --arg dest "$dest" --argjson entry "$entry" \
		--argjson labels "$(labels_json "$repo" "$desc")" '{
		User: "65532:65532", Env: [$path, "HOME=/tmp"], Entrypoint: $entry,
		WorkingDir: $dest, Labels: $labels}')
	# The key covers node's binary and every file of the folder.
	sum=$(cd "$src" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
	key=$(image_key "name=$name" "base=$BASE_KEY" "node=$(sha256sum "$NODE_BIN" | cut -d' ' -f1)" "dir=$sum" "dest=$dest" "entry=$entry")
	up_to_date "$name" "$key" && return 0
	build_rootfs base "$BASE_ROOTFS"
	dir=$(mktemp -d "$CACHE/.layer-$name.XXXXXX")
	CLEANUP_DIRS+=("$dir")
	install -D -m 0755 "$NODE_BIN" "$dir/root/usr/local/bin/node"
	mkdir -p "$dir/root$dest"
	cp -a "$src/." "$dir/root$dest/"
	chmod -R a+rX "$dir/root$dest"
	tar --create --file="$dir/layer.tar" --format=gnu --sort=name --mtime="@$EPOCH" \
		--owner=0 --group=0 --numeric-owner --directory="$dir/root" usr "${dest#/}"
	assemble "$name" "$repo" "$cfg" "$BASE_ROOTFS:$(cat "$BASE_ROOTFS.sha256")" "$dir/layer.tar"
	record "$name" "$key"
}

if [[ -n $CLIENT_DIR ]]; then
	node_image client realtime-e2e-client "$CLIENT_DIR" /client socket.io-client '["/usr/local/bin/node"]' \
		'Node.js and the official socket.io-client, for checks that run in pods'
fi
if [[ -n $APP_DIR ]]; then
	node_image app realtime-node-chat "$APP_DIR" /app socket.io '["/usr/local/bin/node", "/app/index.js"]' \
		'A plain socket.io chat server with @socket.io/redis-adapter (examples/node-chat)'
fi
