package integration_test

import (
	"context"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/migrations"
)

// The migrations on a server nothing else has touched: its public schema and
// default search_path, as an application's database would be. One container
// serves the group; each subtest gets a database of its own on it.

func TestMigrations(t *testing.T) {
	t.Parallel()
	srv := startServer(t)

	// freshPool creates a database and opens a pool on it with no
	// search_path of ours: the server's default ("$user", public).
	freshPool := func(t *testing.T, name string) *pgxpool.Pool {
		t.Helper()
		srv.createDatabase(t, name)
		return dbtest.NewPool(t, srv.poolConfig(t, name))
	}

	t.Run("UpDownUp", func(t *testing.T) {
		t.Parallel()
		pool := freshPool(t, "up_down_up")
		ctx := ctxT(t)
		m, err := migrations.New(pool, nil)
		require.NoError(t, err)

		v, dirty, err := m.Version(ctx)
		require.NoError(t, err)
		require.Zero(t, v)
		require.False(t, dirty)
		pending, err := m.Pending(ctx)
		require.NoError(t, err)
		require.True(t, pending)

		require.NoError(t, m.Up(ctx))
		requireVersion(t, m, migrations.Latest())
		require.True(t, tableExists(t, pool, "public."+migrations.Table))
		require.True(t, tableExists(t, pool, "public."+migrations.MigrationsTable))
		require.False(t, tableExists(t, pool, "public.schema_migrations"), "never golang-migrate's default table")
		require.NoError(t, m.Up(ctx), "up again is a no-op")

		c, _ := cacheOn(t, pool, nil)
		require.NoError(t, c.Set(ctx, "k", []byte("v1"), dbcache.Forever))

		// Down one step at a time, to nothing.
		versions := migrations.Versions()
		for i := len(versions) - 1; i >= 0; i-- {
			require.NoError(t, m.Down(ctx, 1))
			want := uint(0)
			if i > 0 {
				want = versions[i-1]
			}
			requireVersion(t, m, want)
		}
		require.False(t, tableExists(t, pool, "public."+migrations.Table), "down drops the cache table")
		require.NoError(t, m.Down(ctx, 1), "nothing left to revert is success")

		// The cache made while migrated now reports the missing table.
		_, err = c.Get(ctx, "k")
		require.ErrorIs(t, err, dbcache.ErrNotMigrated)
		_, err = dbcache.New(ctx, pool, nil)
		require.ErrorIs(t, err, dbcache.ErrNotMigrated)

		// Up again: a working, empty cache.
		require.NoError(t, m.Up(ctx))
		requireVersion(t, m, migrations.Latest())
		_, err = c.Get(ctx, "k")
		require.ErrorIs(t, err, dbcache.ErrMiss, "the table came back empty")
		require.NoError(t, c.Set(ctx, "k", []byte("v2"), dbcache.Forever))
		v2, err := c.Get(ctx, "k")
		require.NoError(t, err)
		require.Equal(t, "v2", string(v2))

		// DownAll and Up once more.
		require.NoError(t, m.DownAll(ctx))
		requireVersion(t, m, 0)
		require.NoError(t, m.Up(ctx))
		requireVersion(t, m, migrations.Latest())
	})

	t.Run("NotMigrated", func(t *testing.T) {
		t.Parallel()
		pool := freshPool(t, "not_migrated")
		ctx := ctxT(t)

		_, err := dbcache.New(ctx, pool, nil)
		require.ErrorIs(t, err, dbcache.ErrNotMigrated)
		require.Contains(t, err.Error(), "migrate", "the error says what to do")

		_, err = dbcache.New(ctx, pool, &dbcache.Config{Schema: "nosuchschema"})
		require.ErrorIs(t, err, dbcache.ErrNotMigrated)
		require.Contains(t, err.Error(), "nosuchschema")

		_, err = dbcache.Open(ctx, srv.url("not_migrated"), nil)
		require.ErrorIs(t, err, dbcache.ErrNotMigrated)

		require.Empty(t, userTables(t, pool), "asking wrote nothing")
	})

	t.Run("ConcurrentUp", func(t *testing.T) {
		t.Parallel()
		pool := freshPool(t, "concurrent_up")
		ctx := ctxT(t)
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for i := range errs {
			wg.Go(func() {
				m, err := migrations.New(pool, nil)
				if err == nil {
					err = m.Up(ctx)
				}
				errs[i] = err
			})
		}
		wg.Wait()
		for _, err := range errs {
			require.NoError(t, err)
		}
		m, err := migrations.New(pool, nil)
		require.NoError(t, err)
		requireVersion(t, m, migrations.Latest())
	})

	t.Run("Schemas", func(t *testing.T) {
		t.Parallel()
		pool := freshPool(t, "schemas")
		ctx := ctxT(t)
		// Two caches in one database are two schemas, each migrated on its own.
		for _, s := range []string{"tenant_a", "tenant_b"} {
			m, err := migrations.New(pool, &migrations.Config{Schema: s})
			require.NoError(t, err)
			require.NoError(t, m.Up(ctx))
			requireVersion(t, m, migrations.Latest())
		}
		a, _ := cacheOn(t, pool, &dbcache.Config{Schema: "tenant_a"})
		b, _ := cacheOn(t, pool, &dbcache.Config{Schema: "tenant_b"})
		require.NoError(t, a.Set(ctx, "k", []byte("a"), dbcache.Forever))
		_, err := b.Get(ctx, "k")
		require.ErrorIs(t, err, dbcache.ErrMiss)
		require.False(t, tableExists(t, pool, "public."+migrations.Table), "nothing in public")

		m, err := migrations.New(pool, &migrations.Config{Schema: "tenant_a"})
		require.NoError(t, err)
		require.NoError(t, m.DownAll(ctx))
		_, err = a.Get(ctx, "k")
		require.ErrorIs(t, err, dbcache.ErrNotMigrated)
		require.NoError(t, b.Set(ctx, "k", []byte("b"), dbcache.Forever), "the other schema is untouched")
	})
}

func requireVersion(t *testing.T, m *migrations.Migrator, want uint) {
	t.Helper()
	v, dirty, err := m.Version(ctxT(t))
	require.NoError(t, err)
	require.False(t, dirty)
	require.Equal(t, want, v)
}

func tableExists(t *testing.T, pool *pgxpool.Pool, name string) bool {
	t.Helper()
	var ok bool
	require.NoError(t, pool.QueryRow(ctxT(t), `SELECT to_regclass($1) IS NOT NULL`, name).Scan(&ok))
	return ok
}

// userTables lists the tables outside the system schemas.
func userTables(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT schemaname || '.' || tablename FROM pg_tables
		WHERE schemaname NOT IN ('pg_catalog', 'information_schema')`)
	require.NoError(t, err)
	var out []string
	for rows.Next() {
		var s string
		require.NoError(t, rows.Scan(&s))
		out = append(out, s)
	}
	require.NoError(t, rows.Err())
	return out
}
