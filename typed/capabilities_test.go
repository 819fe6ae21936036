package typed_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/typed"
)

// plainStore hides every optional capability of the store it embeds: it
// is a dbcache.Store and nothing more, as a user's own store may be.
type plainStore struct{ dbcache.Store }

// The key-only operations of the core Store are the typed cache's too, and
// decode nothing.
func TestKeyOnlyOperations(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	users, err := typed.New[user](b.store, nil)
	require.NoError(t, err)
	require.NoError(t, users.Set(ctx, "a", user{ID: 1}, dbcache.DefaultTimeout))
	require.NoError(t, b.store.Set(ctx, "junk", []byte("not json"), dbcache.DefaultTimeout))
	require.NoError(t, users.Set(ctx, "c", user{ID: 3}, dbcache.DefaultTimeout))

	for key, want := range map[string]bool{"a": true, "junk": true, "nobody": false} {
		ok, err := users.HasKey(ctx, key)
		require.NoError(t, err)
		require.Equal(t, want, ok, key)
	}
	ok, err := users.Touch(ctx, "junk", dbcache.ExpiresIn(0))
	require.NoError(t, err)
	require.True(t, ok)
	ok, err = users.HasKey(ctx, "junk")
	require.NoError(t, err)
	require.False(t, ok, "touched to expire at once")
	ok, err = users.Delete(ctx, "a")
	require.NoError(t, err)
	require.True(t, ok)
	ok, err = users.Delete(ctx, "a")
	require.NoError(t, err)
	require.False(t, ok)
	n, err := users.DeleteMany(ctx, []string{"a", "c", "nobody"})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Zero(t, users.Stats().DecodeErrors)
}

// A Counter is the decimal form the byte API's Incr reads: concurrent
// Incrs through it never lose an update, and an entry a codec wrote is not
// a counter.
func TestCounter(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	counters, err := typed.NewCounter(b.store)
	require.NoError(t, err)
	_, err = typed.NewCounter(nil)
	require.Error(t, err)

	_, err = counters.Get(ctx, "n")
	require.ErrorIs(t, err, dbcache.ErrMiss)
	_, err = counters.Incr(ctx, "n", 1)
	require.ErrorIs(t, err, dbcache.ErrMiss)
	added, err := counters.Add(ctx, "n", 40, dbcache.Forever)
	require.NoError(t, err)
	require.True(t, added)
	added, err = counters.Add(ctx, "n", 0, dbcache.Forever)
	require.NoError(t, err)
	require.False(t, added)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 10 {
				if _, err := counters.Incr(ctx, "n", 1); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	n, err := counters.Decr(ctx, "n", 38)
	require.NoError(t, err)
	require.EqualValues(t, 82, n)
	n, err = counters.Get(ctx, "n")
	require.NoError(t, err)
	require.EqualValues(t, 82, n)
	raw, err := b.store.Get(ctx, "n")
	require.NoError(t, err)
	require.Equal(t, "82", string(raw))

	require.NoError(t, counters.Set(ctx, "neg", -7, dbcache.DefaultTimeout))
	n, err = b.store.Incr(ctx, "neg", 1)
	require.NoError(t, err)
	require.EqualValues(t, -6, n)

	users, err := typed.New[user](b.store, nil)
	require.NoError(t, err)
	require.NoError(t, users.Set(ctx, "u", user{ID: 1}, dbcache.DefaultTimeout))
	_, err = counters.Get(ctx, "u")
	require.ErrorIs(t, err, dbcache.ErrNotInteger)
	_, err = counters.Incr(ctx, "u", 1)
	require.ErrorIs(t, err, dbcache.ErrNotInteger)
	ok, err := counters.Delete(ctx, "n")
	require.NoError(t, err)
	require.True(t, ok)
}

// Over a store that is only a dbcache.Store, the capabilities it lacks
// are errors matching errors.ErrUnsupported, never a wrong answer, and
// GetOrSetFunc still returns the first stored value, its loader's errors
// and panics read as through a Loader.
func TestPlainStore(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	users, err := typed.New[user](plainStore{b.store}, nil)
	require.NoError(t, err)
	require.NoError(t, users.Set(ctx, "a", user{ID: 1}, dbcache.ExpiresIn(time.Hour)))

	_, _, err = users.GetWithTTL(ctx, "a")
	require.ErrorIs(t, err, errors.ErrUnsupported)
	require.ErrorContains(t, err, "dbcache.TTLReader")
	_, err = users.GetOrRevalidate(ctx, "a", func(context.Context) (user, error) { return user{}, nil }, time.Minute, time.Hour)
	require.ErrorIs(t, err, errors.ErrUnsupported)

	var loads atomic.Int64
	load := func(context.Context) (user, error) { return user{ID: int(loads.Add(1)) + 100}, nil }
	got, err := users.GetOrSetFunc(ctx, "a", load, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, 1, got.ID, "a hit")
	got, err = users.GetOrSetFunc(ctx, "b", load, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, 101, got.ID)
	got, err = users.GetOrSetFunc(ctx, "b", load, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, 101, got.ID)
	require.EqualValues(t, 1, loads.Load())

	// Another writer stores first: its value is returned, not the loader's.
	got, err = users.GetOrSetFunc(ctx, "c", func(ctx context.Context) (user, error) {
		require.NoError(t, users.Set(ctx, "c", user{ID: 7}, dbcache.DefaultTimeout))
		return user{ID: 8}, nil
	}, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, 7, got.ID)

	boom := errors.New("boom")
	_, err = users.GetOrSetFunc(ctx, "d", func(context.Context) (user, error) { return user{}, boom }, dbcache.DefaultTimeout)
	require.ErrorIs(t, err, boom)
	var le *dbcache.LoaderError
	require.ErrorAs(t, err, &le)
	_, err = users.GetOrSetFunc(ctx, "d", func(context.Context) (user, error) { panic("loader") }, dbcache.DefaultTimeout)
	var lp *dbcache.LoaderPanicError
	require.ErrorAs(t, err, &lp)
	ok, err := users.HasKey(ctx, "d")
	require.NoError(t, err)
	require.False(t, ok, "nothing stored")
}
