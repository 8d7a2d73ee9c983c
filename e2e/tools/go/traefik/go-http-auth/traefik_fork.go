// Not in upstream v0.4.0 (the files beside this one are upstream v0.4.0, unchanged): the two
// functions that Traefik's fork (github.com/containous/go-http-auth, not served by the Go module
// proxy) adds and that Traefik calls. The fork also makes DigestAuth's client map concurrency-safe
// and reports out-of-order nonce counts as "stale"; neither is here (the test cluster uses no
// digest auth).

package auth

import (
	"fmt"
	"net/http"
	"strings"
	"time"
)

// CheckSecret returns true if the password matches the encrypted secret (htpasswd MD5, {SHA} or
// bcrypt), as BasicAuth.CheckAuth compares them.
func CheckSecret(password, secret string) bool {
	compare := compareFuncs[0].compare
	for _, cmp := range compareFuncs[1:] {
		if strings.HasPrefix(secret, cmp.prefix) {
			compare = cmp.compare
			break
		}
	}
	return compare([]byte(secret), []byte(password)) == nil
}

// RequireAuthStale is RequireAuth with stale="true" in the challenge, so a client can retry with
// the same credentials without prompting the user again.
func (a *DigestAuth) RequireAuthStale(w http.ResponseWriter, r *http.Request) {
	if len(a.clients) > a.ClientCacheSize+a.ClientCacheTolerance {
		a.Purge(a.ClientCacheTolerance * 2)
	}
	nonce := RandomKey()
	a.clients[nonce] = &digest_client{nc: 0, last_seen: time.Now().UnixNano()}
	w.Header().Set(contentType, a.Headers.V().UnauthContentType)
	w.Header().Set(a.Headers.V().Authenticate,
		fmt.Sprintf(`Digest realm="%s", nonce="%s", opaque="%s", stale="true", algorithm="MD5", qop="auth"`,
			a.Realm, nonce, a.Opaque))
	w.WriteHeader(a.Headers.V().UnauthCode)
	w.Write([]byte(a.Headers.V().UnauthResponse))
}
