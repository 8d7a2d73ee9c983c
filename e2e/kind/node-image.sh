#!/usr/bin/env bash
# Builds a kind node image offline: no registry, no `kind build node-image` (it fetches images with
# `ctr content fetch` and builds containerd, runc and the CNI plugins from git). Its steps, by hand:
#
#   e2e/kind/node-image.sh            prints: node=IMAGE  (progress on stderr)
#   e2e/kind/node-image.sh --prepare  only the tools and the cached root filesystem tarballs (no
#                                     Docker daemon needed: the slow part, before a daemon runs)
#
#   1. the base root filesystem: Debian bookworm (mmdebstrap) with systemd, containerd, runc, the
#      CNI plugins, iptables, conntrack, ... plus kind's own files (images/base/files of the
#      sigs.k8s.io/kind module at KIND_VERSION: entrypoint, containerd and kubelet units, kubeadm
#      drop-ins, sysctls) and kubeadm, kubelet, kubectl in /usr/bin (e2e/tools/install.sh, built
#      from the Go modules of versions.env); containerd's config gets the local pause image as its
#      sandbox image and `restrict_oom_score_adj = true` (this VM lacks CAP_SYS_RESOURCE); a bridge
#      CNI conflist (10.247.0.0/24, the pod subnet of e2e/kind/cluster-offline.yaml) stands in for
#      kindnet, which the Go module proxy does not serve;
#   2. the control plane's images from the same local binaries, under the names kubeadm asks for:
#      kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy (+ iptables) at
#      K8S_VERSION, coredns (the trimmed CoreDNS of e2e/tools/go/coredns) at COREDNS_VERSION,
#      pause, and etcd as registry.k8s.io/etcd:ETCD_VERSION (cluster-offline.yaml sets kubeadm's
#      etcd imageTag to it);
#   3. a container of the base image imports them into its containerd (`ctr images import
#      --no-unpack`, as kind does) and is committed as the node image.
#
# The image is tagged localhost/realtime-operator/kind-node:K8S_VERSION-<key>; the key covers this
# script, the versions and the binaries, so an existing image is reused (nothing is built).
# Needs root, mmdebstrap, Go (first run) and a Docker daemon (on these machines run it through
# e2e/kind/with-docker.sh). Settings: RT_CACHE_DIR; RT_DEBIAN_MIRROR; RT_DEBIAN_SECURITY_MIRROR.
set -euo pipefail
umask 022
PROG=node-image.sh
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
PREPARE=0
[[ ${1:-} == --prepare || ${1:-} == --print-key ]] && PREPARE=1
[[ $EUID -eq 0 ]] || die "needs root (mmdebstrap --mode=root)"
for tool in mmdebstrap go jq sha256sum; do command -v "$tool" >/dev/null || die "$tool not found"; done
if [[ $PREPARE == 0 ]] && ! docker version >/dev/null 2>&1; then
	die "no Docker daemon (on these machines: e2e/kind/with-docker.sh $0)"
fi
# shellcheck source=../tools/versions.env
source "$ROOT/e2e/tools/versions.env"
POD_BRIDGE_SUBNET=10.247.0.0/24

T0=$SECONDS
CP_BIN=$("$ROOT/e2e/tools/install.sh" control-plane | tail -n1)
NODE_BIN=$("$ROOT/e2e/tools/install.sh" node | tail -n1)
KIND_BIN=$("$ROOT/e2e/tools/install.sh" kind | tail -n1)
KIND_SRC=$(cd "$ROOT/e2e/tools/go/kind" && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" |
	jq -r .Dir)
[[ -f $KIND_SRC/images/base/files/usr/local/bin/entrypoint ]] || die "no images/base/files in sigs.k8s.io/kind@$KIND_VERSION"

declare -A BIN=(
	[kube-apiserver]=$CP_BIN/kube-apiserver [kube-controller-manager]=$CP_BIN/kube-controller-manager
	[kubectl]=$CP_BIN/kubectl [etcd]=$CP_BIN/etcd [kube-scheduler]=$NODE_BIN/kube-scheduler
	[kube-proxy]=$NODE_BIN/kube-proxy [kubelet]=$NODE_BIN/kubelet [coredns]=$NODE_BIN/coredns
	[pause]=$NODE_BIN/pause [kubeadm]=$KIND_BIN/kubeadm
)
for b in "${!BIN[@]}"; do [[ -x ${BIN[$b]} ]] || die "${BIN[$b]} missing"; done

# Image names kubeadm uses for this version (etcd: ours, see above).
mapfile -t KUBEADM_IMAGES < <("${BIN[kubeadm]}" config images list --kubernetes-version "$K8S_VERSION")
image_for() { printf '%s\n' "${KUBEADM_IMAGES[@]}" | grep -E "/$1:" | head -n1; }
PAUSE_IMAGE=$(image_for pause)
COREDNS_IMAGE=$(image_for coredns)
[[ -n $PAUSE_IMAGE && -n $COREDNS_IMAGE ]] || die "kubeadm config images list gave no pause/coredns image"
[[ ${COREDNS_IMAGE##*:} == "$COREDNS_VERSION" ]] ||
	log "note: kubeadm expects $COREDNS_IMAGE; it gets the local CoreDNS $COREDNS_VERSION under that name"
ETCD_IMAGE=registry.k8s.io/etcd:$ETCD_VERSION
grep -q "imageTag: $ETCD_VERSION\$" "$ROOT/e2e/kind/cluster-offline.yaml" ||
	die "e2e/kind/cluster-offline.yaml must set kubeadm's etcd imageTag to $ETCD_VERSION (versions.env)"

# Bump when the way the image is made changes (packages, customize.sh, component images).
RECIPE=1
KEY=$({
	echo "recipe=$RECIPE"
	echo "$K8S_VERSION $KIND_VERSION $ETCD_VERSION $COREDNS_VERSION $POD_BRIDGE_SUBNET"
	for b in $(printf '%s\n' "${!BIN[@]}" | sort); do sha256sum "${BIN[$b]}" | cut -d' ' -f1; done
} | sha256sum | cut -c1-12)
NODE_IMAGE=localhost/realtime-operator/kind-node:$K8S_VERSION-$KEY
if [[ ${1:-} == --print-key ]]; then
	echo "$KEY"
	exit 0
fi
if [[ $PREPARE == 0 ]] && docker image inspect "$NODE_IMAGE" >/dev/null 2>&1; then
	log "$NODE_IMAGE exists"
	echo "node=$NODE_IMAGE"
	exit 0
fi

CACHE=${RT_CACHE_DIR:-$HOME/.cache/realtime-operator}/images
mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/.kind-node.XXXXXX")
BUILD_CONTAINER=''
cleanup() {
	[[ -n $BUILD_CONTAINER ]] && docker rm -f -v "$BUILD_CONTAINER" >/dev/null 2>&1
	rm -rf "$WORK"
}
trap cleanup EXIT

MIRROR=${RT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${RT_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SOURCES=("deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" "deb $SECURITY_MIRROR bookworm-security main")
DPKG_OPTS=('path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*' 'path-exclude=/usr/share/doc/*'
	'path-include=/usr/share/doc/*/copyright' 'path-exclude=/usr/share/locale/*')
# Cached: $CACHE/kind-<name>-<KEY>.tar, made once.
mmdebstrap_tar() { # OUT PACKAGES [HOOK_SCRIPT]
	[[ -f $1 ]] && return 0
	local args=(--mode=root --format=tar --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
		"--include=$2") opt
	for opt in "${DPKG_OPTS[@]}"; do args+=("--dpkgopt=$opt"); done
	# shellcheck disable=SC2016 # $1 is expanded by mmdebstrap's hook shell
	args+=(--customize-hook='rm -f "$1/etc/resolv.conf" "$1/etc/hostname"')
	# shellcheck disable=SC2016
	[[ -n ${3:-} ]] && args+=("--customize-hook=$3 \"\$1\"")
	SOURCE_DATE_EPOCH=0 mmdebstrap "${args[@]}" bookworm "$1.tmp" "${SOURCES[@]}" >&2
	mv "$1.tmp" "$1"
}
NODE_TAR=$CACHE/kind-node-base-$KEY.tar
MINBASE_TAR=$CACHE/kind-component-base-$KEY.tar
PROXYBASE_TAR=$CACHE/kind-proxy-base-$KEY.tar

# ---- 1. the node's base ----------------------------------------------------------------------
log "1/3 base root filesystem (mmdebstrap, kind $KIND_VERSION files, kubeadm/kubelet/kubectl $K8S_VERSION)"
t=$SECONDS
cat >"$WORK/customize.sh" <<EOF
#!/bin/bash
set -euo pipefail
r=\$1
F=$KIND_SRC/images/base/files
install -m 0755 \$F/usr/local/bin/* \$r/usr/local/bin/
mkdir -p \$r/kind/bin \$r/LICENSES \$r/etc/containerd \$r/etc/default \$r/etc/sysctl.d \$r/etc/systemd/system/kubelet.service.d
install -m 0644 \$F/kind/README.txt \$r/kind/
install -m 0755 \$F/kind/bin/* \$r/kind/bin/
install -m 0644 \$F/LICENSES/* \$r/LICENSES/
install -m 0644 \$F/etc/crictl.yaml \$r/etc/
install -m 0644 \$F/etc/default/* \$r/etc/default/
install -m 0644 \$F/etc/sysctl.d/* \$r/etc/sysctl.d/
install -m 0644 \$F/etc/systemd/system/*.service \$F/etc/systemd/system/*.slice \$r/etc/systemd/system/
install -m 0644 \$F/etc/systemd/system/kubelet.service.d/* \$r/etc/systemd/system/kubelet.service.d/
# containerd: kind's config, with the local pause image, restrict_oom_score_adj and no fuse-overlayfs.
sed -e 's|sandbox_image = .*|sandbox_image = "$PAUSE_IMAGE"|' \
    -e 's|restrict_oom_score_adj = false|restrict_oom_score_adj = true|' \
    -e '/^\[proxy_plugins/,/^  address/d' \$F/etc/containerd/config.toml >\$r/etc/containerd/config.toml
grep -q 'restrict_oom_score_adj = true' \$r/etc/containerd/config.toml
chroot \$r ctr oci spec | jq '.hooks.createContainer[.hooks.createContainer| length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
    | jq 'del(.process.rlimits)' >\$r/etc/containerd/cri-base.json
# Debian's containerd and runc where kind's units and configs look for them.
ln -sf /usr/bin/containerd \$r/usr/local/bin/containerd
ln -sf /usr/bin/ctr \$r/usr/local/bin/ctr
mkdir -p \$r/opt/cni
ln -sfn /usr/lib/cni \$r/opt/cni/bin
install -m 0755 ${BIN[kubeadm]} ${BIN[kubelet]} ${BIN[kubectl]} \$r/usr/bin/
# The CNI: a bridge on the node (kindnet is not available offline).
mkdir -p \$r/etc/cni/net.d
cat >\$r/etc/cni/net.d/10-rt-bridge.conflist <<'CNI'
{
  "cniVersion": "0.4.0",
  "name": "rt-kind",
  "plugins": [
    {"type": "bridge", "bridge": "rtkind0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_BRIDGE_SUBNET"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
CNI
# What kind's base Dockerfile does to systemd.
find \$r/lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete
rm -f \$r/lib/systemd/system/multi-user.target.wants/* \$r/etc/systemd/system/*.wants/* \
      \$r/lib/systemd/system/local-fs.target.wants/* \$r/lib/systemd/system/sockets.target.wants/*udev* \
      \$r/lib/systemd/system/sockets.target.wants/*initctl* \$r/lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >>\$r/etc/systemd/journald.conf
ln -sf /usr/lib/systemd/systemd \$r/sbin/init
chroot \$r systemctl enable kubelet.service containerd.service undo-mount-hacks.service
chroot \$r systemctl mask systemd-binfmt.service
mkdir -p \$r/etc/kubernetes/manifests
echo "$K8S_VERSION" >\$r/kind/version
EOF
chmod +x "$WORK/customize.sh"
mmdebstrap_tar "$NODE_TAR" \
	systemd,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,bash,ca-certificates,jq,procps,containerd,runc,containernetworking-plugins,socat,e2fsprogs \
	"$WORK/customize.sh"
mmdebstrap_tar "$MINBASE_TAR" ca-certificates
mmdebstrap_tar "$PROXYBASE_TAR" iptables,conntrack,kmod
if [[ $PREPARE == 1 ]]; then
	log "prepared $NODE_TAR, $MINBASE_TAR, $PROXYBASE_TAR in $((SECONDS - T0)) s"
	exit 0
fi
docker import --change 'ENV container=docker' \
	--change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' \
	"$NODE_TAR" "localhost/realtime-operator/kind-node-base:$KEY" >/dev/null
# systemd stops on SIGRTMIN+3 (docker import/commit cannot set STOPSIGNAL; a build step can).
printf 'FROM localhost/realtime-operator/kind-node-base:%s\nSTOPSIGNAL SIGRTMIN+3\n' "$KEY" |
	DOCKER_BUILDKIT=0 docker build -q --network none -t "localhost/realtime-operator/kind-node-base:$KEY" - >/dev/null
log "base: $((SECONDS - t)) s"

# ---- 2. the control plane's images -----------------------------------------------------------
log "2/3 component images from the local binaries"
t=$SECONDS
docker import --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "$MINBASE_TAR" \
	"localhost/realtime-operator/kind-component-base:$KEY" >/dev/null
docker import --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "$PROXYBASE_TAR" \
	"localhost/realtime-operator/kind-proxy-base:$KEY" >/dev/null
component() { # IMAGE BINARY BASE DEST ENTRYPOINT_JSON USER
	local dir
	dir=$(mktemp -d "$WORK/ctx.XXXXXX")
	cp "${BIN[$2]}" "$dir/$2"
	{
		echo "FROM $3"
		echo "COPY $2 $4"
		[[ -n $5 ]] && echo "ENTRYPOINT $5"
		[[ -n $6 ]] && echo "USER $6"
	} >"$dir/Dockerfile"
	DOCKER_BUILDKIT=0 docker build -q --network none -t "$1" "$dir" >/dev/null
	rm -rf "$dir"
}
CB=localhost/realtime-operator/kind-component-base:$KEY
for c in kube-apiserver kube-controller-manager kube-scheduler; do
	component "registry.k8s.io/$c:$K8S_VERSION" "$c" "$CB" "/usr/local/bin/$c" '' ''
done
component "registry.k8s.io/kube-proxy:$K8S_VERSION" kube-proxy "localhost/realtime-operator/kind-proxy-base:$KEY" \
	/usr/local/bin/kube-proxy '' ''
component "$ETCD_IMAGE" etcd "$CB" /usr/local/bin/etcd '' ''
component "$COREDNS_IMAGE" coredns "$CB" /coredns '["/coredns"]' ''
component "$PAUSE_IMAGE" pause scratch /pause '["/pause"]' '65535:65535'
IMAGES=("registry.k8s.io/kube-apiserver:$K8S_VERSION" "registry.k8s.io/kube-controller-manager:$K8S_VERSION"
	"registry.k8s.io/kube-scheduler:$K8S_VERSION" "registry.k8s.io/kube-proxy:$K8S_VERSION"
	"$ETCD_IMAGE" "$COREDNS_IMAGE" "$PAUSE_IMAGE")
log "components: $((SECONDS - t)) s"

# ---- 3. import into the node's containerd, commit --------------------------------------------
log "3/3 importing ${#IMAGES[@]} images into the node's containerd, docker commit"
t=$SECONDS
BUILD_CONTAINER=rt-kind-node-build-$$
docker run -d --name "$BUILD_CONTAINER" --network none --entrypoint=sleep --security-opt seccomp=unconfined \
	"localhost/realtime-operator/kind-node-base:$KEY" infinity >/dev/null
docker exec "$BUILD_CONTAINER" bash -c 'nohup containerd >/dev/null 2>&1 &'
docker exec "$BUILD_CONTAINER" bash -c 'for i in $(seq 1 50); do [ -S /run/containerd/containerd.sock ] && ctr version >/dev/null 2>&1 && exit 0; sleep 0.2; done; exit 1' ||
	die "containerd did not start in the build container"
docker save "${IMAGES[@]}" | docker exec -i "$BUILD_CONTAINER" \
	ctr --namespace=k8s.io images import --all-platforms --no-unpack --digests - >&2
docker exec "$BUILD_CONTAINER" ctr --namespace=k8s.io images list -q >"$WORK/imported"
for i in "${IMAGES[@]}"; do grep -qxF "$i" "$WORK/imported" || die "$i not in the node's containerd"; done
docker exec "$BUILD_CONTAINER" pkill containerd
sleep 1
docker commit --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' \
	--change 'ENV container=docker' \
	"$BUILD_CONTAINER" "$NODE_IMAGE" >/dev/null
if [[ $(docker image inspect -f '{{.Config.StopSignal}}' "$NODE_IMAGE") != SIGRTMIN+3 ]]; then
	printf 'FROM %s\nSTOPSIGNAL SIGRTMIN+3\n' "$NODE_IMAGE" |
		DOCKER_BUILDKIT=0 docker build -q --network none -t "$NODE_IMAGE" - >/dev/null
fi
docker rmi "localhost/realtime-operator/kind-node-base:$KEY" >/dev/null 2>&1 || true
log "import + commit: $((SECONDS - t)) s; $NODE_IMAGE built in $((SECONDS - T0)) s"
echo "node=$NODE_IMAGE"
