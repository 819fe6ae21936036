package dbcache

import (
	"context"
	"iter"
)

// Store is the byte-level cache API: every operation of Cache that reads or
// writes entries. *Cache implements it, and so do the caches built from
// caches (a sharded cache over several servers, a near cache in front of
// one), so that what is layered on top (typed values, metrics, the CLI)
// works with any of them. Views (WithVersion, WithTx) stay on *Cache: a
// transaction belongs to one server.
//
// Implementations keep Cache's documented semantics and sentinel errors
// (ErrMiss, ErrNotInteger, ErrOverflow, ErrInvalidKey, ErrClosed) and are
// safe for concurrent use.
type Store interface {
	Get(ctx context.Context, key string) ([]byte, error)
	GetWithTTL(ctx context.Context, key string) ([]byte, Timeout, error)
	TTL(ctx context.Context, key string) (Timeout, error)
	HasKey(ctx context.Context, key string) (bool, error)
	GetMany(ctx context.Context, keys []string) (map[string][]byte, error)
	Keys(ctx context.Context, prefix string) iter.Seq2[string, error]

	Set(ctx context.Context, key string, value []byte, timeout Timeout) error
	Add(ctx context.Context, key string, value []byte, timeout Timeout) (bool, error)
	Touch(ctx context.Context, key string, timeout Timeout) (bool, error)
	GetOrSet(ctx context.Context, key string, value []byte, timeout Timeout) ([]byte, error)
	GetOrSetFunc(ctx context.Context, key string, load func(context.Context) ([]byte, error), timeout Timeout) ([]byte, error)
	SetMany(ctx context.Context, items map[string][]byte, timeout Timeout) ([]string, error)

	Incr(ctx context.Context, key string, delta int64) (int64, error)
	Decr(ctx context.Context, key string, delta int64) (int64, error)
	IncrVersion(ctx context.Context, key string, delta int) (int, error)
	DecrVersion(ctx context.Context, key string, delta int) (int, error)

	Delete(ctx context.Context, key string) (bool, error)
	DeleteMany(ctx context.Context, keys []string) (int, error)
	DeletePrefix(ctx context.Context, prefix string) (int, error)
	Clear(ctx context.Context) error

	Close() error
}

var _ Store = (*Cache)(nil)
