package dbcache

import (
	"context"
	"iter"
	"time"
)

// Store is the core byte-level cache API: the reads and writes every cache
// implements. *Cache implements it, and so do the caches built from caches
// (package sharded's over several servers, package nearcache's in front of
// one) and package memstore's in-memory Store, so that what is layered on
// top (typed values, metrics, the CLI) works with any of them. Package
// storetest checks an implementation against dbcache's semantics.
//
// Implementations keep Cache's documented semantics and sentinel errors
// (ErrMiss, ErrNotInteger, ErrOverflow, ErrInvalidKey, ErrClosed) and are
// safe for concurrent use. What only some stores can do is an optional
// capability, a small interface of its own found by type assertion (as
// pgx finds a BatchTracer on a QueryTracer): TTLReader, KeyLister,
// Versioner, KeyMaker, Loader, Leaser, SnapshotReader and CompareAndSwapper. Closing is io.Closer's,
// found the same way. Views (WithVersion, WithTx) stay on the concrete types: a
// transaction belongs to one server.
//
// A store that wraps another (a layer) keeps one rule, so that a type
// assertion never lies: it has a capability's methods only if it serves
// that capability whatever store it wraps. It either implements the
// capability itself or requires it of the store it is given, at
// construction, with an error naming what is missing; it never has a
// method that fails because the store under it lacks one. A layer that
// changes only some operations embeds Store (or the capability) for the
// rest instead of forwarding each by hand.
type Store interface {
	// Get returns the value stored under key, or ErrMiss.
	Get(ctx context.Context, key string) ([]byte, error)
	// GetMany returns the live entries among keys, keyed by the caller's
	// keys; missing keys are absent from the map.
	GetMany(ctx context.Context, keys []string) (map[string][]byte, error)
	// HasKey reports whether key has a live entry.
	HasKey(ctx context.Context, key string) (bool, error)

	// Set stores value under key, replacing any entry.
	Set(ctx context.Context, key string, value []byte, timeout Timeout) error
	// SetMany stores every item, all or nothing, and returns the keys it
	// failed to store.
	SetMany(ctx context.Context, items map[string][]byte, timeout Timeout) ([]string, error)
	// Add stores value only if key has no live entry, and reports whether
	// it did.
	Add(ctx context.Context, key string, value []byte, timeout Timeout) (bool, error)
	// GetOrSet returns the live value of key, or stores value (as Add)
	// and returns what the entry then holds.
	GetOrSet(ctx context.Context, key string, value []byte, timeout Timeout) ([]byte, error)
	// Touch gives a live entry a new expiry and reports whether there was
	// one.
	Touch(ctx context.Context, key string, timeout Timeout) (bool, error)

	// Incr adds delta to the integer stored under key and returns the
	// result; Decr subtracts it.
	Incr(ctx context.Context, key string, delta int64) (int64, error)
	Decr(ctx context.Context, key string, delta int64) (int64, error)

	// Delete removes key and reports whether a live entry was removed.
	Delete(ctx context.Context, key string) (bool, error)
	// DeleteMany removes keys and returns how many live entries it
	// removed.
	DeleteMany(ctx context.Context, keys []string) (int, error)
	// Clear removes every entry of the store.
	Clear(ctx context.Context) error
}

// TTLReader is an optional capability of a Store: reading an entry's
// remaining lifetime, by the store's clock (the database's, for a Cache).
// *Cache implements it.
type TTLReader interface {
	// GetWithTTL is Get that also returns the entry's remaining lifetime.
	GetWithTTL(ctx context.Context, key string) ([]byte, Timeout, error)
	// TTL returns the remaining lifetime of key's live entry: Forever,
	// or ExpiresIn(d) with d > 0; ErrMiss when there is none.
	TTL(ctx context.Context, key string) (Timeout, error)
}

// KeyLister is an optional capability of a Store: the entries of a caller
// key prefix, listed or deleted, under the store's key prefix and version.
// *Cache implements it.
type KeyLister interface {
	// Keys returns the caller keys of the live entries that start with
	// prefix; an error ends the sequence.
	Keys(ctx context.Context, prefix string) iter.Seq2[string, error]
	// DeletePrefix removes every entry whose caller key starts with
	// prefix and returns how many live entries it removed.
	DeletePrefix(ctx context.Context, prefix string) (int, error)
}

// Versioner is an optional capability of a Store: moving an entry to
// another key version (Django's incr_version and decr_version). *Cache
// implements it.
type Versioner interface {
	// IncrVersion moves key's entry from the store's version to version
	// + delta and returns the new version; ErrMiss when there is no live
	// entry.
	IncrVersion(ctx context.Context, key string, delta int) (int, error)
	// DecrVersion moves it to version - delta.
	DecrVersion(ctx context.Context, key string, delta int) (int, error)
}

// KeyMaker is an optional capability of a Store: how it makes the stored
// key of a caller key, and validates it (Django's make_key and
// validate_key). A layer that sees stored keys (the near cache reads them
// from the database's feed) or shows them (the CLI) needs it. *Cache
// implements it.
type KeyMaker interface {
	// MakeKey returns the stored key of key, without validating it.
	MakeKey(key string) string
	// ValidateKey checks a made key as every operation does, and returns
	// an error matching ErrInvalidKey for one the store refuses.
	ValidateKey(ctx context.Context, madeKey string) error
}

// LoadFunc makes the value of a missing key, for the loaders (Loader).
type LoadFunc = func(ctx context.Context) ([]byte, error)

// Loader is an optional capability of a Store: read-through loading with
// stampede protection. *Cache implements it (see Cache.GetOrSetFunc and
// Cache.GetOrRevalidate for what it promises).
type Loader interface {
	// GetOrSetFunc returns the live value of key, or runs load and stores
	// its value, returning what the entry then holds.
	GetOrSetFunc(ctx context.Context, key string, load LoadFunc, timeout Timeout) ([]byte, error)
	// GetOrRevalidate is GetOrSetFunc with stale-while-revalidate: an
	// entry it stores is fresh for fresh, then served stale for up to
	// stale more while one refresh runs in the background.
	GetOrRevalidate(ctx context.Context, key string, load LoadFunc, fresh, stale time.Duration) ([]byte, error)
}

// Leaser is an optional capability of a Store: leases on keys. A lease is
// held by at most one token at a time; it ends when its holder releases
// it or when its ttl has passed by the store's clock (the database's, for
// a Cache), whatever happened to the holder meanwhile: a process killed
// while holding one holds it for at most the rest of its ttl. Leases live
// apart from the entries: Clear, DeletePrefix, Keys and the culler never
// see them, and a key's lease and its entry come and go independently.
// The key is made as the store makes entry keys (prefix, version) and
// validated the same way (ErrInvalidKey); tokens and lengths are checked
// (ErrInvalidLease; see CheckLeaseToken and CheckLeaseTTL). A Leaser
// never fails open: under Config.FailOpen a transient failure is still an
// error. *Cache implements it (one single-key statement each, by the
// database's clock, on a table of its own: migration 8).
type Leaser interface {
	// AcquireLease takes key's lease for ttl unless a live lease holds
	// it, and says which happened.
	AcquireLease(ctx context.Context, key string, ttl time.Duration) (Lease, error)
	// ExtendLease gives the live lease held with token a new ttl from
	// now, and reports whether it did: false when the lease has ended
	// (released, expired, taken over), and then nothing changes.
	ExtendLease(ctx context.Context, key string, token LeaseToken, ttl time.Duration) (bool, error)
	// ReleaseLease ends the lease held with token, and reports whether
	// it was still live; a lease taken over by another token is left
	// alone.
	ReleaseLease(ctx context.Context, key string, token LeaseToken) (bool, error)
}

var (
	_ Store          = (*Cache)(nil)
	_ SnapshotReader = (*Cache)(nil)
	_ TTLReader      = (*Cache)(nil)
	_ KeyLister      = (*Cache)(nil)
	_ Versioner      = (*Cache)(nil)
	_ KeyMaker       = (*Cache)(nil)
	_ Loader         = (*Cache)(nil)
	_ Leaser         = (*Cache)(nil)
)
