#!/usr/bin/env bash
# Lays out ./knp (git-ignored), the local replacement of sigs.k8s.io/kube-network-policies: the
# version this module's go.mod requires, copied from the Go module cache (downloaded and checked
# against go.sum like any module), with one change: its nftables rules hand packets to userspace
# with the `queue` expression (kernel nft_queue), which these VMs' kernels lack
# (CONFIG_NFT_QUEUE unset, no loadable modules); the same verdict through nft_compat's xtables
# NFQUEUE target (CONFIG_NETFILTER_XT_TARGET_NFQUEUE=y) is used instead (knp_xtqueue.go). And a
# nil check the version lacks (below).
# Deterministic; a rerun replaces the folder. Run by install.sh before it builds this module.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
MOD=sigs.k8s.io/kube-network-policies
version=$(awk -v m="$MOD" '$1 == m && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == m {print $3; exit}' "$HERE/go.mod")
[[ -n "$version" ]] || { echo "prepare-knp.sh: no $MOD requirement in go.mod" >&2; exit 1; }
src=$(cd "$HERE" && GOFLAGS=-mod=readonly go mod download -json "$MOD@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[[ -d "$src" ]] || { echo "prepare-knp.sh: could not download $MOD@$version" >&2; exit 1; }
dst="$HERE/knp" tmp="$HERE/knp.tmp"
rm -rf "$tmp"
cp -R "$src" "$tmp"
chmod -R u+w "$tmp"
pkg="$tmp/pkg/networkpolicy"
perl -0pi -e 's/queue := &expr\.Queue\{Num: uint16\(c\.config\.QueueID\)\}\n\tif c\.config\.FailOpen \{\n\t\tqueue\.Flag = expr\.QueueFlagBypass\n\t\}/queue := xtNFQueue(uint16(c.config.QueueID), c.config.FailOpen)/g' "$pkg/controller.go"
perl -0pi -e 's/&expr\.Queue\{Num: uint16\(n\.nfQueueID\), Flag: expr\.QueueFlagBypass\}/xtNFQueue(uint16(n.nfQueueID), true)/g' "$pkg/dnsagent.go"
# v0.8.0 dereferences its NRI plugin, nil when NRI is off (the node runs without it), for a
# packet from an address no pod has (the node's own, not root-owned traffic): it panics.
perl -0pi -e 's/(\n(\t+))podKey := c\.nriPlugin\.GetPodFromIP\(podIP\)/$1if c.nriPlugin == nil {$1\treturn nil$1}$1podKey := c.nriPlugin.GetPodFromIP(podIP)/' "$pkg/controller.go"
grep -q 'if c.nriPlugin == nil {' "$pkg/controller.go" || { echo "prepare-knp.sh: the NRI nil check was not applied" >&2; exit 1; }
if grep -n 'expr\.Queue' "$pkg"/*.go | grep -v _test.go; then echo "prepare-knp.sh: an expr.Queue is left" >&2; exit 1; fi
[[ $(grep -c 'xtNFQueue(' "$pkg/controller.go") == 2 ]] || { echo "prepare-knp.sh: controller.go not patched as expected" >&2; exit 1; }
cat > "$pkg/knp_xtqueue.go" <<'GO'
package networkpolicy

import (
	"encoding/binary"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
)

// xtNFQueue is `queue num N [bypass]` as nft_compat's xtables NFQUEUE target (revision 3,
// struct xt_NFQ_info_v3 {u16 queuenum; u16 queues_total; u16 flags}), for kernels without nft_queue.
func xtNFQueue(num uint16, bypass bool) *expr.Target {
	info := make([]byte, 8)
	binary.NativeEndian.PutUint16(info[0:], num)
	binary.NativeEndian.PutUint16(info[2:], 1)
	if bypass {
		binary.NativeEndian.PutUint16(info[4:], 1) // NFQ_FLAG_BYPASS
	}
	u := xt.Unknown(info)
	return &expr.Target{Name: "NFQUEUE", Rev: 3, Info: &u}
}
GO
gofmt -l "$pkg" | grep -q . && { echo "prepare-knp.sh: the patched package is not gofmt-clean" >&2; exit 1; }
rm -rf "$dst"
mv "$tmp" "$dst"
