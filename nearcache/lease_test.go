package nearcache_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Leases pass through the layer to the store, and no feed carries them:
// the publication Setup creates covers the cache table alone (an UNLOGGED
// table cannot be published anyway), so leasing keys invalidates nothing.
func TestLeasesAreNotPublished(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	p := e.proc(t, steady())
	ctx := ctxT(t)
	var tables []string
	rows, err := p.pool.Query(ctx, `SELECT tablename::text FROM pg_publication_tables WHERE schemaname = $1 ORDER BY 1`, e.schema)
	require.NoError(t, err)
	for rows.Next() {
		var name string
		require.NoError(t, rows.Scan(&name))
		tables = append(tables, name)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{"dbcache_entries"}, tables)

	l, err := p.near.AcquireLease(ctx, "k", time.Minute)
	require.NoError(t, err)
	require.True(t, l.Acquired)
	held, err := p.cache.AcquireLease(ctx, "k", time.Minute)
	require.NoError(t, err)
	require.False(t, held.Acquired, "the layer's lease is the store's")
	ok, err := p.near.ExtendLease(ctx, "k", l.Token, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	ok, err = p.near.ReleaseLease(ctx, "k", l.Token)
	require.NoError(t, err)
	require.True(t, ok)
	require.Zero(t, p.trace.invalidated("k"), "a lease is not a change the feed delivers")
}
