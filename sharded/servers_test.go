package sharded_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/migrations"
	"github.com/dbcache/dbcache/internal/pgserver"
	"github.com/dbcache/dbcache/sharded"
)

// The sharded cache on three real servers, throwaway ones of this test's
// own (internal/pgserver: containers when Docker can run them, else the
// machine's PostgreSQL installation), one of which is stopped and started
// again. As in integration/, the application's pools are never rebuilt:
// each dials its server's current address (BeforeConnect), as a DNS name
// would follow a server that came back on another port, and no assertion
// is about time: each wait is for an event, under the test's hang guard.

// startServers starts n servers, two at a time, each with a database of
// its own name (so a pool that reached another server on a reused port
// would fail rather than write there), and removes them when the test
// ends.
func startServers(t *testing.T, n int) []*pgserver.Server {
	t.Helper()
	cfg, err := pgserver.ConfigFromEnv(os.Getenv)
	require.NoError(t, err)
	servers := make([]*pgserver.Server, n)
	errs := make([]error, n)
	slots := make(chan struct{}, 2)
	var wg sync.WaitGroup
	for i := range servers {
		c := cfg
		c.Database = fmt.Sprintf("dbcache_shard_%d_%d", os.Getpid(), i)
		wg.Go(func() {
			slots <- struct{}{}
			defer func() { <-slots }()
			ctx, cancel := context.WithTimeout(context.Background(), 2*pgserver.DefaultStartTimeout+time.Minute)
			defer cancel()
			servers[i], errs[i] = pgserver.Start(ctx, c)
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, s := range servers {
			if s != nil {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				if err := s.Remove(ctx); err != nil {
					t.Errorf("remove %s: %v", s, err)
				}
				cancel()
			}
		}
	})
	for i, err := range errs {
		require.NoError(t, err, "start server %d", i)
		t.Logf("server %d: %s", i, servers[i])
	}
	return servers
}

// followingPool is a pool on s whose new connections dial s's address of
// the moment.
func followingPool(t *testing.T, s *pgserver.Server) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(s.URL(""))
	require.NoError(t, err)
	cfg.MaxConns = 8
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	cfg.BeforeConnect = func(_ context.Context, cc *pgx.ConnConfig) error {
		cc.Host, cc.Port = s.Addr()
		return nil
	}
	pool, err := pgxpool.NewWithConfig(ctxT(t), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// waitFor retries op until it succeeds, under the test's hang guard.
func waitFor(t *testing.T, ctx context.Context, what string, op func() error) {
	t.Helper()
	for {
		err := op()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: never happened: %v", what, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestThreeServers(t *testing.T) {
	t.Parallel()
	servers := startServers(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	names := []string{"a", "b", "c"}
	pools := map[string]*pgxpool.Pool{}
	var shards []sharded.Shard
	for i, name := range names {
		pool := followingPool(t, servers[i])
		m, err := migrations.New(pool, nil)
		require.NoError(t, err)
		require.NoError(t, m.Up(ctx))
		pools[name] = pool
		shards = append(shards, sharded.Shard{Name: name, Pool: pool})
	}
	newCache := func(cfg *dbcache.Config) *sharded.Cache {
		c, err := sharded.New(ctx, shards, &sharded.Config{Cache: cfg, RetryEvery: 50 * time.Millisecond})
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	c := newCache(nil)
	open := newCache(&dbcache.Config{FailOpen: true})
	rowsOn := func(name string) int {
		var n int
		require.NoError(t, pools[name].QueryRow(ctx, `SELECT count(*) FROM dbcache_entries`).Scan(&n))
		return n
	}

	// Spread: each server holds exactly its keys.
	keys := someKeys("k", 300)
	items := map[string][]byte{}
	for _, k := range keys {
		items[k] = []byte("v1")
	}
	failed, err := c.SetMany(ctx, items, dbcache.Forever)
	require.NoError(t, err)
	require.Empty(t, failed)
	for _, name := range names {
		require.Equal(t, len(keysOn(c, name, keys)), rowsOn(name), "server %s", name)
	}
	onB := keysOn(c, "b", keys)
	var notB []string
	for _, k := range keys {
		if c.ShardOf(k) != "b" {
			notB = append(notB, k)
		}
	}

	// One culler per server, each with its own lock: every pass on every
	// server runs (none is skipped for another server's), and each removes
	// its own server's expired entries.
	expired := map[string][]byte{}
	for _, k := range someKeys("old", 90) {
		expired[k] = nil
	}
	_, err = c.SetMany(ctx, expired, dbcache.ExpiresIn(-time.Second))
	require.NoError(t, err)
	var removed int64
	for _, name := range names {
		cu, err := culling.New(pools[name], nil)
		require.NoError(t, err)
		res, err := cu.RunOnce(ctx)
		require.NoError(t, err)
		require.False(t, res.Skipped)
		require.EqualValues(t, len(keysOn(c, name, someKeys("old", 90))), res.ExpiredRemoved)
		removed += res.ExpiredRemoved
	}
	require.EqualValues(t, 90, removed)

	// Stop b.
	stopCtx, stopCancel := context.WithTimeout(ctx, 2*time.Minute)
	require.NoError(t, servers[1].Shutdown(stopCtx))
	stopCancel()

	// b's keys fail, transiently, naming b; fail-open, they miss and their
	// writes are skipped; a's and c's keys are served.
	_, err = c.Get(ctx, onB[0])
	require.True(t, dbcache.IsTransient(err), "%v", err)
	mustShardError(t, err, "b")
	_, err = open.Get(ctx, onB[0])
	require.ErrorIs(t, err, dbcache.ErrMiss)
	require.NoError(t, open.Set(ctx, onB[0], []byte("skipped"), dbcache.Forever))
	for _, k := range notB[:30] {
		v, err := c.Get(ctx, k)
		require.NoError(t, err)
		require.Equal(t, "v1", string(v))
	}

	// SetMany with b down: b's keys, exactly, come back failed with b's
	// error; the others are stored.
	for k := range items {
		items[k] = []byte("v2")
	}
	failed, err = c.SetMany(ctx, items, dbcache.Forever)
	require.Equal(t, onB, failed)
	mustShardError(t, err, "b")
	got, err := c.GetMany(ctx, notB)
	require.NoError(t, err)
	require.Len(t, got, len(notB))
	for _, v := range got {
		require.Equal(t, "v2", string(v))
	}

	// A write to one of b's keys fails and lands nowhere else: a and c
	// hold no row of b's keys.
	err = c.Set(ctx, onB[0], []byte("v3"), dbcache.Forever)
	mustShardError(t, err, "b")
	for _, name := range []string{"a", "c"} {
		var n int
		require.NoError(t, pools[name].QueryRow(ctx, `SELECT count(*) FROM dbcache_entries WHERE key = ANY($1)`, made(c, onB)).Scan(&n))
		require.Zero(t, n, "server %s holds keys of b", name)
	}

	// A sharded cache made while b is down: New works, b's keys fail.
	late := newCache(nil)
	_, err = late.Get(ctx, onB[0])
	mustShardError(t, err, "b")
	v, err := late.Get(ctx, notB[0])
	require.NoError(t, err)
	require.Equal(t, "v2", string(v))

	// Start b again (a container may come back on another port). Its
	// values are the ones it held: nothing overwrote them elsewhere.
	startCtx, startCancel := context.WithTimeout(ctx, 3*time.Minute)
	require.NoError(t, servers[1].Restart(startCtx))
	startCancel()
	for _, cache := range []*sharded.Cache{c, late} {
		waitFor(t, ctx, "b serves again", func() error {
			v, err := cache.Get(ctx, onB[0])
			if err == nil && string(v) != "v1" {
				t.Fatalf("b serves %q, want its own v1", v)
			}
			return err
		})
	}
	got, err = late.GetMany(ctx, keys)
	require.NoError(t, err)
	require.Len(t, got, len(keys))
	for k, v := range got {
		want := "v2"
		if c.ShardOf(k) == "b" {
			want = "v1"
		}
		require.Equal(t, want, string(v), k)
	}
	n := 0
	for _, err := range late.Keys(ctx, "k") {
		require.NoError(t, err)
		n++
	}
	require.Equal(t, len(keys), n)
	require.NoError(t, late.Clear(ctx))
	for _, name := range names {
		require.Zero(t, rowsOn(name))
	}
}
