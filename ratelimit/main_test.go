package ratelimit_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/ratelimit"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// testBundle is one test's limiter and the pool it runs on.
type testBundle struct {
	lim  *ratelimit.Limiter
	pool *pgxpool.Pool
}

// setup gives the test its own migrated schema and a limiter on it.
func setup(t *testing.T, cfg *ratelimit.Config) *testBundle {
	t.Helper()
	pool := dbtest.Pool(t)
	return setupOn(t, pool, cfg)
}

func setupOn(t *testing.T, pool *pgxpool.Pool, cfg *ratelimit.Config) *testBundle {
	t.Helper()
	lim, err := ratelimit.New(ctxT(t), pool, cfg)
	require.NoError(t, err)
	return &testBundle{lim: lim, pool: pool}
}

// rows counts the rate-limit table's rows.
func rows(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM dbcache_rate_limits`).Scan(&n))
	return n
}

// tatOf reads a stored key's state.
func tatOf(t *testing.T, pool *pgxpool.Pool, key string) int64 {
	t.Helper()
	var tat int64
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT tat FROM dbcache_rate_limits WHERE key = $1`, key).Scan(&tat))
	return tat
}

// travel moves every stored state d into the past: what waiting d does,
// without waiting. The database's clock still decides.
func travel(t *testing.T, pool *pgxpool.Pool, d time.Duration) {
	t.Helper()
	dbtest.Exec(t, pool, `UPDATE dbcache_rate_limits SET tat = tat - $1::bigint`, int64(d))
}
