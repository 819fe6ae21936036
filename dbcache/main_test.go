package dbcache_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

// testBundle is one test's cache, its pool and what it logged.
type testBundle struct {
	cache *dbcache.Cache
	pool  *pgxpool.Pool
	logs  *dbtest.LogBuffer
}

// setup gives the test its own schema, migrated, and a cache on it.
func setup(t *testing.T, cfg *dbcache.Config) *testBundle {
	t.Helper()
	pool := dbtest.Pool(t)
	return setupOn(t, pool, cfg)
}

// setupConns is setup with a pool of maxConns connections, for tests that
// need many statements in flight at once. Keep it modest: every package's
// tests share one server (max_connections 100 by default), and two packages
// and two tests in each run at once.
func setupConns(t *testing.T, maxConns int32) *testBundle {
	t.Helper()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	cfg := s.PoolConfig(t)
	cfg.MaxConns = maxConns
	return setupOn(t, newPool(t, cfg), nil)
}

// setupOn makes another cache over an existing pool (Django's fixture has
// several caches sharing one table).
func setupOn(t *testing.T, pool *pgxpool.Pool, cfg *dbcache.Config) *testBundle {
	t.Helper()
	logs := &dbtest.LogBuffer{}
	c := dbcache.Config{}
	if cfg != nil {
		c = *cfg
	}
	c.Citus = citusTestMode(c.Citus)
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	// A deadline of the test's own: New is then not bounded by a short
	// Config.OpTimeout a test sets for the operations it measures.
	newCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cache, err := dbcache.New(newCtx, pool, &c)
	require.NoError(t, err)
	t.Cleanup(func() { _ = cache.Close() })
	return &testBundle{cache: cache, pool: pool, logs: logs}
}

// travel moves every expiring entry's expiry d into the past: the same as
// waiting d, without waiting. The database clock still decides what expired.
// The new expiry is computed in a subquery joined on the key: Citus refuses
// a STABLE function (timestamptz - interval is one) with a column argument
// in an UPDATE's SET, and pushes a join on the distribution column down to
// each shard.
func travel(t *testing.T, pool *pgxpool.Pool, d time.Duration) {
	t.Helper()
	dbtest.Exec(t, pool, `UPDATE dbcache_entries AS t SET expires = n.expires
FROM (SELECT key, expires - $1::bigint * interval '1 microsecond' AS expires FROM dbcache_entries WHERE expires IS NOT NULL) AS n
WHERE t.key = n.key`, d.Microseconds())
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func mustGet(t *testing.T, c *dbcache.Cache, key string) string {
	t.Helper()
	v, err := c.Get(ctxT(t), key)
	require.NoError(t, err, "get %q", key)
	return string(v)
}

func requireMiss(t *testing.T, c *dbcache.Cache, key string) {
	t.Helper()
	_, err := c.Get(ctxT(t), key)
	require.ErrorIs(t, err, dbcache.ErrMiss, "get %q", key)
}

func newPool(t *testing.T, cfg *pgxpool.Config) *pgxpool.Pool {
	t.Helper()
	return dbtest.NewPool(t, cfg)
}
