package dbcache_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/migrations"
)

// written_at (the culler's MaxAge) counts from the last write of an
// entry's value: every write that replaces the value sets it, Touch and
// Incr keep it, IncrVersion moves it with the value.
func TestWrittenAt(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	age := func(key string) time.Duration {
		t.Helper()
		var secs float64
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT extract(epoch FROM statement_timestamp() - written_at)::float8
FROM dbcache_entries WHERE key = $1`, b.cache.MakeKey(key)).Scan(&secs))
		return time.Duration(secs * float64(time.Second))
	}
	age2 := func(c *dbcache.Cache, key string) time.Duration {
		t.Helper()
		var secs float64
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT extract(epoch FROM statement_timestamp() - written_at)::float8
FROM dbcache_entries WHERE key = $1`, c.MakeKey(key)).Scan(&secs))
		return time.Duration(secs * float64(time.Second))
	}
	makeOld := func() {
		dbtest.Exec(t, b.pool, `UPDATE dbcache_entries SET written_at = written_at - interval '10 days'`)
	}
	require.NoError(t, b.cache.Set(ctx, "set", []byte("1"), dbcache.Forever))
	require.NoError(t, b.cache.Set(ctx, "touch", []byte("1"), dbcache.Forever))
	require.NoError(t, b.cache.Set(ctx, "incr", []byte("1"), dbcache.Forever))
	require.NoError(t, b.cache.Set(ctx, "gos", []byte("1"), dbcache.Forever))
	require.NoError(t, b.cache.Set(ctx, "move", []byte("1"), dbcache.Forever))
	_, err := b.cache.SetMany(ctx, map[string][]byte{"many": []byte("1")}, dbcache.Forever)
	require.NoError(t, err)
	makeOld()

	require.NoError(t, b.cache.Set(ctx, "set", []byte("2"), dbcache.Forever))
	require.Less(t, age("set"), time.Hour, "Set rewrites the value: a new entry")
	_, err = b.cache.SetMany(ctx, map[string][]byte{"many": []byte("2")}, dbcache.Forever)
	require.NoError(t, err)
	require.Less(t, age("many"), time.Hour)
	_, err = b.cache.Touch(ctx, "touch", dbcache.ExpiresIn(time.Hour))
	require.NoError(t, err)
	require.Greater(t, age("touch"), 9*24*time.Hour, "Touch keeps the age")
	_, err = b.cache.Incr(ctx, "incr", 1)
	require.NoError(t, err)
	require.Greater(t, age("incr"), 9*24*time.Hour, "Incr keeps the age")
	_, err = b.cache.GetOrSet(ctx, "gos", []byte("x"), dbcache.Forever)
	require.NoError(t, err)
	require.Greater(t, age("gos"), 9*24*time.Hour, "GetOrSet of a live entry changes nothing")
	_, err = b.cache.IncrVersion(ctx, "move", 1)
	require.NoError(t, err)
	require.Greater(t, age2(b.cache.WithVersion(2), "move"), 9*24*time.Hour, "IncrVersion moves the age with the value")
}

// A table from before migration 9 (or 4) cannot take this version's
// writes: New says to migrate, rather than every write failing.
func TestNewRefusesOldSchema(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	ctx := context.Background()
	m, err := migrations.NewFromConnConfig(s.PoolConfig(t).ConnConfig, &migrations.Config{Schema: s.Name})
	require.NoError(t, err)
	var pool *pgxpool.Pool = s.Pool(t)
	// Just below dbcache.SchemaVersion (the token column), then back to
	// version 3 (no written_at either); versions need not be consecutive.
	for _, below := range []uint{dbcache.SchemaVersion - 1, 3} {
		steps := 0
		for _, v := range migrations.Versions() {
			if v > below {
				steps++
			}
		}
		require.NoError(t, m.Up(ctx))
		require.NoError(t, m.Down(ctx, steps))
		_, err = dbcache.New(ctx, pool, nil)
		require.ErrorIs(t, err, dbcache.ErrNotMigrated)
		require.ErrorContains(t, err, fmt.Sprintf("migration %d", dbcache.SchemaVersion))
	}
	require.NoError(t, m.Up(ctx))
	_, err = dbcache.New(ctx, pool, nil)
	require.NoError(t, err)
}
