// Package typed is dbcache's byte API for values of a Go type: a Cache[T]
// over any dbcache.Store (a *dbcache.Cache, a sharded or near cache, a
// memstore.Store) that encodes values with a codec.Codec[T], JSON unless
// configured otherwise.
//
//	users, err := typed.New[User](cache, nil) // JSON
//	err = users.Set(ctx, "user:42", User{ID: 42}, dbcache.ExpiresIn(time.Hour))
//	u, err := users.Get(ctx, "user:42")       // dbcache.ErrMiss when absent
//	u, err = users.GetOrRevalidate(ctx, "user:42", loadUser, time.Minute, time.Hour)
//	_, err = users.Delete(ctx, "user:42")
//
// Every operation of the core Store has its typed form: those that carry
// values (Get, GetMany, Set, SetMany, Add, GetOrSet) encode and decode
// them, and those that carry keys only (HasKey, Touch, Delete, DeleteMany)
// are the Store's own. So are two optional capabilities, used when the
// store has them: GetWithTTL (a dbcache.TTLReader) and the loaders,
// GetOrSetFunc and GetOrRevalidate (a dbcache.Loader: the byte API's
// stampede protection and stale-while-revalidate). A capability the store
// lacks is an error matching errors.ErrUnsupported, except for
// GetOrSetFunc, which then loads without stampede protection: a read, and
// on a miss the loader and a GetOrSet, so the first stored value still
// wins.
//
// Incr and Decr work on counters, the decimal integers the byte API's Incr
// reads, not on values of T that a codec encoded: a Counter is the typed
// form of a counter.
//
// # Values that no longer decode
//
// A stored value that the codec cannot decode (the struct changed, the
// entry was written by another program, the bytes were damaged, an
// encrypted value whose key was retired) is a *DecodeError, which matches
// ErrDecode under errors.Is and unwraps to the codec's error. With
// Config.MissOnDecodeError such a value is a miss instead: Get returns
// dbcache.ErrMiss, GetMany leaves the key out, and GetOrSet and
// GetOrSetFunc delete the entry and store a new value (loaded again, for
// GetOrSetFunc); on a store that is a dbcache.CompareAndSwapper the entry
// is deleted only if it still holds the value that did not decode, so a
// newer write by another process is read, never removed. Either way it is counted in Stats and logged (at most one
// line every ten seconds, with no key or value unless Config.LogKeys). When a type changes incompatibly, a new
// dbcache.Config.Version or KeyPrefix for the new code is the clean
// switch: old and new processes then never read each other's entries.
package typed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/dbcache/dbcache/codec"
	"github.com/dbcache/dbcache/dbcache"
)

// ErrDecode is matched (errors.Is) by every *DecodeError.
var ErrDecode = errors.New("typed: stored value does not decode")

// DecodeError is a stored value the codec could not decode. errors.Is(err,
// ErrDecode) is true of it, and errors.Is/As reach the codec's own error
// (for example encryption.ErrDecrypt) through Unwrap.
type DecodeError struct {
	// Key is the caller's key of the entry.
	Key string
	// Err is the codec's error (or the panic it raised, as an error).
	Err error
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("typed: stored value of %q does not decode: %v", e.Key, e.Err)
}

// Unwrap returns the codec's error.
func (e *DecodeError) Unwrap() error { return e.Err }

// Is reports whether target is ErrDecode.
func (e *DecodeError) Is(target error) bool { return target == ErrDecode }

// ErrorCode is the code of the codec's error when it has one (compression's
// "corrupt", encryption's "decrypt"), else "decode": what metrics, spans
// and logs record of it (a dbcache.ErrorCoder).
func (e *DecodeError) ErrorCode() string {
	var c dbcache.ErrorCoder
	if errors.As(e.Err, &c) {
		return c.ErrorCode()
	}
	return "decode"
}

// EncodeError is a value the codec could not encode; nothing was stored.
type EncodeError struct {
	// Key is the caller's key the value was for.
	Key string
	// Err is the codec's error.
	Err error
}

func (e *EncodeError) Error() string {
	return fmt.Sprintf("typed: value for %q does not encode: %v", e.Key, e.Err)
}

// Unwrap returns the codec's error.
func (e *EncodeError) Unwrap() error { return e.Err }

// ErrorCode is "encode" (a dbcache.ErrorCoder).
func (e *EncodeError) ErrorCode() string { return "encode" }

// Config configures a Cache. A nil *Config means all defaults.
type Config[T any] struct {
	// Codec encodes and decodes values. Defaults to codec.JSON[T]().
	Codec codec.Codec[T]

	// LogKeys adds the key and the codec's error text (which can quote the
	// stored bytes) to the decode-error log line. Defaults to false: the
	// line gives the count and the error's code (decode, corrupt,
	// decrypt), and no key or value.
	LogKeys bool

	// Logger receives a warning when stored values do not decode (at most
	// one line every ten seconds, with the count since the last).
	// Defaults to slog.Default().
	Logger *slog.Logger

	// MissOnDecodeError makes a stored value that does not decode a miss
	// rather than a *DecodeError (see the package documentation).
	// Defaults to false: the error is returned.
	MissOnDecodeError bool
}

// Stats is a snapshot of a Cache's counters.
type Stats struct {
	// DecodeErrors counts stored values that did not decode, whether they
	// were returned as errors or turned into misses.
	DecodeErrors int64
}

// Cache is a typed view of a dbcache.Store. It is safe for concurrent use.
type Cache[T any] struct {
	store   dbcache.Store
	codec   codec.Codec[T]
	log     *slog.Logger
	asMiss  bool
	logKeys bool

	decodeErrors atomic.Int64
	logged       atomic.Int64 // UnixNano of the last decode-error log line
	unlogged     atomic.Int64 // decode errors since then
}

// logEvery bounds how often decode errors are logged: after a deploy that
// changed a type, every read of an old entry fails until it is rewritten.
const logEvery = 10 * time.Second

// New returns a typed cache over store. Several typed caches of different
// types may share one store; give each its own key namespace (a key prefix
// of their own in the keys, or a dbcache.Config.KeyPrefix per store), as
// a value written by one does not decode in another.
func New[T any](store dbcache.Store, cfg *Config[T]) (*Cache[T], error) {
	if store == nil {
		return nil, errors.New("typed: store is nil")
	}
	var c Config[T]
	if cfg != nil {
		c = *cfg
	}
	if c.Codec == nil {
		c.Codec = codec.JSON[T]()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return &Cache[T]{store: store, codec: c.Codec, log: c.Logger, asMiss: c.MissOnDecodeError, logKeys: c.LogKeys}, nil
}

// Store returns the byte-level store under the cache, for its optional
// capabilities (TTL, Keys, DeletePrefix, IncrVersion, …) and its counters.
func (c *Cache[T]) Store() dbcache.Store { return c.store }

// HasKey reports whether key has a live entry. It decodes nothing: an
// entry whose value no longer decodes is there.
func (c *Cache[T]) HasKey(ctx context.Context, key string) (bool, error) {
	return c.store.HasKey(ctx, key)
}

// Touch gives a live entry a new expiry and reports whether there was one
// (see dbcache.Cache.Touch).
func (c *Cache[T]) Touch(ctx context.Context, key string, timeout dbcache.Timeout) (bool, error) {
	return c.store.Touch(ctx, key, timeout)
}

// Delete removes key and reports whether a live entry was removed.
func (c *Cache[T]) Delete(ctx context.Context, key string) (bool, error) {
	return c.store.Delete(ctx, key)
}

// DeleteMany removes keys and returns how many live entries it removed.
func (c *Cache[T]) DeleteMany(ctx context.Context, keys []string) (int, error) {
	return c.store.DeleteMany(ctx, keys)
}

// Stats returns the cache's counters.
func (c *Cache[T]) Stats() Stats { return Stats{DecodeErrors: c.decodeErrors.Load()} }

func (c *Cache[T]) encode(key string, v T) (b []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			b, err = nil, &EncodeError{Key: key, Err: fmt.Errorf("codec panicked: %v", r)}
		}
	}()
	b, err = c.codec.Encode(key, v)
	if err != nil {
		return nil, &EncodeError{Key: key, Err: err}
	}
	return b, nil
}

// decode decodes data; a failure (or a panic in the codec) is a
// *DecodeError, counted and logged.
func (c *Cache[T]) decode(ctx context.Context, key string, data []byte) (v T, err error) {
	defer func() {
		if r := recover(); r != nil {
			var zero T
			v, err = zero, fmt.Errorf("codec panicked: %v", r)
		}
		if err != nil {
			err = &DecodeError{Key: key, Err: err}
			c.noteDecodeError(ctx, key, err)
		}
	}()
	return c.codec.Decode(key, data)
}

func (c *Cache[T]) noteDecodeError(ctx context.Context, key string, err error) {
	c.decodeErrors.Add(1)
	pending := c.unlogged.Add(1)
	now := time.Now().UnixNano()
	last := c.logged.Load()
	if now-last >= int64(logEvery) && c.logged.CompareAndSwap(last, now) {
		c.unlogged.Add(-pending)
		attrs := []any{"count", pending, "as_miss", c.asMiss, "error_code", dbcache.ErrorCode(err)}
		if c.logKeys {
			attrs = append(attrs, "key", key, "error", err)
		}
		c.log.WarnContext(ctx, "typed: stored values do not decode (a changed type, or bytes another program wrote)", attrs...)
	}
}

// read decodes a value read from the store: a decode failure is the error,
// or a miss with MissOnDecodeError.
func (c *Cache[T]) read(ctx context.Context, key string, data []byte) (T, error) {
	v, err := c.decode(ctx, key, data)
	if err != nil && c.asMiss {
		return v, dbcache.ErrMiss
	}
	return v, err
}

// Get returns the value stored under key, or dbcache.ErrMiss. A value that
// does not decode is a *DecodeError (a miss with MissOnDecodeError).
func (c *Cache[T]) Get(ctx context.Context, key string) (T, error) {
	b, err := c.store.Get(ctx, key)
	if err != nil {
		var zero T
		return zero, err
	}
	return c.read(ctx, key, b)
}

// GetWithTTL is Get that also returns the entry's remaining lifetime (see
// dbcache.Cache.GetWithTTL). The store must be a dbcache.TTLReader;
// otherwise the error matches errors.ErrUnsupported.
func (c *Cache[T]) GetWithTTL(ctx context.Context, key string) (T, dbcache.Timeout, error) {
	r, ok := c.store.(dbcache.TTLReader)
	if !ok {
		var zero T
		return zero, dbcache.Timeout{}, unsupported("get_with_ttl", c.store, "dbcache.TTLReader")
	}
	b, ttl, err := r.GetWithTTL(ctx, key)
	if err != nil {
		var zero T
		return zero, dbcache.Timeout{}, err
	}
	v, err := c.read(ctx, key, b)
	if err != nil {
		return v, dbcache.Timeout{}, err
	}
	return v, ttl, nil
}

// Set stores v under key. A value the codec cannot encode is an
// *EncodeError and nothing is stored.
func (c *Cache[T]) Set(ctx context.Context, key string, v T, timeout dbcache.Timeout) error {
	b, err := c.encode(key, v)
	if err != nil {
		return err
	}
	return c.store.Set(ctx, key, b, timeout)
}

// Add stores v under key only if the key has no live entry, and reports
// whether it stored (see dbcache.Cache.Add).
func (c *Cache[T]) Add(ctx context.Context, key string, v T, timeout dbcache.Timeout) (bool, error) {
	b, err := c.encode(key, v)
	if err != nil {
		return false, err
	}
	return c.store.Add(ctx, key, b, timeout)
}

// GetOrSet returns the value stored under key; on a miss it stores v and
// returns it. Between racing callers the first stored value wins (see
// dbcache.Cache.GetOrSet). v is encoded on every call, hit or miss: for a
// value that is costly to make, use GetOrSetFunc.
func (c *Cache[T]) GetOrSet(ctx context.Context, key string, v T, timeout dbcache.Timeout) (T, error) {
	var zero T
	b, err := c.encode(key, v)
	if err != nil {
		return zero, err
	}
	for attempt := 0; ; attempt++ {
		got, err := c.store.GetOrSet(ctx, key, b, timeout)
		if err != nil {
			return zero, err
		}
		if bytes.Equal(got, b) {
			return v, nil // ours (or equal to ours): no need to decode
		}
		out, err := c.decode(ctx, key, got)
		if err == nil || !c.asMiss || attempt > 0 {
			return out, err
		}
		// The stored value does not decode: remove it and store ours.
		if err := c.dropUndecodable(ctx, key, got); err != nil {
			return zero, err
		}
	}
}

// loaded is what this caller's loader produced, to be returned without a
// decode when it is what the store kept.
type loaded[T any] struct {
	v T
	b []byte
}

// GetOrSetFunc returns the value stored under key; on a miss it runs load
// and stores its value, with the store's protection against stampedes
// when it is a dbcache.Loader (a *dbcache.Cache's: one load per key across
// goroutines and processes; see dbcache.Cache.GetOrSetFunc). An error from
// load is returned (errors.Is reaches it) and nothing is stored. The
// value this caller's load made is returned as it is, without a decode,
// when it is the one stored. A store that is not a Loader gets a read,
// and on a miss the loader and a GetOrSet: the first stored value wins,
// but concurrent callers that miss each run the loader.
//
// With MissOnDecodeError, a stored value that does not decode is deleted
// and loaded again, once; if what is then stored still does not decode
// (another process keeps writing an older type), the *DecodeError is
// returned.
func (c *Cache[T]) GetOrSetFunc(ctx context.Context, key string, load func(context.Context) (T, error), timeout dbcache.Timeout) (T, error) {
	return c.getOrLoad(ctx, "get_or_set", key, load, func(l dbcache.Loader, loadBytes dbcache.LoadFunc) ([]byte, error) {
		if l == nil {
			return c.loadPlain(ctx, key, loadBytes, timeout)
		}
		return l.GetOrSetFunc(ctx, key, loadBytes, timeout)
	})
}

// GetOrRevalidate is GetOrSetFunc with stale-while-revalidate: an entry it
// stores is fresh for fresh, then returned stale, for up to stale more,
// while one background load refreshes it (see
// dbcache.Cache.GetOrRevalidate). The store must be a dbcache.Loader;
// otherwise the error matches errors.ErrUnsupported.
func (c *Cache[T]) GetOrRevalidate(ctx context.Context, key string, load func(context.Context) (T, error), fresh, stale time.Duration) (T, error) {
	return c.getOrLoad(ctx, "get_or_revalidate", key, load, func(l dbcache.Loader, loadBytes dbcache.LoadFunc) ([]byte, error) {
		if l == nil {
			return nil, unsupported("get_or_revalidate", c.store, "dbcache.Loader")
		}
		return l.GetOrRevalidate(ctx, key, loadBytes, fresh, stale)
	})
}

// getOrLoad is the typed side of both loaders: run the store's loader
// (through via, given the store's Loader or nil) with load's values
// encoded, and decode what it returns unless it is this caller's own.
func (c *Cache[T]) getOrLoad(ctx context.Context, op, key string, load func(context.Context) (T, error), via func(dbcache.Loader, dbcache.LoadFunc) ([]byte, error)) (T, error) {
	var zero T
	if load == nil {
		return zero, errors.New("typed: " + op + ": load is nil")
	}
	// The loader may run on another goroutine (the byte API's flight, or a
	// background refresh that outlives this call), hence the atomic.
	var own atomic.Pointer[loaded[T]]
	loadBytes := func(ctx context.Context) ([]byte, error) {
		v, err := load(ctx)
		if err != nil {
			return nil, err
		}
		b, err := c.encode(key, v)
		if err != nil {
			return nil, err
		}
		own.Store(&loaded[T]{v: v, b: b})
		return b, nil
	}
	l, _ := c.store.(dbcache.Loader)
	for attempt := 0; ; attempt++ {
		got, err := via(l, loadBytes)
		if err != nil {
			return zero, err
		}
		if l := own.Load(); l != nil && bytes.Equal(l.b, got) {
			return l.v, nil
		}
		out, err := c.decode(ctx, key, got)
		if err == nil || !c.asMiss || attempt > 0 {
			return out, err
		}
		if err := c.dropUndecodable(ctx, key, got); err != nil {
			return zero, err
		}
	}
}

// dropUndecodable removes key's entry, whose value bad did not decode, so
// that it can be loaded again. On a store that is a
// dbcache.CompareAndSwapper it removes the entry only if it still holds
// bad, unchanged since a read of its token (CompareAndDelete), so a newer
// write, another process's that decodes, is never removed: the next
// attempt reads it. On another store it is a Delete, which can remove such
// a write.
func (c *Cache[T]) dropUndecodable(ctx context.Context, key string, bad []byte) error {
	cas, ok := c.store.(dbcache.CompareAndSwapper)
	if !ok {
		_, err := c.store.Delete(ctx, key)
		return err
	}
	cur, tok, err := cas.GetWithToken(ctx, key)
	if errors.Is(err, dbcache.ErrMiss) {
		return nil
	}
	if err != nil {
		return err
	}
	if !bytes.Equal(cur, bad) {
		return nil // written since: the next attempt reads it
	}
	_, err = cas.CompareAndDelete(ctx, key, tok)
	return err
}

// loadPlain is GetOrSetFunc on a store that is not a dbcache.Loader: a
// read, and on a miss the loader, then GetOrSet, so the first stored
// value wins. Its errors read as a Loader's: the loader's own error is a
// *dbcache.LoaderError, its panic a *dbcache.LoaderPanicError.
func (c *Cache[T]) loadPlain(ctx context.Context, key string, load dbcache.LoadFunc, timeout dbcache.Timeout) ([]byte, error) {
	b, err := c.store.Get(ctx, key)
	if !errors.Is(err, dbcache.ErrMiss) {
		return b, err
	}
	v, err := dbcache.RunLoader(ctx, load)
	if err != nil {
		return nil, err
	}
	return c.store.GetOrSet(ctx, key, v, timeout)
}

// unsupported is the error of an operation whose capability the store
// lacks.
func unsupported(op string, store dbcache.Store, capability string) error {
	return fmt.Errorf("typed: %s: the store (%T) is not a %s: %w", op, store, capability, errors.ErrUnsupported)
}

// GetMany returns the values stored under keys, in one round trip; missing
// keys are absent from the map. A value that does not decode fails the
// call with a *DecodeError for the first such key in keys' order (with
// MissOnDecodeError it is left out, as a miss).
func (c *Cache[T]) GetMany(ctx context.Context, keys []string) (map[string]T, error) {
	raw, err := c.store.GetMany(ctx, keys)
	if err != nil {
		return nil, err
	}
	out := make(map[string]T, len(raw))
	for _, k := range keys {
		b, ok := raw[k]
		if !ok {
			continue
		}
		if _, done := out[k]; done {
			continue // a key passed twice
		}
		v, err := c.decode(ctx, k, b)
		if err != nil {
			if c.asMiss {
				continue
			}
			return nil, err
		}
		out[k] = v
	}
	return out, nil
}

// SetMany stores every item in one statement and returns the keys that
// failed (see dbcache.Cache.SetMany). A value that does not encode fails
// the whole call before anything is written: the *EncodeError is returned
// with every key as failed, as for any other error of the batch.
func (c *Cache[T]) SetMany(ctx context.Context, items map[string]T, timeout dbcache.Timeout) ([]string, error) {
	raw := make(map[string][]byte, len(items))
	for k, v := range items {
		b, err := c.encode(k, v)
		if err != nil {
			return slices.Sorted(maps.Keys(items)), err
		}
		raw[k] = b
	}
	return c.store.SetMany(ctx, raw, timeout)
}
