package dbcache_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
)

// ParseSnapshot takes pg_snapshot's text form and nothing else: crafted
// replies get an error, never a made-up snapshot or an unbounded list.
func TestParseSnapshot(t *testing.T) {
	t.Parallel()
	s, err := dbcache.ParseSnapshot("10:20:12,15")
	require.NoError(t, err)
	require.Equal(t, dbcache.Snapshot{Xmin: 10, Xmax: 20, Xip: []uint64{12, 15}}, s)
	require.Equal(t, "10:20:12,15", s.String())
	s, err = dbcache.ParseSnapshot("7:7:")
	require.NoError(t, err)
	require.Equal(t, dbcache.Snapshot{Xmin: 7, Xmax: 7}, s)
	for _, bad := range []string{"", "1:2", "1:2:3:4", "a:2:", "3:2:", "0:0:", "1:5:0", "1:5:5", "1:5:3,2", "1:5:3,3", "1:5:3,", "-1:5:", "1:18446744073709551616:",
		"1:99999999:" + strings.Repeat("2,", 1<<16) + "3"} {
		_, err := dbcache.ParseSnapshot(bad)
		require.Error(t, err, "%.40q", bad)
	}
}

// Ended and Includes follow pg_visible_in_snapshot.
func TestSnapshotEndedIncludes(t *testing.T) {
	t.Parallel()
	s := dbcache.Snapshot{Xmin: 10, Xmax: 20, Xip: []uint64{12, 15}}
	for x, want := range map[uint64]bool{1: true, 9: true, 10: true, 11: true, 12: false, 13: true, 15: false, 19: true, 20: false, 30: false} {
		require.Equal(t, want, s.Ended(x), "xid %d", x)
	}
	later := dbcache.Snapshot{Xmin: 15, Xmax: 25, Xip: []uint64{15, 22}}
	require.True(t, later.Includes(s))
	require.False(t, s.Includes(later))
	require.True(t, s.Includes(s))
	require.True(t, s.Includes(dbcache.Snapshot{}))
	require.False(t, dbcache.Snapshot{}.Includes(s))
	// Running below the other's xmax, but ended for the other: older.
	require.False(t, dbcache.Snapshot{Xmin: 10, Xmax: 25, Xip: []uint64{13}}.Includes(s))
}

// GetWithSnapshot and GetManyWithSnapshot return the snapshot their
// statement read with: a transaction writing meanwhile is running in it (its
// write not seen), and ended in every snapshot once it has committed. A miss
// still returns its snapshot.
func TestGetWithSnapshot(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "k", []byte("v1"), dbcache.ExpiresIn(time.Hour)))
	require.NoError(t, b.cache.Set(ctx, "f", []byte("f"), dbcache.Forever))
	v, ttl, before, err := b.cache.GetWithSnapshot(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v1", string(v))
	d, isTTL := ttl.Duration()
	require.True(t, isTTL)
	require.Greater(t, d, 59*time.Minute)
	require.False(t, before.IsZero())

	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	require.NoError(t, b.cache.WithTx(tx).Set(ctx, "k", []byte("v2"), dbcache.Forever))
	var xid uint64
	require.NoError(t, tx.QueryRow(ctx, "SELECT pg_current_xact_id()::text::bigint").Scan(&xid))

	v, _, during, err := b.cache.GetWithSnapshot(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v1", string(v))
	require.False(t, during.Ended(xid), "the writer is running in the read's snapshot")
	require.True(t, during.Includes(before))
	got, many, err := b.cache.GetManyWithSnapshot(ctx, []string{"k", "f", "absent"})
	require.NoError(t, err)
	require.Equal(t, "v1", string(got["k"].Value))
	require.Equal(t, dbcache.Forever, got["f"].TTL)
	require.Len(t, got, 2)
	require.False(t, many.Ended(xid))

	require.NoError(t, tx.Commit(ctx))
	v, ttl, after, err := b.cache.GetWithSnapshot(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v2", string(v))
	require.Equal(t, dbcache.Forever, ttl)
	require.True(t, after.Ended(xid))
	require.True(t, after.Includes(during))
	require.False(t, during.Includes(after))

	_, _, missSnap, err := b.cache.GetWithSnapshot(ctx, "absent")
	require.ErrorIs(t, err, dbcache.ErrMiss)
	require.True(t, missSnap.Includes(after))
	got, none, err := b.cache.GetManyWithSnapshot(ctx, []string{"absent"})
	require.NoError(t, err)
	require.Empty(t, got)
	require.True(t, none.Includes(after))

	_, _, _, err = b.cache.GetWithSnapshot(ctx, "bad key\x00")
	require.ErrorIs(t, err, dbcache.ErrInvalidKey)
}
