package typed

import (
	"context"
	"errors"
	"strconv"

	"github.com/dbcache/dbcache/dbcache"
)

// Counter is an int64 counter in a dbcache.Store, stored as its decimal
// ASCII form: the form the byte API's Incr and Decr read and write, and no
// codec's. Its Incr and Decr are the store's (one atomic statement on a
// *dbcache.Cache: concurrent Incrs never lose an update); Get and Set read
// and write the same form. A Counter is safe for concurrent use.
type Counter struct {
	store dbcache.Store
}

// NewCounter returns the counters of store.
func NewCounter(store dbcache.Store) (*Counter, error) {
	if store == nil {
		return nil, errors.New("typed: store is nil")
	}
	return &Counter{store: store}, nil
}

// Get returns the counter stored under key: dbcache.ErrMiss when there is
// none, and an error matching dbcache.ErrNotInteger when the entry is not
// a counter (it holds a codec's bytes).
func (c *Counter) Get(ctx context.Context, key string) (int64, error) {
	b, err := c.store.Get(ctx, key)
	if err != nil {
		return 0, err
	}
	n, ok := dbcache.ParseInteger(b)
	if !ok {
		return 0, &DecodeError{Key: key, Err: dbcache.ErrNotInteger}
	}
	return n, nil
}

// Set stores n under key, replacing any entry.
func (c *Counter) Set(ctx context.Context, key string, n int64, timeout dbcache.Timeout) error {
	return c.store.Set(ctx, key, strconv.AppendInt(nil, n, 10), timeout)
}

// Add stores n under key only if the key has no live entry, and reports
// whether it did: the way to start a counter that another process may be
// starting too.
func (c *Counter) Add(ctx context.Context, key string, n int64, timeout dbcache.Timeout) (bool, error) {
	return c.store.Add(ctx, key, strconv.AppendInt(nil, n, 10), timeout)
}

// Incr adds delta to the counter and returns the result: dbcache.ErrMiss
// when there is none, dbcache.ErrNotInteger when the entry is not a
// counter, dbcache.ErrOverflow past an int64 (see dbcache.Cache.Incr).
func (c *Counter) Incr(ctx context.Context, key string, delta int64) (int64, error) {
	return c.store.Incr(ctx, key, delta)
}

// Decr subtracts delta from the counter; see Incr.
func (c *Counter) Decr(ctx context.Context, key string, delta int64) (int64, error) {
	return c.store.Decr(ctx, key, delta)
}

// Delete removes the counter and reports whether there was a live one.
func (c *Counter) Delete(ctx context.Context, key string) (bool, error) {
	return c.store.Delete(ctx, key)
}
