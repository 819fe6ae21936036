// Package gocachestore is a store for eko/gocache (github.com/eko/gocache/lib/v4),
// so that a gocache user keeps their code and swaps one line, the store's
// constructor, to cache in PostgreSQL through dbcache:
//
//	s, err := gocachestore.New(dbc, store.WithExpiration(10*time.Minute)) // was redis_store.NewRedis(client, …)
//	c := cache.New[string](s)
//
// It implements gocache's store.StoreInterface (Get, GetWithTTL, Set,
// Delete, Invalidate, Clear, GetType) over any dbcache.Store that is also
// a dbcache.TTLReader (a *dbcache.Cache, a near cache, a sharded cache),
// through package tags (FromTags takes a tags.Cache of your own: over a
// near cache, one with tags.Config.Origin), so gocache's tags work: a Set with
// store.WithTags(…) tags the entry, and an Invalidate with
// store.WithInvalidateTags(…) makes every entry carrying one of the tags
// a miss, in one write whatever their number (see docs/tags.md).
//
// # Options
//
// The options given to New are every Set's defaults, and a Set's own
// options override them, as gocache's stores do. WithExpiration(d): d > 0
// expires the entry after d by the database's clock; 0 (the default)
// never expires it, as in gocache's Redis and memcache stores; d < 0 is
// an error and nothing is written. WithTags: the entry's tags, at most
// tags.MaxTags, each as package tags accepts them. The options that are
// about other stores' machinery (WithCost and WithSynchronousSet,
// Ristretto's; WithClientSideCaching, Rueidis'; WithTagsTTL: the tags'
// versions here never expire, they go on Invalidate, Clear or culling)
// change nothing.
//
// # Keys and values
//
// Keys are strings (gocache's cache.Cache makes one of any key). Values
// are []byte or string, and Get returns the type Set was given, so
// cache.New[string], cache.New[[]byte] and gocache's marshaler all work;
// any other type is an error (wrap the store in gocache's marshaler to
// store structs). A missing, expired or invalidated entry is gocache's
// store.NotFound (errors.Is(err, store.NotFound{})), wrapping
// dbcache.ErrMiss. GetWithTTL returns 0 for an entry that never expires.
//
// Clear removes every entry of the dbcache store, as gocache's Redis
// store flushes its database.
package gocachestore

import (
	"context"
	"errors"
	"fmt"
	"time"

	lib_store "github.com/eko/gocache/lib/v4/store"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/tags"
)

// Type is what GetType returns.
const Type = "dbcache"

// The first byte of every value the store writes says which type Set was
// given, so Get returns it.
const (
	kindBytes  = 'b'
	kindString = 's'
)

// ErrValueType is returned by Set for a value that is neither []byte nor
// string.
var ErrValueType = errors.New("gocachestore: the value must be []byte or string (wrap the store in gocache's marshaler for other types)")

// ErrKeyType is returned for a key that is not a string.
var ErrKeyType = errors.New("gocachestore: the key must be a string")

// Store is a gocache store over a dbcache store. It is safe for
// concurrent use.
type Store struct {
	tc      *tags.Cache
	options *lib_store.Options
}

var _ lib_store.StoreInterface = (*Store)(nil)

// New returns a gocache store over store, which must also be a
// dbcache.TTLReader. options are every Set's defaults.
func New(store dbcache.Store, options ...lib_store.Option) (*Store, error) {
	tc, err := tags.New(store, nil)
	if err != nil {
		return nil, fmt.Errorf("gocachestore: %w", err)
	}
	return &Store{tc: tc, options: lib_store.ApplyOptions(options...)}, nil
}

// FromTags returns a gocache store over a tagged cache, for one built with
// a tags.Config of its own (Config.Origin, over a near cache, or another
// Prefix). options are every Set's defaults.
func FromTags(tc *tags.Cache, options ...lib_store.Option) (*Store, error) {
	if tc == nil {
		return nil, errors.New("gocachestore: the tagged cache is nil")
	}
	return &Store{tc: tc, options: lib_store.ApplyOptions(options...)}, nil
}

func keyOf(key any) (string, error) {
	k, ok := key.(string)
	if !ok {
		return "", fmt.Errorf("%w, got %T", ErrKeyType, key)
	}
	return k, nil
}

// decodeValue returns the value Set stored, as the type it was given.
func decodeValue(raw []byte) (any, error) {
	if len(raw) == 0 {
		return nil, fmt.Errorf("%w: a value without its type", tags.ErrCorrupt)
	}
	switch raw[0] {
	case kindBytes:
		return raw[1:], nil
	case kindString:
		return string(raw[1:]), nil
	}
	return nil, fmt.Errorf("%w: a value of unknown type %#x", tags.ErrCorrupt, raw[0])
}

func notFound(err error) error {
	if errors.Is(err, dbcache.ErrMiss) {
		return lib_store.NotFoundWithCause(err)
	}
	return err
}

// Get returns the value stored under key, as the type Set was given, or
// store.NotFound.
func (s *Store) Get(ctx context.Context, key any) (any, error) {
	k, err := keyOf(key)
	if err != nil {
		return nil, err
	}
	raw, err := s.tc.Get(ctx, k)
	if err != nil {
		return nil, notFound(err)
	}
	return decodeValue(raw)
}

// GetWithTTL is Get that also returns the entry's remaining lifetime, 0
// for one that never expires.
func (s *Store) GetWithTTL(ctx context.Context, key any) (any, time.Duration, error) {
	k, err := keyOf(key)
	if err != nil {
		return nil, 0, err
	}
	raw, ttl, err := s.tc.GetWithTTL(ctx, k)
	if err != nil {
		return nil, 0, notFound(err)
	}
	v, err := decodeValue(raw)
	if err != nil {
		return nil, 0, err
	}
	d, _ := ttl.Duration() // Forever: 0
	return v, d, nil
}

// Set stores value under key with the store's options overridden by
// options: its expiration and tags.
func (s *Store) Set(ctx context.Context, key any, value any, options ...lib_store.Option) error {
	k, err := keyOf(key)
	if err != nil {
		return err
	}
	var raw []byte
	switch v := value.(type) {
	case []byte:
		raw = append(append(make([]byte, 0, 1+len(v)), kindBytes), v...)
	case string:
		raw = append(append(make([]byte, 0, 1+len(v)), kindString), v...)
	default:
		return fmt.Errorf("%w, got %T", ErrValueType, value)
	}
	opts := lib_store.ApplyOptionsWithDefault(s.options, options...)
	timeout := dbcache.Forever
	switch {
	case opts.Expiration < 0:
		return fmt.Errorf("gocachestore: a negative expiration (%s)", opts.Expiration)
	case opts.Expiration > 0:
		timeout = dbcache.ExpiresIn(opts.Expiration)
	}
	return s.tc.Set(ctx, k, raw, timeout, opts.Tags...)
}

// Delete removes key's entry; a missing key is no error.
func (s *Store) Delete(ctx context.Context, key any) error {
	k, err := keyOf(key)
	if err != nil {
		return err
	}
	return s.tc.Delete(ctx, k)
}

// Invalidate makes every entry carrying one of the tags of
// store.WithInvalidateTags a miss, in one write of the store. With no tag
// it does nothing.
func (s *Store) Invalidate(ctx context.Context, options ...lib_store.InvalidateOption) error {
	return s.tc.Invalidate(ctx, lib_store.ApplyInvalidateOptions(options...).Tags...)
}

// Clear removes every entry of the dbcache store.
func (s *Store) Clear(ctx context.Context) error { return s.tc.Clear(ctx) }

// GetType returns Type, "dbcache".
func (s *Store) GetType() string { return Type }
