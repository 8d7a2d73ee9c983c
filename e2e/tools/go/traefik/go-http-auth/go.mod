module github.com/abbot/go-http-auth

go 1.11

require (
	golang.org/x/crypto v0.0.0-20200317142112-1b76d66859c6
	golang.org/x/net v0.0.0-20190404232315-eb5bcb51f2a3
)
