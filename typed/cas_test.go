package typed_test

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/typed"
)

// racedStore is a cache whose first GetOrSet and GetOrSetFunc of each
// call let another writer store between the read and what the typed layer
// does next: as another process writing a value of the new type just
// after this one read the old one.
type racedStore struct {
	*dbcache.Cache
	mu    sync.Mutex
	after func()
}

func (r *racedStore) raced() {
	r.mu.Lock()
	f := r.after
	r.after = nil
	r.mu.Unlock()
	if f != nil {
		f()
	}
}

func (r *racedStore) GetOrSet(ctx context.Context, key string, value []byte, timeout dbcache.Timeout) ([]byte, error) {
	b, err := r.Cache.GetOrSet(ctx, key, value, timeout)
	r.raced()
	return b, err
}

func (r *racedStore) GetOrSetFunc(ctx context.Context, key string, load dbcache.LoadFunc, timeout dbcache.Timeout) ([]byte, error) {
	b, err := r.Cache.GetOrSetFunc(ctx, key, load, timeout)
	r.raced()
	return b, err
}

// With MissOnDecodeError, a value that does not decode is replaced, but a
// newer value another writer stored after the read is not clobbered: the
// typed layer removes the entry only while it still holds the bytes that
// failed (CompareAndDelete on their token), then reads the newer value.
func TestReloadNeverClobbersANewerWrite(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	other, err := typed.New[string](b.store, nil)
	require.NoError(t, err)

	for _, op := range []string{"get_or_set", "get_or_set_func"} {
		t.Run(op, func(t *testing.T) {
			t.Parallel()
			store := &racedStore{Cache: b.store}
			c, err := typed.New[string](store, &typed.Config[string]{MissOnDecodeError: true, Logger: b.log})
			require.NoError(t, err)
			key := "k:" + op
			require.NoError(t, b.store.Set(ctx, key, []byte("{not json"), dbcache.Forever))
			store.mu.Lock()
			store.after = func() { require.NoError(t, other.Set(ctx, key, "newer", dbcache.Forever)) }
			store.mu.Unlock()
			var got string
			if op == "get_or_set" {
				got, err = c.GetOrSet(ctx, key, "ours", dbcache.Forever)
			} else {
				got, err = c.GetOrSetFunc(ctx, key, func(context.Context) (string, error) { return "ours", nil }, dbcache.Forever)
			}
			require.NoError(t, err)
			require.Equal(t, "newer", got, "the newer write was clobbered")
			v, err := other.Get(ctx, key)
			require.NoError(t, err)
			require.Equal(t, "newer", v)
		})
	}

	// Without a racing writer the value that does not decode is replaced.
	c, err := typed.New[string](b.store, &typed.Config[string]{MissOnDecodeError: true, Logger: b.log})
	require.NoError(t, err)
	require.NoError(t, b.store.Set(ctx, "old", []byte("{not json"), dbcache.Forever))
	got, err := c.GetOrSet(ctx, "old", "ours", dbcache.Forever)
	require.NoError(t, err)
	require.Equal(t, "ours", got)
}
