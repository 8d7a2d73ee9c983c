#!/usr/bin/env bash
# Lays out ./lego (git-ignored), the local replacement of github.com/go-acme/lego/v5 that Traefik
# links for ACME: the version this module's go.mod requires, copied from the Go module cache
# (downloaded and checked against go.sum's checksum database like any module), minus the DNS
# providers whose SDK modules the Go module proxy refuses, and their lines in the provider
# registry (providers/dns/zz_gen_dns_providers.go). Deterministic: same input, same output; a
# rerun replaces the folder. Run by install.sh and regen-go-mods.sh before they touch this module.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
DROP="alidns aliesa azion dnsimple edgedns edgeone huaweicloud oraclecloud regfish sakuracloud tencentcloud ucloud yandexcloud"
MOD=github.com/go-acme/lego/v5
version=$(awk -v m="$MOD" '$1 == m && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == m {print $3; exit}' "$HERE/go.mod")
[[ -n "$version" ]] || { echo "prepare-lego.sh: no $MOD requirement in go.mod" >&2; exit 1; }
src=$(cd "$HERE" && GOFLAGS=-mod=readonly go mod download -json "$MOD@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[[ -d "$src" ]] || { echo "prepare-lego.sh: could not download $MOD@$version" >&2; exit 1; }
dst="$HERE/lego" tmp="$HERE/lego.tmp"
rm -rf "$tmp"
cp -R "$src" "$tmp"
chmod -R u+w "$tmp"
reg="$tmp/providers/dns/zz_gen_dns_providers.go"
for p in $DROP; do
  [[ -d "$tmp/providers/dns/$p" ]] || { echo "prepare-lego.sh: $MOD@$version has no provider $p" >&2; exit 1; }
  rm -rf "$tmp/providers/dns/$p"
done
# Drop each removed provider's import line and its `case "...":` + `return p.NewDNSProvider()` pair.
awk -v drop="$DROP" '
  BEGIN { n = split(drop, d, " "); for (i = 1; i <= n; i++) gone[d[i]] = 1 }
  match($0, /^\t"github\.com\/go-acme\/lego\/v5\/providers\/dns\/[a-z0-9]+"$/) {
    p = $0; sub(/^.*\//, "", p); sub(/"$/, "", p); if (p in gone) next
  }
  /^\tcase / {
    c = $0; getline r; p = r; sub(/^\t\treturn /, "", p); sub(/\..*$/, "", p)
    if (!(p in gone)) { print c; print r }
    next
  }
  { print }
' "$reg" > "$reg.new"
mv "$reg.new" "$reg"
for p in $DROP; do
  if grep -q "\b$p\." "$reg"; then echo "prepare-lego.sh: $p is still in the registry" >&2; exit 1; fi
done
gofmt -l "$reg" | grep -q . && { echo "prepare-lego.sh: the patched registry is not gofmt-clean" >&2; exit 1; }
rm -rf "$dst"
mv "$tmp" "$dst"
