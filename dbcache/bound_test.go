package dbcache_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// A Get whose caller's context cannot be cancelled is bounded by a deadline
// on the connection's socket, not by a context pgx watches. The deadline
// must be gone when the connection returns to the pool: a statement the
// application runs on the same connection long after the Get's bound would
// otherwise fail at it.
func TestGetBoundLeavesNoSocketDeadline(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	pc := s.PoolConfig(t)
	pc.MaxConns = 1 // the Get's connection is the one the sleep runs on
	b := setupOn(t, newPool(t, pc), &dbcache.Config{OpTimeout: time.Second})
	require.NoError(t, b.cache.Set(ctxT(t), "k", []byte("v"), dbcache.Forever))
	gets := []struct {
		ctx context.Context
		key string
	}{
		{context.Background(), "k"}, // a hit
		{context.WithValue(context.Background(), ctxKeyBound{}, 1), "absent"}, // a miss, values only
	}
	for _, g := range gets {
		_, err := b.cache.Get(g.ctx, g.key)
		if g.key == "k" {
			require.NoError(t, err)
		} else {
			require.ErrorIs(t, err, dbcache.ErrMiss)
		}
		// Longer than the bound, on the same (only) connection, with no
		// deadline of its own.
		_, err = b.pool.Exec(context.Background(), `SELECT pg_sleep(1.5)`)
		require.NoError(t, err, "a statement after a bounded Get on its connection")
	}
}

type ctxKeyBound struct{}

// Coalesced Gets whose callers passed context.Background (so the batch runs
// under the latest caller's shared deadline, with nothing registered per
// caller) still end on a server gone silent, each with a deadline error,
// and their slot is free again afterwards.
func TestCoalescedBackgroundGetsOnASilentServerAreBounded(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	host, port := serverAddr(t, s)
	proxy := dbtest.NewProxy(t, net.JoinHostPort(host, port))
	pc := s.PoolConfig(t)
	pc.ConnConfig.Host, pc.ConnConfig.Port = "127.0.0.1", proxy.Port()
	pc.MaxConns = 4
	b := setupOn(t, newPool(t, pc), &dbcache.Config{CoalesceGets: 1, OpTimeout: 2 * time.Second})
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "k", []byte("v"), dbcache.Forever))

	// A session holding the table in ACCESS EXCLUSIVE mode keeps the one
	// slot's Get waiting while the others queue behind it.
	admin := s.Pool(t)
	lockTx, err := admin.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = lockTx.Rollback(context.Background()) }()
	_, err = lockTx.Exec(ctx, `LOCK TABLE dbcache_entries IN ACCESS EXCLUSIVE MODE`)
	require.NoError(t, err)

	errs := make(chan error, 4)
	var gets sync.WaitGroup
	gets.Go(func() { _, err := b.cache.Get(context.Background(), "k"); errs <- err })
	waitFor(t, func() bool { return dbcache.CoalesceInflight(b.cache) == 1 })
	for range 3 {
		gets.Go(func() { _, err := b.cache.Get(context.Background(), "k"); errs <- err })
	}
	waitFor(t, func() bool {
		return dbcache.CoalescePending(b.cache) == 3 || len(errs) > 0 // the first may already have ended at its bound
	})
	proxy.Freeze()
	require.NoError(t, lockTx.Rollback(ctx)) // every answer from now on is dropped
	gets.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("a Get on a silent server: want a deadline error, got %v", err)
		}
	}
	proxy.Thaw()
	waitFor(t, func() bool { return dbcache.CoalesceInflight(b.cache) == 0 })
	getCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	v, err := b.cache.Get(getCtx, "k")
	require.NoError(t, err, "a Get once the server answers again")
	require.Equal(t, "v", string(v))
}
