package tags_test

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/tags"
)

// Every operation is a few operations of the store, each bounded as the
// store bounds it: on a server that stops answering (a frozen proxy),
// each returns an error with context.Background(), and the first read of
// the versions failing is an error, never a value.
func TestSilentServerIsBounded(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	pc := s.PoolConfig(t)
	proxy := dbtest.NewProxy(t, net.JoinHostPort(pc.ConnConfig.Host, strconv.Itoa(int(pc.ConnConfig.Port))))
	pc.ConnConfig.Host, pc.ConnConfig.Port = "127.0.0.1", proxy.Port()
	pc.MaxConns = 4
	pool := dbtest.NewPool(t, pc)
	cache, err := dbcache.New(ctxT(t), pool, &dbcache.Config{OpTimeout: 300 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cache.Close() })
	tc, err := tags.New(cache, nil)
	require.NoError(t, err)
	bg := context.Background()
	require.NoError(t, tc.Set(bg, "k", []byte("v"), dbcache.Forever, "t"))
	cold, err := tags.New(cache, nil) // no memo: Get, then the versions
	require.NoError(t, err)
	proxy.Freeze()
	defer proxy.Thaw()
	for name, op := range map[string]func() error{
		"get":          func() error { _, err := tc.Get(bg, "k"); return err },
		"get cold":     func() error { _, err := cold.Get(bg, "k"); return err },
		"get_with_ttl": func() error { _, _, err := tc.GetWithTTL(bg, "k"); return err },
		"get_many":     func() error { _, err := tc.GetMany(bg, []string{"k"}); return err },
		"set":          func() error { return tc.Set(bg, "k", []byte("v2"), dbcache.Forever, "t", "new-tag") },
		"invalidate":   func() error { return tc.Invalidate(bg, "t") },
		"delete":       func() error { return tc.Delete(bg, "k") },
		"clear":        func() error { return tc.Clear(bg) },
	} {
		done := make(chan error, 1)
		go func() { done <- op() }()
		select {
		case err := <-done:
			require.ErrorIs(t, err, context.DeadlineExceeded, name)
		case <-time.After(90 * time.Second): // a watchdog: fails a hang, measures nothing
			t.Fatalf("%s did not return on a silent server", name)
		}
	}
}
