package nearcache

import (
	"bytes"
	"context"
	"time"

	"github.com/dbcache/dbcache/dbcache"
)

// Compare-and-swap through the layer. The database decides every swap, so
// a copy's token can only be older than the entry's, never wrong in a way
// that lets a swap through: a swap with a token the entry no longer has
// changes nothing and returns false, and, being a write through the layer,
// drops the copy, so the caller's next GetWithToken reads the store.

// GetWithToken is Get that also returns the entry's token (see
// dbcache.CompareAndSwapper): from a local copy that carries one (copies
// filled by GetWithToken do; those a Set kept, or a Get filled, do not),
// else from the store, keeping a copy with its token as Get keeps one.
func (c *Cache) GetWithToken(ctx context.Context, key string) ([]byte, dbcache.Token, error) {
	if c.closed.Load() {
		return nil, 0, dbcache.ErrClosed
	}
	mk := c.makeKey(key)
	if err := c.settle(ctx, mk); err != nil {
		return nil, 0, err
	}
	now := time.Now()
	if e, ok := c.lookup(mk, now); ok && e.hasToken {
		c.traceRead(ctx, dbcache.OpGetWithToken, 1, 0)
		return clone(e.value), e.token, nil
	}
	c.traceRead(ctx, dbcache.OpGetWithToken, 0, 1)
	return c.fillWithToken(ctx, key, mk, now)
}

// fillWithToken is fill with a read that returns the entry's token, which
// the copy then carries. It is not shared with other readers (a shared
// read's callers may not all want the token), but it ends as a fill ends:
// a later read of the key does not join a read that began before this one
// ended.
func (c *Cache) fillWithToken(ctx context.Context, key, mk string, start time.Time) ([]byte, dbcache.Token, error) {
	tok := c.local.beginFill(mk)
	e, snap, err := c.entryRead(ctx, key)
	if !tok.snapshot {
		// A fill that needs no snapshot is checked without one, as
		// storeRead's GetWithTTL reads it.
		snap = dbcache.Snapshot{}
	}
	r := fillResult{snap: snap}
	if err == nil {
		r.found, r.value, r.token, r.hasToken = true, e.Value, e.Token, true
		if len(e.Value) <= c.cfg.MaxEntryBytes {
			r.value = bytes.Clone(e.Value) // the caller owns e.Value
		}
		if d, ok := e.TTL.Duration(); ok {
			r.expires = start.Add(d)
		}
	}
	c.filled(c.local.endFill(tok, r), r.found)
	c.seal(mk, nil)
	return e.Value, e.Token, err
}

// entryRead is the store's GetEntryWithSnapshot, a panic recovered as an
// error as storeRead recovers one.
func (c *Cache) entryRead(ctx context.Context, key string) (e dbcache.Entry, snap dbcache.Snapshot, err error) {
	defer func() {
		if r := recover(); r != nil {
			e, snap, err = dbcache.Entry{}, dbcache.Snapshot{}, c.panicked("the store's read", r)
		}
	}()
	return c.reader.GetEntryWithSnapshot(ctx, key)
}

// CompareAndSwap is the store's CompareAndSwap, a write of the key through
// the layer.
func (c *Cache) CompareAndSwap(ctx context.Context, key string, token dbcache.Token, value []byte, timeout dbcache.Timeout) (bool, error) {
	if c.closed.Load() {
		return false, dbcache.ErrClosed
	}
	mk := c.makeKey(key)
	if err := c.settle(ctx, mk); err != nil {
		return false, err
	}
	done := c.writing(mk)
	ok, err := c.caps.cas.CompareAndSwap(ctx, key, token, value, timeout)
	done()
	return ok, err
}

// CompareAndDelete is the store's CompareAndDelete, a write of the key
// through the layer.
func (c *Cache) CompareAndDelete(ctx context.Context, key string, token dbcache.Token) (bool, error) {
	if c.closed.Load() {
		return false, dbcache.ErrClosed
	}
	mk := c.makeKey(key)
	if err := c.settle(ctx, mk); err != nil {
		return false, err
	}
	done := c.writing(mk)
	ok, err := c.caps.cas.CompareAndDelete(ctx, key, token)
	done()
	return ok, err
}
