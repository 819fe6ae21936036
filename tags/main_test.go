package tags_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/tags"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// testBundle is one test's tagged cache, the dbcache under it and its pool.
type testBundle struct {
	tc    *tags.Cache
	cache *dbcache.Cache
	pool  *pgxpool.Pool
}

// setup gives the test its own migrated schema and a tagged cache on it.
func setup(t *testing.T) *testBundle {
	t.Helper()
	return setupOn(t, dbtest.Pool(t))
}

func setupOn(t *testing.T, pool *pgxpool.Pool) *testBundle {
	t.Helper()
	cache, err := dbcache.New(ctxT(t), pool, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = cache.Close() })
	tc, err := tags.New(cache, nil)
	require.NoError(t, err)
	return &testBundle{tc: tc, cache: cache, pool: pool}
}
