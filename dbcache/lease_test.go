package dbcache_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// The leases table is UNLOGGED (no WAL per lease), apart from the
// entries, and its key compares bytes; leases are made keys, so two
// prefixes or two versions of one key are two leases.
func TestLeaseTable(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	var persistence, collation string
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT c.relpersistence::text, coalesce(co.collname, '')
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'key'
LEFT JOIN pg_collation co ON co.oid = a.attcollation
WHERE c.oid = to_regclass('dbcache_leases')`).Scan(&persistence, &collation))
	require.Equal(t, "u", persistence, "dbcache_leases is UNLOGGED")
	require.Equal(t, "C", collation)

	l1, err := b.cache.AcquireLease(ctx, "k", time.Minute)
	require.NoError(t, err)
	require.True(t, l1.Acquired)
	l2, err := b.cache.WithVersion(2).AcquireLease(ctx, "k", time.Minute)
	require.NoError(t, err)
	require.True(t, l2.Acquired, "version 2 of a key is another lease")
	other := setupOn(t, b.pool, &dbcache.Config{KeyPrefix: "other"})
	l3, err := other.cache.AcquireLease(ctx, "k", time.Minute)
	require.NoError(t, err)
	require.True(t, l3.Acquired, "another key prefix is another lease")
	require.Equal(t, 0, dbtest.Count(t, b.pool), "leases are no entries")
	var keys []string
	rows, err := b.pool.Query(ctx, `SELECT key FROM dbcache_leases ORDER BY key`)
	require.NoError(t, err)
	for rows.Next() {
		var k string
		require.NoError(t, rows.Scan(&k))
		keys = append(keys, k)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{b.cache.MakeKey("k"), b.cache.WithVersion(2).MakeKey("k"), other.cache.MakeKey("k")}, keys)
}

// A schema migrated to before migration 8: the cache works, and a lease
// is an error that says to migrate (ErrSchemaBehind), not a made-up
// answer.
func TestLeaseWithoutTable(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	dbtest.Exec(t, b.pool, `DROP TABLE dbcache_leases`)
	_, err := b.cache.AcquireLease(ctx, "k", time.Minute)
	require.ErrorIs(t, err, dbcache.ErrSchemaBehind)
	require.ErrorIs(t, err, dbcache.ErrNotMigrated)
	require.ErrorContains(t, err, "migrate up")
	_, err = b.cache.ReleaseLease(ctx, "k", dbcache.NewLeaseToken())
	require.ErrorIs(t, err, dbcache.ErrSchemaBehind)
	_, err = b.cache.ExtendLease(ctx, "k", dbcache.NewLeaseToken(), time.Minute)
	require.ErrorIs(t, err, dbcache.ErrSchemaBehind)
	require.NoError(t, b.cache.Set(ctx, "k", []byte("v"), dbcache.Forever))
}

// Under a repeatable-read session default, concurrent acquires of one key
// still give it to exactly one (each runs at READ COMMITTED, as every
// write does), and none fails with a serialization error.
func TestLeaseRepeatableRead(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	cfg := s.PoolConfig(t)
	cfg.ConnConfig.RuntimeParams["default_transaction_isolation"] = "repeatable read"
	cfg.MaxConns = 8
	b := setupOn(t, newPool(t, cfg), nil)
	ctx := ctxT(t)
	for round := range 5 {
		key := "k" + string(rune('a'+round))
		got := make(chan bool, 8)
		errs := make(chan error, 8)
		for range 8 {
			go func() {
				l, err := b.cache.AcquireLease(ctx, key, time.Minute)
				errs <- err
				got <- l.Acquired
			}()
		}
		n := 0
		for range 8 {
			require.NoError(t, <-errs)
			if <-got {
				n++
			}
		}
		require.Equal(t, 1, n, "round %d", round)
	}
}
