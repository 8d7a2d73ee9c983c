#!/usr/bin/env bash
# Proves that the archives of e2e/node/images.sh work: builds them, imports them into a throwaway
# private containerd (its own root, state and socket under a temp dir; the CRI plugin is off) and
# runs each one the way the operator's pods do (read-only root filesystem, all capabilities
# dropped, the default seccomp profile, the image's own user):
#   redis     the StatefulSet's args (redis-server --requirepass ... --dir /data --appendonly no
#             --save "") with /data a host directory writable by gid 999 (an emptyDir with
#             fsGroup); the readiness probe's exact command through `ctr task exec`
#             (sh -c 'test "$(redis-cli ping)" = PONG', authenticated by REDISCLI_AUTH); SAVE
#             writes /data/dump.rdb as uid 999
#   server    its Entrypoint with BIND/PORT/ADMIN_PORT overridden, connected to that Redis:
#             /healthz and /readyz answer 200 on the admin port, 404 on the public one; runs as
#             65532; writing to / fails
#   operator  `realtime-operator --help` (binary and libraries load) as 65532
#   pause     runs until SIGTERM, then exits 0
# Host networking (ports on 127.0.0.1 only). Everything it made is removed at the end, also on
# failure: tasks and containers, the containerd, its mounts and its directory.
#
#   e2e/node/images-test.sh [--server BIN] [--operator BIN] [--pause BIN] [--debug] [--keep-out DIR]
#
# Binaries default to ${CARGO_TARGET_DIR:-$HOME/.cache/realtime-operator/target}/release/ (or
# debug/ with --debug); build them first with
#   cargo build --release -p realtime-server -p realtime-operator
# Without --pause, the pause binary is built with `gcc -static` from the kubernetes module's
# build/pause/linux/pause.c (version from e2e/tools/versions.env) when the Go module cache has it,
# else the pause image is skipped. --keep-out DIR writes the archives there instead of the temp dir.
# Root only (containerd, runc, mmdebstrap on a cold cache).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PROG='images-test.sh'
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
	log "FAIL: $*"
	exit 1
}

TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/realtime-operator/target}
PROFILE=release SERVER_BIN='' OPERATOR_BIN='' PAUSE_BIN='' OUT=''
while [[ $# -gt 0 ]]; do
	case $1 in
	--server) SERVER_BIN=${2:?} && shift 2 ;;
	--operator) OPERATOR_BIN=${2:?} && shift 2 ;;
	--pause) PAUSE_BIN=${2:?} && shift 2 ;;
	--keep-out) OUT=${2:?} && shift 2 ;;
	--debug) PROFILE=debug && shift ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' >&2
		exit 0
		;;
	*) die "unknown argument: $1" ;;
	esac
done
[[ $EUID -eq 0 ]] || die "needs root (containerd, runc)"
SERVER_BIN=${SERVER_BIN:-$TARGET_DIR/$PROFILE/realtime-server}
OPERATOR_BIN=${OPERATOR_BIN:-$TARGET_DIR/$PROFILE/realtime-operator}
for f in "$SERVER_BIN" "$OPERATOR_BIN"; do
	[[ -x $f ]] || die "$f missing: cargo build --${PROFILE/debug/profile=dev} -p realtime-server -p realtime-operator"
done
for tool in containerd ctr runc curl jq ss findmnt; do
	command -v "$tool" >/dev/null || die "$tool not found"
done

T=$(mktemp -d /tmp/rt-images-test.XXXXXX)
SOCK=$T/containerd.sock
CTRD_PID=''
RUN_CONTAINERD_EXISTED=false
[[ -e /run/containerd ]] && RUN_CONTAINERD_EXISTED=true
CTR=(ctr --address "$SOCK" --namespace k8s.io)

cleanup() {
	local rc=$? id pid mnt
	set +e
	if [[ -n $CTRD_PID ]] && kill -0 "$CTRD_PID" 2>/dev/null; then
		for id in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
			"${CTR[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1
		done
		sleep 0.5
		for id in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
			"${CTR[@]}" tasks rm -f "$id" >/dev/null 2>&1
		done
		for id in $("${CTR[@]}" containers ls -q 2>/dev/null); do
			"${CTR[@]}" containers rm "$id" >/dev/null 2>&1
		done
		kill "$CTRD_PID"
		for _ in $(seq 50); do
			kill -0 "$CTRD_PID" 2>/dev/null || break
			sleep 0.2
		done
		kill -0 "$CTRD_PID" 2>/dev/null && kill -9 "$CTRD_PID"
		wait "$CTRD_PID" 2>/dev/null
	fi
	# Shims of this containerd (their command line names its unique socket) that outlived it.
	for pid in $(pgrep -f -- "-address $SOCK" 2>/dev/null); do
		kill -9 "$pid" 2>/dev/null
	done
	# Background `ctr run`s of this script.
	for pid in $(jobs -p); do
		kill "$pid" 2>/dev/null
	done
	while read -r mnt; do
		[[ -n $mnt ]] && umount -l "$mnt"
	done < <(findmnt -rn -o TARGET | grep -F "$T/" | sort -r)
	rm -rf --one-file-system "$T"
	# containerd 1.6 puts shim sockets under /run/containerd/s whatever its state dir: remove the
	# directories if this test made them and they are empty again.
	if ! $RUN_CONTAINERD_EXISTED; then
		rmdir /run/containerd/s /run/containerd 2>/dev/null
	fi
	if [[ $rc -eq 0 ]]; then log "PASS"; else log "FAIL (exit $rc)"; fi
	exit "$rc"
}
trap cleanup EXIT

# --- pause binary ---------------------------------------------------------------------------
if [[ -z $PAUSE_BIN ]] && command -v gcc >/dev/null && command -v go >/dev/null; then
	K8S_VERSION=$(sed -n 's/^K8S_VERSION=//p' "$ROOT/e2e/tools/versions.env")
	src=$(go env GOMODCACHE)/k8s.io/kubernetes@$K8S_VERSION/build/pause/linux/pause.c
	if [[ -f $src ]]; then
		gcc -Os -static -DVERSION="$K8S_VERSION" -o "$T/pause" "$src"
		PAUSE_BIN=$T/pause
	fi
fi
[[ -n $PAUSE_BIN ]] || log "no pause binary (gcc, go or the kubernetes module missing): pause image skipped"

# --- build ----------------------------------------------------------------------------------
OUT=${OUT:-$T/out}
args=(--out "$OUT" --server "$SERVER_BIN" --operator "$OPERATOR_BIN")
[[ -n $PAUSE_BIN ]] && args+=(--pause "$PAUSE_BIN")
start=$SECONDS
lines=$("$ROOT/e2e/node/images.sh" "${args[@]}") || die "images.sh failed"
log "images.sh: $((SECONDS - start)) s"
declare -A REF TAR
while read -r nameref path; do
	[[ $nameref =~ ^([a-z]+)=(localhost/realtime-operator/[a-z-]+:[0-9a-f]{12})$ ]] ||
		die "unexpected images.sh output line: $nameref $path"
	REF[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
	TAR[${BASH_REMATCH[1]}]=$path
	[[ -f $path ]] || die "$path missing"
done <<<"$lines"
for name in server operator redis ${PAUSE_BIN:+pause}; do
	[[ -n ${REF[$name]:-} ]] || die "images.sh printed no $name line"
done

# --- archive contents -----------------------------------------------------------------------
# The image config of an archive (through index.json and the manifest).
image_config() { # ARCHIVE
	local m c
	m=$(tar -xOf "$1" index.json | jq -r '.manifests[0].digest')
	c=$(tar -xOf "$1" "blobs/sha256/${m#sha256:}" | jq -r '.config.digest')
	tar -xOf "$1" "blobs/sha256/${c#sha256:}"
}
expect_config() { # NAME JQ_EXPRESSION (must be true)
	image_config "${TAR[$1]}" | jq -e "$2" >/dev/null || die "$1 image config: not $2"
}
for name in "${!TAR[@]}"; do
	idx=$(tar -xOf "${TAR[$name]}" index.json)
	[[ $(jq -r '.manifests[0].annotations["io.containerd.image.name"]' <<<"$idx") == "${REF[$name]}" ]] ||
		die "$name: index.json lacks io.containerd.image.name ${REF[$name]}"
	digest=$(jq -r '.manifests[0].digest' <<<"$idx")
	[[ ${REF[$name]##*:} == "${digest:7:12}" ]] || die "$name: tag is not the manifest digest prefix"
done
expect_config server '.config.User == "65532:65532" and .config.Entrypoint == ["/usr/local/bin/realtime-server"]
	and (.config.Env | index("BIND=0.0.0.0") and index("PORT=3000") and index("ADMIN_PORT=9090"))
	and .config.ExposedPorts["3000/tcp"] == {} and .config.ExposedPorts["9090/tcp"] == {}'
expect_config operator '.config.User == "65532:65532" and .config.Entrypoint == ["/usr/local/bin/realtime-operator"]'
expect_config redis '.config.User == "999:999" and .config.Entrypoint == null and .config.Cmd == ["redis-server"]'
[[ -n $PAUSE_BIN ]] && expect_config pause '.config.Entrypoint == ["/pause"]'

# --- private containerd ---------------------------------------------------------------------
mkdir -p "$T/root" "$T/state" "$T/opt" "$T/fifo" "$T/runc"
cat >"$T/config.toml" <<EOF
version = 2
root = "$T/root"
state = "$T/state"
# No CRI: nothing here runs pods (and the VM's missing CAP_SYS_RESOURCE only bites CRI sandboxes).
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$T/opt"
EOF
containerd --config "$T/config.toml" >"$T/containerd.log" 2>&1 &
CTRD_PID=$!
for _ in $(seq 100); do
	"${CTR[@]}" version >/dev/null 2>&1 && break
	kill -0 "$CTRD_PID" 2>/dev/null || die "containerd exited: $(tail -5 "$T/containerd.log")"
	sleep 0.1
done
"${CTR[@]}" version >/dev/null || die "containerd did not answer on $SOCK"
log "private containerd up (pid $CTRD_PID, $SOCK)"

for name in "${!TAR[@]}"; do
	start=$SECONDS
	"${CTR[@]}" images import "${TAR[$name]}" >&2 || die "ctr images import ${TAR[$name]} failed"
	images=$("${CTR[@]}" images ls -q)
	grep -qxF "${REF[$name]}" <<<"$images" || die "import of $name did not name ${REF[$name]}"
	log "imported $name as ${REF[$name]} ($((SECONDS - start)) s)"
done

# --- runs -----------------------------------------------------------------------------------
# What the restricted pod security context gives every container. ctr 1.6 knows no
# `--cap-drop ALL`: drop each capability of its default set.
RUN=("${CTR[@]}" run --rm --net-host --read-only --seccomp --fifo-dir "$T/fifo" --runc-root "$T/runc")
for cap in CHOWN DAC_OVERRIDE FSETID FOWNER MKNOD NET_RAW SETGID SETUID SETFCAP SETPCAP \
	NET_BIND_SERVICE SYS_CHROOT KILL AUDIT_WRITE; do
	RUN+=(--cap-drop "CAP_$cap")
done
EXEC=("${CTR[@]}" tasks exec --fifo-dir "$T/fifo")
ID=rt-img-test-$$

free_port() {
	local p
	for _ in $(seq 50); do
		p=$((20000 + RANDOM % 20000))
		[[ -z $(ss -Htln "sport = :$p") ]] && echo "$p" && return 0
	done
	die "no free port"
}
wait_for() { # SECONDS COMMAND...
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || return 1
		sleep 0.2
	done
}
# wait_for, but gives up as soon as the background `ctr run` PID has exited.
wait_run() { # PID SECONDS COMMAND...
	local pid=$1 deadline=$((SECONDS + $2))
	shift 2
	until "$@" >/dev/null 2>&1; do
		kill -0 "$pid" 2>/dev/null || return 1
		((SECONDS < deadline)) || return 1
		sleep 0.2
	done
}
# Stops container ID (SIGTERM) and waits for its background `ctr run` (PID); returns its status.
stop_run() { # ID PID
	"${CTR[@]}" tasks kill "$1" >/dev/null 2>&1 || true
	local rc=0
	wait_for 30 bash -c "! kill -0 $2" || die "$1 did not stop on SIGTERM"
	wait "$2" || rc=$?
	return "$rc"
}

# redis: the StatefulSet's args; /data like an emptyDir with fsGroup 999.
RPORT=$(free_port)
mkdir -p "$T/data"
chown 0:999 "$T/data" && chmod 2775 "$T/data"
"${RUN[@]}" --env REDIS_PASSWORD=pw --env REDISCLI_AUTH=pw \
	--mount "type=bind,src=$T/data,dst=/data,options=rbind:rw" \
	"${REF[redis]}" "$ID-redis" \
	redis-server --requirepass pw --dir /data --appendonly no --save '' --port "$RPORT" \
	>"$T/redis.log" 2>&1 &
REDIS_RUN=$!
probe="test \"\$(redis-cli -p $RPORT ping)\" = PONG"
wait_run "$REDIS_RUN" 20 "${EXEC[@]}" --exec-id probe "$ID-redis" sh -c "$probe" ||
	die "redis readiness probe failed; log: $(tail -20 "$T/redis.log")"
[[ $("${EXEC[@]}" --exec-id uid "$ID-redis" id -u) == 999 ]] || die "redis does not run as 999"
[[ $("${EXEC[@]}" --exec-id ping "$ID-redis" redis-cli -p "$RPORT" ping) == PONG ]] || die "redis-cli ping"
"${EXEC[@]}" --exec-id save "$ID-redis" redis-cli -p "$RPORT" save >/dev/null || die "redis SAVE failed"
[[ $(stat -c %u "$T/data/dump.rdb" 2>/dev/null) == 999 ]] || die "SAVE did not write /data/dump.rdb as 999"
log "redis: probe passed, PONG, SAVE wrote /data/dump.rdb as uid 999 (port $RPORT)"

# server: its Entrypoint, BIND/PORT/ADMIN_PORT overridden, on that Redis.
SPORT=$(free_port)
APORT=$(free_port)
"${RUN[@]}" --env BIND=127.0.0.1 --env "PORT=$SPORT" --env "ADMIN_PORT=$APORT" --env SHUTDOWN_GRACE=1s \
	--env "REDIS_URL=redis://127.0.0.1:$RPORT" --env REDIS_PASSWORD=pw \
	"${REF[server]}" "$ID-server" >"$T/server.log" 2>&1 &
SERVER_RUN=$!
wait_run "$SERVER_RUN" 30 curl -fsS "http://127.0.0.1:$APORT/healthz" ||
	die "server /healthz (admin port) did not answer; log: $(tail -20 "$T/server.log")"
wait_run "$SERVER_RUN" 30 curl -fsS "http://127.0.0.1:$APORT/readyz" ||
	die "server /readyz (admin port) not 200 (Redis?); log: $(tail -20 "$T/server.log")"
[[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SPORT/readyz") == 404 ]] ||
	die "server /readyz is on the public port too"
[[ $("${EXEC[@]}" --exec-id uid "$ID-server" id -u) == 65532 ]] || die "server does not run as 65532"
rw=$("${EXEC[@]}" --exec-id rw "$ID-server" sh -c ': >/rw-test' 2>&1) && die "server root filesystem is writable"
[[ $rw == *"Read-only file system"* ]] || die "writing to the server's root failed, not as read-only: $rw"
stop_run "$ID-server" "$SERVER_RUN" || die "server exited with $? on SIGTERM; log: $(tail -20 "$T/server.log")"
log "server: /healthz and /readyz 200 on the admin port 127.0.0.1:$APORT (404 on $SPORT), uid 65532, read-only root, clean SIGTERM exit"
stop_run "$ID-redis" "$REDIS_RUN" || die "redis exited with $? on SIGTERM; log: $(tail -20 "$T/redis.log")"

# operator: the binary and its libraries load in the image.
"${RUN[@]}" "${REF[operator]}" "$ID-operator" /usr/local/bin/realtime-operator --help >"$T/operator.log" 2>&1 ||
	die "realtime-operator --help failed: $(tail -20 "$T/operator.log")"
grep -qi usage "$T/operator.log" || die "realtime-operator --help printed no usage"
log "operator: --help runs in the image"

if [[ -n $PAUSE_BIN ]]; then
	"${RUN[@]}" "${REF[pause]}" "$ID-pause" >"$T/pause.log" 2>&1 &
	PAUSE_RUN=$!
	wait_run "$PAUSE_RUN" 10 bash -c "${CTR[*]} tasks ls | grep -q '^$ID-pause .*RUNNING'" || die "pause not running"
	stop_run "$ID-pause" "$PAUSE_RUN" || die "pause exited with $? on SIGTERM"
	log "pause: runs, exits 0 on SIGTERM"
fi

log "archives: $(for n in "${!TAR[@]}"; do printf '%s %s; ' "$n" "$(du -h "${TAR[$n]}" | cut -f1)"; done)"
