// Package ext stands in for Traefik's github.com/traefik/traefik/dynamic/ext, a nested module of
// the Traefik repository (pkg/config/dynamic/ext) that is not published on the Go module proxy.
// Traefik embeds these empty types in its dynamic configuration as extension points.
package ext

// HTTP is a dynamic.HTTP extension.
type HTTP struct{}

// Router is a dynamic.Router extension.
type Router struct{}

// RouterIng is a RouterIng extension for ingress provider annotations.
type RouterIng struct{}

// ToRouter converts RouterIng to a Router.
func (r RouterIng) ToRouter() Router { return Router{} }
