package memstore

import (
	"context"
	"time"

	"github.com/dbcache/dbcache/dbcache"
)

// GetWithToken is Get that also returns the entry's token (see
// dbcache.CompareAndSwapper).
func (s *Store) GetWithToken(ctx context.Context, key string) (v []byte, tok dbcache.Token, err error) {
	err = s.with(ctx, key, func(st *state, k string, now time.Time) error {
		e, ok := st.get(k, now)
		if !ok {
			return dbcache.ErrMiss
		}
		v, tok = copyOf(e.value), dbcache.Token(e.token)
		return nil
	})
	return v, tok, err
}

// CompareAndSwap stores value under key only if key has a live entry
// whose token is token, and reports whether it did; it never creates an
// entry.
func (s *Store) CompareAndSwap(ctx context.Context, key string, token dbcache.Token, value []byte, timeout dbcache.Timeout) (swapped bool, err error) {
	err = s.with(ctx, key, func(st *state, k string, now time.Time) error {
		if e, ok := st.get(k, now); ok && dbcache.Token(e.token) == token {
			st.put(k, value, timeout, now)
			swapped = true
		}
		return nil
	})
	return swapped && err == nil, err
}

// CompareAndDelete removes key's entry only if it is live and its token is
// token, and reports whether it did.
func (s *Store) CompareAndDelete(ctx context.Context, key string, token dbcache.Token) (deleted bool, err error) {
	err = s.with(ctx, key, func(st *state, k string, now time.Time) error {
		if e, ok := st.get(k, now); ok && dbcache.Token(e.token) == token {
			delete(st.entries, k)
			deleted = true
		}
		return nil
	})
	return deleted && err == nil, err
}
