package lock_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/lock"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// bundle is one test's schema, pool and lock client.
type bundle struct {
	s     *dbtest.Schema
	pool  *pgxpool.Pool
	locks *lock.Client
}

func setup(t *testing.T, cfg *lock.Config) *bundle {
	t.Helper()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	pc := s.PoolConfig(t)
	pc.MaxConns = 4
	pool := dbtest.NewPool(t, pc)
	return &bundle{s: s, pool: pool, locks: client(t, pool, cfg)}
}

// citusTestConfig is cfg with Config.Citus for a test's client:
// DBCACHE_TEST_CITUS=forced runs every test's client in the Citus forms on
// plain PostgreSQL (a test that sets a mode of its own keeps it).
func citusTestConfig(cfg *lock.Config) *lock.Config {
	var c lock.Config
	if cfg != nil {
		c = *cfg
	}
	if c.Citus == dbcache.CitusAuto && os.Getenv("DBCACHE_TEST_CITUS") == "forced" {
		c.Citus = dbcache.CitusOn
	}
	return &c
}

func client(t *testing.T, pool *pgxpool.Pool, cfg *lock.Config) *lock.Client {
	t.Helper()
	c, err := lock.New(ctxT(t), pool, citusTestConfig(cfg))
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}
