package compression_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/codec"
	"github.com/dbcache/dbcache/compression"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/typed"
)

func newStore(t *testing.T) *dbcache.Cache {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	store, err := dbcache.New(ctx, dbtest.Pool(t), nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	return store
}

func newTyped[T any](t *testing.T, store dbcache.Store, c codec.Codec[T]) *typed.Cache[T] {
	t.Helper()
	tc, err := typed.New[T](store, &typed.Config[T]{Codec: c, MissOnDecodeError: true})
	require.NoError(t, err)
	return tc
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// refills checks that key misses through c and that GetOrSetFunc then
// loads and stores a fresh value, which a Get returns.
func refills[T any](t *testing.T, c *typed.Cache[T], key string, fresh T) {
	t.Helper()
	ctx := ctxT(t)
	_, err := c.Get(ctx, key)
	require.ErrorIs(t, err, dbcache.ErrMiss, "%s: an old value is a miss", key)
	loads := 0
	got, err := c.GetOrSetFunc(ctx, key, func(context.Context) (T, error) { loads++; return fresh, nil }, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, fresh, got)
	require.Equal(t, 1, loads)
	got, err = c.Get(ctx, key)
	require.NoError(t, err)
	require.Equal(t, fresh, got)
}

// Turning compression on over values written without it: each is a miss
// (MissOnDecodeError) that the cache refills, including raw values whose
// first byte was a header byte of the one-byte format.
func TestMigrationCompressionOn(t *testing.T) {
	t.Parallel()
	store := newStore(t)
	ctx := ctxT(t)
	raw := newTyped(t, store, codec.Bytes())
	docs := newTyped(t, store, codec.JSON[Report]())
	require.NoError(t, raw.Set(ctx, "raw:0", []byte("\x00abc"), dbcache.DefaultTimeout))
	require.NoError(t, raw.Set(ctx, "raw:1", []byte("\x01\x03\x08xyz"), dbcache.DefaultTimeout))
	require.NoError(t, raw.Set(ctx, "raw:2", []byte("\x02"), dbcache.DefaultTimeout))
	require.NoError(t, docs.Set(ctx, "doc", Report{Title: "old"}, dbcache.DefaultTimeout))

	zc := newC(t, nil)
	rawOn := newTyped(t, store, compression.Wrap(codec.Bytes(), zc))
	docsOn := newTyped(t, store, compression.Wrap(codec.JSON[Report](), zc))
	refills(t, rawOn, "raw:0", []byte("fresh 0"))
	refills(t, rawOn, "raw:1", []byte("fresh 1"))
	refills(t, rawOn, "raw:2", []byte("fresh 2"))
	refills(t, docsOn, "doc", Report{Title: "new"})
	// Each key failed to decode twice: the Get, and the GetOrSetFunc that refilled it.
	require.Equal(t, int64(8), rawOn.Stats().DecodeErrors+docsOn.Stats().DecodeErrors)
	// What is stored now is a frame.
	b, err := store.Get(ctx, "raw:0")
	require.NoError(t, err)
	require.Equal(t, []byte{0xFF, 'D', 'C', 1}, b[:4])
}

// Turning compression off over compressed values: a codec that checks its
// input (JSON) misses and refills them. (codec.Bytes and codec.String
// accept any bytes, so for them the switch is a new Version; the package
// doc says so.)
func TestMigrationCompressionOff(t *testing.T) {
	t.Parallel()
	store := newStore(t)
	ctx := ctxT(t)
	docsOn := newTyped(t, store, compression.Wrap(codec.JSON[Report](), newC(t, nil)))
	big := Report{Title: "big", Lines: make([]string, 500)}
	require.NoError(t, docsOn.Set(ctx, "small", Report{Title: "small"}, dbcache.DefaultTimeout)) // a stored frame
	require.NoError(t, docsOn.Set(ctx, "big", big, dbcache.DefaultTimeout))                      // a zstd frame
	b, err := store.Get(ctx, "big")
	require.NoError(t, err)
	require.Equal(t, byte(compression.Zstd), b[4])

	docsOff := newTyped(t, store, codec.JSON[Report]())
	refills(t, docsOff, "small", Report{Title: "plain small"})
	refills(t, docsOff, "big", Report{Title: "plain big"})
	// And on again: the plain values are misses for the compressed reader.
	refills(t, docsOn, "big", big)
}

// The one-release option reads what the one-byte format stored; without
// it those entries are misses and are refilled in the new format, which
// both readers read.
func TestMigrationOneByteFrames(t *testing.T) {
	t.Parallel()
	store := newStore(t)
	ctx := ctxT(t)
	j := jsonValue(3000, 21)
	for alg := range byte(3) {
		require.NoError(t, store.Set(ctx, "old:"+string('0'+alg), format0(alg, j), dbcache.DefaultTimeout))
	}
	compat := newTyped(t, store, compression.Wrap(codec.Bytes(), newC(t, &compression.Config{ReadOneByteFrames: true})))
	strict := newTyped(t, store, compression.Wrap(codec.Bytes(), newC(t, nil)))
	for alg := range byte(3) {
		key := "old:" + string('0'+alg)
		got, err := compat.Get(ctx, key)
		require.NoError(t, err, key)
		require.Equal(t, j, got)
		refills(t, strict, key, []byte("fresh"))
		got, err = compat.Get(ctx, key)
		require.NoError(t, err)
		require.Equal(t, []byte("fresh"), got)
	}
}
