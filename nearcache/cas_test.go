package nearcache_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
)

// Copies carry their token: a GetWithToken served from memory returns the
// token the database holds; a swap with it succeeds and drops the copy; a
// token from a copy another process's write made stale never lets a swap
// through, whether the feed has dropped the copy yet or not.
func TestCompareAndSwapThroughCopies(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	a, b := e.proc(t, steady()), e.proc(t, steady())
	ctx := ctxT(t)
	require.NoError(t, a.near.Set(ctx, "k", []byte("v1"), dbcache.ExpiresIn(time.Hour)))
	_, want, err := a.cache.GetWithToken(ctx, "k")
	require.NoError(t, err)

	// Fill a copy with its token, then read it from memory.
	var tok dbcache.Token
	eventually(t, "a GetWithToken served from memory", func() bool {
		before := a.near.Stats().Hits
		v, got, err := a.near.GetWithToken(ctx, "k")
		require.NoError(t, err)
		require.Equal(t, "v1", string(v))
		require.Equal(t, want, got, "a copy's token is the entry's")
		tok = got
		return a.near.Stats().Hits > before
	})

	// Another process writes: a's copy (dropped by the feed or not yet)
	// has a token the entry no longer has, and the swap fails.
	require.NoError(t, b.near.Set(ctx, "k", []byte("v2"), dbcache.ExpiresIn(time.Hour)))
	ok, err := a.near.CompareAndSwap(ctx, "k", tok, []byte("lost"), dbcache.ExpiresIn(time.Hour))
	require.NoError(t, err)
	require.False(t, ok, "a stale copy's token let a swap through")
	v, tok, err := a.near.GetWithToken(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v2", string(v), "the failed swap dropped the copy: the next read is the store's")

	ok, err = a.near.CompareAndSwap(ctx, "k", tok, []byte("v3"), dbcache.ExpiresIn(time.Hour))
	require.NoError(t, err)
	require.True(t, ok)
	v, _, err = a.near.GetWithToken(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v3", string(v), "a process reads its own swap")
	eventually(t, "b reads a's swap", func() bool {
		v, err := b.near.Get(ctx, "k")
		require.NoError(t, err)
		return string(v) == "v3"
	})

	// A copy a Set kept carries no token: GetWithToken reads the store.
	require.NoError(t, a.near.Set(ctx, "s", []byte("x"), dbcache.ExpiresIn(time.Hour)))
	_, want, err = a.cache.GetWithToken(ctx, "s")
	require.NoError(t, err)
	_, got, err := a.near.GetWithToken(ctx, "s")
	require.NoError(t, err)
	require.Equal(t, want, got)
	_, tokS, err := a.near.GetWithToken(ctx, "s")
	require.NoError(t, err)
	ok, err = a.near.CompareAndDelete(ctx, "s", tokS)
	require.NoError(t, err)
	require.True(t, ok)
	_, _, err = a.near.GetWithToken(ctx, "s")
	require.ErrorIs(t, err, dbcache.ErrMiss)
}
