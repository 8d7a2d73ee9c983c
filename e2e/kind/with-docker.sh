#!/usr/bin/env bash
# Runs one command with a private Docker daemon on a machine that has Debian's docker.io but no
# running Docker (these CI-like VMs), then takes everything down again:
#
#   e2e/kind/with-docker.sh COMMAND [ARG...]        e.g. e2e/kind/with-docker.sh docker info
#
# What it does, in order (root only):
#   1. takes the machine-wide lock of the real-node tier, /run/realtime-e2e-node.lock (flock,
#      exclusive; waits up to RT_DOCKER_LOCK_WAIT seconds, 1800 by default): Docker and kind
#      change iptables, sysctls and bridges the real node (e2e/src/node.rs) also uses, so the two
#      never run at the same time;
#   2. records what Docker will change: the iptables/ip6tables rules and chains (filter, nat),
#      the FORWARD policies, the bridges, and sysctls that dockerd or a kind node's kubelet set
#      (ip_forward, bridge-nf-call-*, vm.overcommit_memory, kernel.panic*, ...);
#   3. starts dockerd in the background (no systemd needed) with its own socket, exec root and
#      config (/run/rt-docker), its data root in ${RT_CACHE_DIR:-~/.cache/realtime-operator}/docker
#      (images and build cache survive between runs), the default address pool 172.30.0.0/16,
#      no IPv6, and as its default runtime a runc wrapper that removes CAP_SYS_RESOURCE from each
#      container's capability sets: this VM's bounding set lacks that capability, so
#      `docker run --privileged` (which kind always uses) fails without it;
#   4. fences the containers in: DOCKER-USER rejects anything coming from a Docker bridge that
#      would leave through another interface (containers and kind's pods reach only each other,
#      the host's own addresses and published ports on 127.0.0.1);
#   5. runs COMMAND with DOCKER_HOST pointing at the daemon and Debian's docker CLI first on PATH;
#   6. on exit, also on failure or Ctrl-C: removes every container of this daemon (kind clusters
#      included), stops dockerd and its containerd, deletes the bridges it made, removes the
#      iptables rules and chains that appeared, restores the FORWARD policies and the sysctls,
#      and only then releases the lock. It exits with COMMAND's status.
#
# Settings (environment): RT_DOCKER_LOCK_WAIT (seconds, 1800); RT_CACHE_DIR; RT_DOCKER_DATA_ROOT
# (the data root, default $RT_CACHE_DIR/docker); RT_DOCKER_POOL (172.30.0.0/16).
# On a machine where Docker already runs (Docker Desktop, a systemd docker.service) this script is
# not needed: run the commands directly.
set -Eeuo pipefail
umask 022

PROG=with-docker.sh
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
	log "error: $*"
	exit 2
}
[[ $# -gt 0 ]] || die "usage: e2e/kind/with-docker.sh COMMAND [ARG...]"
[[ $EUID -eq 0 ]] || die "needs root (dockerd, iptables)"
for tool in dockerd iptables iptables-save ip6tables-save flock jq ip sysctl; do
	command -v "$tool" >/dev/null || die "$tool not found (apt-get install docker.io iptables jq)"
done
RUNC=$(command -v runc || true)
[[ -n $RUNC ]] || die "runc not found (apt-get install runc)"
DOCKER_CLI=/usr/bin/docker
[[ -x $DOCKER_CLI ]] || DOCKER_CLI=$(command -v docker || true)
[[ -n $DOCKER_CLI ]] || die "docker CLI not found (apt-get install docker.io)"

CACHE=${RT_CACHE_DIR:-$HOME/.cache/realtime-operator}
DATA_ROOT=${RT_DOCKER_DATA_ROOT:-$CACHE/docker}
POOL=${RT_DOCKER_POOL:-172.30.0.0/16}
STATE=/run/rt-docker
SOCK=$STATE/docker.sock
LOCK_FILE=/run/realtime-e2e-node.lock

# ---- 1. the lock -----------------------------------------------------------------------------
exec {LOCK_FD}>"$LOCK_FILE"
log "waiting for $LOCK_FILE (the real-node tier's lock)..."
flock -x -w "${RT_DOCKER_LOCK_WAIT:-1800}" "$LOCK_FD" || die "could not take $LOCK_FILE"
log "holding $LOCK_FILE"
if [[ -S $SOCK ]] && pgrep -F "$STATE/dockerd.pid" dockerd >/dev/null 2>&1; then
	die "a dockerd of an earlier run still runs ($STATE/dockerd.pid); stop it first"
fi

# ---- 2. what Docker changes, recorded --------------------------------------------------------
mkdir -p "$STATE" "$DATA_ROOT"
SYSCTLS=(net.ipv4.ip_forward net.ipv6.conf.all.forwarding net.bridge.bridge-nf-call-iptables
	net.bridge.bridge-nf-call-ip6tables vm.overcommit_memory kernel.panic kernel.panic_on_oops
	kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.netfilter.nf_conntrack_max
	fs.inotify.max_user_watches fs.inotify.max_user_instances)
declare -A SYSCTL_BEFORE=()
for k in "${SYSCTLS[@]}"; do
	if v=$(sysctl -n "$k" 2>/dev/null); then SYSCTL_BEFORE[$k]=$v; fi
done
for fam in iptables ip6tables; do
	for t in filter nat; do
		"$fam-save" -t "$t" 2>/dev/null | grep -E '^(-A|:)' >"$STATE/$fam-$t.before" || true
	done
done
FORWARD_POLICY=$(iptables -S FORWARD | awk '$1 == "-P" {print $3}')
FORWARD6_POLICY=$(ip6tables -S FORWARD 2>/dev/null | awk '$1 == "-P" {print $3}')
ip -o link show type bridge | awk -F': ' '{print $2}' | sort >"$STATE/bridges.before"

# ---- 6. teardown (set before anything is started) --------------------------------------------
DOCKERD_PID=''
# shellcheck disable=SC2317 # called by the EXIT trap
teardown() {
	local rc=$? t fam k c
	trap - EXIT INT TERM
	set +e
	log "teardown: containers, dockerd, bridges, iptables, sysctls"
	if [[ -n $DOCKERD_PID ]] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
		c=$("$DOCKER_CLI" -H "unix://$SOCK" ps -aq 2>/dev/null)
		if [[ -n $c ]]; then
			# shellcheck disable=SC2086 # one id per word
			"$DOCKER_CLI" -H "unix://$SOCK" rm -f -v $c >/dev/null 2>&1
		fi
		kill -TERM "$DOCKERD_PID" 2>/dev/null
		for _ in $(seq 1 60); do
			kill -0 "$DOCKERD_PID" 2>/dev/null || break
			sleep 0.5
		done
		if kill -0 "$DOCKERD_PID" 2>/dev/null; then
			log "dockerd did not stop in 30 s: SIGKILL"
			kill -KILL "$DOCKERD_PID" 2>/dev/null
			sleep 1
		fi
	fi
	# dockerd's own containerd and any shim left (found by their state folder, started by it).
	for p in $(pgrep -f "$STATE/" 2>/dev/null); do
		[[ $p == "$$" ]] && continue
		log "stopping leftover process $p: $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-100)"
		kill -KILL "$p" 2>/dev/null
	done
	# Mounts dockerd may have left under its folders.
	findmnt -rn -o TARGET 2>/dev/null | grep -E "^($STATE|$DATA_ROOT)/" | sort -r |
		while read -r m; do umount -l "$m" 2>/dev/null; done
	# Bridges that appeared (docker0, br-<network id> of kind's network).
	ip -o link show type bridge | awk -F': ' '{print $2}' | sort >"$STATE/bridges.after"
	comm -13 "$STATE/bridges.before" "$STATE/bridges.after" | while read -r b; do
		ip link delete "$b" 2>/dev/null && log "deleted bridge $b"
	done
	# iptables: rules that appeared in built-in chains, then chains that appeared.
	for fam in iptables ip6tables; do
		for t in filter nat; do
			"$fam-save" -t "$t" 2>/dev/null | grep -E '^(-A|:)' >"$STATE/$fam-$t.after"
			grep '^-A' "$STATE/$fam-$t.after" | grep -vxF -f <(grep '^-A' "$STATE/$fam-$t.before" || true) |
				while read -r rule; do
					eval "$fam -t $t -D ${rule#-A }" 2>/dev/null
				done
			local_new=$(grep '^:' "$STATE/$fam-$t.after" | cut -d' ' -f1 | cut -c2- |
				grep -vxF -f <(grep '^:' "$STATE/$fam-$t.before" | cut -d' ' -f1 | cut -c2- || true) || true)
			for c in $local_new; do "$fam" -t "$t" -F "$c" 2>/dev/null; done
			for c in $local_new; do "$fam" -t "$t" -X "$c" 2>/dev/null; done
		done
	done
	[[ -n $FORWARD_POLICY ]] && iptables -P FORWARD "$FORWARD_POLICY"
	[[ -n $FORWARD6_POLICY ]] && ip6tables -P FORWARD "$FORWARD6_POLICY"
	for k in "${!SYSCTL_BEFORE[@]}"; do
		if [[ $(sysctl -n "$k" 2>/dev/null) != "${SYSCTL_BEFORE[$k]}" ]]; then
			sysctl -q -w "$k=${SYSCTL_BEFORE[$k]}" && log "restored $k=${SYSCTL_BEFORE[$k]}"
		fi
	done
	# Check: nothing of Docker is left in iptables, FORWARD policy as before.
	if iptables-save | grep -qE 'DOCKER|docker0'; then
		log "WARNING: Docker rules remain in iptables"
		[[ $rc -ne 0 ]] || rc=1
	fi
	rm -f "$SOCK"
	log "teardown done; releasing $LOCK_FILE"
	flock -u "$LOCK_FD"
	exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- 3. dockerd ------------------------------------------------------------------------------
# The runc wrapper: CAP_SYS_RESOURCE out of the container's (create/run: bundle config.json) or
# the exec'd process's (exec --process FILE) capability sets, then the real runc.
cat >"$STATE/runc" <<EOF
#!/bin/bash
bundle='' process=''
args=("\$@")
for ((i = 0; i < \${#args[@]}; i++)); do
	case \${args[i]} in
	--bundle | -b) bundle=\${args[i + 1]} ;;
	--bundle=*) bundle=\${args[i]#*=} ;;
	--process | -p) process=\${args[i + 1]} ;;
	--process=*) process=\${args[i]#*=} ;;
	esac
done
strip() { # FILE JQ_PATH
	[[ -f \$1 ]] || return 0
	$(command -v jq) "if \$2 then \$2 |= map_values(if type == \"array\" then map(select(. != \"CAP_SYS_RESOURCE\")) else . end) else . end" "\$1" >"\$1.rt-tmp" && mv "\$1.rt-tmp" "\$1"
}
[[ -n \$bundle ]] && strip "\$bundle/config.json" .process.capabilities
[[ -n \$process ]] && strip "\$process" .capabilities
exec $RUNC "\$@"
EOF
chmod 0755 "$STATE/runc"
jq -n --arg runc "$STATE/runc" --arg pool "$POOL" '{
	"runtimes": {"rt-runc": {"path": $runc}},
	"default-runtime": "rt-runc",
	"default-address-pools": [{"base": $pool, "size": 24}],
	"bip": "172.30.255.1/24",
	"ipv6": false,
	"log-level": "warn",
	"features": {"buildkit": false}
}' >"$STATE/daemon.json"
log "starting dockerd (data root $DATA_ROOT, log $STATE/dockerd.log)"
# The lock's descriptor is not passed on: a daemon must never hold the lock after this script.
dockerd --config-file "$STATE/daemon.json" -H "unix://$SOCK" --exec-root "$STATE/exec" \
	--data-root "$DATA_ROOT" --pidfile "$STATE/dockerd.pid" {LOCK_FD}>&- </dev/null >"$STATE/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 1 120); do
	"$DOCKER_CLI" -H "unix://$SOCK" version >/dev/null 2>&1 && break
	kill -0 "$DOCKERD_PID" 2>/dev/null || {
		tail -20 "$STATE/dockerd.log" >&2
		die "dockerd exited"
	}
	sleep 0.5
done
"$DOCKER_CLI" -H "unix://$SOCK" version >/dev/null || die "dockerd did not answer in 60 s"

# ---- 4. the fence ----------------------------------------------------------------------------
iptables -N DOCKER-USER 2>/dev/null || true
iptables -I DOCKER-USER 1 -i docker0 ! -o docker0 -j REJECT --reject-with icmp-port-unreachable
iptables -I DOCKER-USER 1 -i br-+ ! -o br-+ -j REJECT --reject-with icmp-port-unreachable
iptables -I DOCKER-USER 1 -i br-+ -o br-+ -j ACCEPT
log "dockerd $("$DOCKER_CLI" -H "unix://$SOCK" version -f '{{.Server.Version}}') up; containers fenced in (DOCKER-USER)"

# ---- 5. the command --------------------------------------------------------------------------
mkdir -p "$STATE/bin"
ln -sf "$DOCKER_CLI" "$STATE/bin/docker"
export DOCKER_HOST="unix://$SOCK" PATH="$STATE/bin:$PATH"
set +e
"$@"
rc=$?
set -e
exit "$rc"
