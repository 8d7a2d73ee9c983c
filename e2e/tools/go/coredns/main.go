// A CoreDNS for the test node: upstream's coremain with only the plugins a single-node cluster's
// DNS needs (the real binary links ~60, most with cloud SDKs). Same shape as upstream's
// coredns.go + core/plugin/zplugin.go; dnsserver.Directives is trimmed to the linked plugins,
// keeping upstream's order (plugin/plugin.cfg), which decides how a query flows through them.
// No `forward`: pods must have no route out, so names outside the cluster are not resolved
// (only `hosts` entries).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The linked plugins in upstream's order (core/dnsserver/zdirectives.go). metadata, prometheus
// (the metrics plugin) and transfer are not imported here but come with kubernetes and cache,
// which use them; they are listed so that every plugin `coredns -plugins` shows is usable.
var directives = []string{
	"metadata",
	"bind",
	"ready",
	"health",
	"prometheus",
	"errors",
	"log",
	"cache",
	"transfer",
	"hosts",
	"kubernetes",
}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}
