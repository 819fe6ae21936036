package replicas_test

import (
	"fmt"
	"testing"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/pgserver"
)

// proxy is a dbtest.Proxy in front of a standby.
type proxy struct {
	*dbtest.Proxy
	t *testing.T
}

func newProxy(t *testing.T, host string, port uint16) *proxy {
	return &proxy{Proxy: dbtest.NewProxy(t, fmt.Sprintf("%s:%d", host, port)), t: t}
}

// url is s's DSN through the proxy.
func (p *proxy) url(s *pgserver.Server) string {
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", pgserver.Superuser, p.Addr(), s.Database())
}
