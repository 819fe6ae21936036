package memstore_test

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/memstore"
	"github.com/dbcache/dbcache/storetest"
)

func newStore(t *testing.T, cfg *memstore.Config) *memstore.Store {
	t.Helper()
	s, err := memstore.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// The in-memory Store passes the conformance suite, aged by FastForward.
func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, storetest.Config{
		New: func(t *testing.T) dbcache.Store { return newStore(t, nil) },
		Age: func(_ *testing.T, s dbcache.Store, d time.Duration) { s.(*memstore.Store).FastForward(d) },
		WithVersion: func(s dbcache.Store, v int) dbcache.Store {
			return s.(*memstore.Store).WithVersion(v)
		},
	})
}

// And on its real clock alone, as a store that cannot be aged runs it.
func TestConformanceRealClock(t *testing.T) {
	t.Parallel()
	storetest.Run(t, storetest.Config{
		New: func(t *testing.T) dbcache.Store { return newStore(t, nil) },
	})
}

// The store's clock decides expiry: FastForward ages every view's entries
// at once, and a Config.Now that stands still expires nothing.
func TestFastForward(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newStore(t, &memstore.Config{Now: func() time.Time { return start }})
	v2 := s.WithVersion(2)
	require.NoError(t, s.Set(ctx, "a", []byte("1"), dbcache.ExpiresIn(time.Minute)))
	require.NoError(t, v2.Set(ctx, "a", []byte("2"), dbcache.ExpiresIn(time.Minute)))
	require.NoError(t, s.Set(ctx, "f", []byte("f"), dbcache.Forever))
	require.Equal(t, 3, s.Len())
	s.FastForward(59 * time.Second)
	ttl, err := s.TTL(ctx, "a")
	require.NoError(t, err)
	d, _ := ttl.Duration()
	require.Equal(t, time.Second, d, "the clock stands still between FastForwards")
	s.FastForward(-time.Hour) // ignored
	s.FastForward(time.Second)
	_, err = s.Get(ctx, "a")
	require.ErrorIs(t, err, dbcache.ErrMiss)
	_, err = v2.Get(ctx, "a")
	require.ErrorIs(t, err, dbcache.ErrMiss, "every view's clock moved")
	require.Equal(t, 1, s.Len())
	// Durations are kept to the microsecond, as PostgreSQL keeps them.
	require.NoError(t, s.Set(ctx, "ns", []byte("x"), dbcache.ExpiresIn(time.Nanosecond)))
	ttl, err = s.TTL(ctx, "ns")
	require.NoError(t, err)
	d, _ = ttl.Duration()
	require.Equal(t, time.Microsecond, d)
}

// Keys are made and checked as a *dbcache.Cache makes and checks them:
// prefix and version, the memcached warnings as KeyCheck says (every
// problem logged, no key unless LogKeys), Django's VERSION = 0, and a
// KeyFunc that does not end with the caller's key refusing prefixes.
func TestKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	logs := &strings.Builder{}
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, logs}, nil))
	s := newStore(t, &memstore.Config{KeyPrefix: "app", Logger: log})
	require.Equal(t, "app:1:k", s.MakeKey("k"))
	require.Equal(t, "app:3:k", s.WithVersion(3).MakeKey("k"))
	key := strings.Repeat("a b", 100)
	require.NoError(t, s.Set(ctx, key, []byte("v"), dbcache.DefaultTimeout))
	mu.Lock()
	require.Equal(t, 2, strings.Count(logs.String(), "level=WARN"), logs.String())
	require.NotContains(t, logs.String(), "a b")
	mu.Unlock()

	strict := newStore(t, &memstore.Config{KeyCheck: dbcache.KeyCheckError})
	require.ErrorIs(t, strict.Set(ctx, "a b", []byte("v"), dbcache.DefaultTimeout), dbcache.ErrInvalidKey)
	require.Zero(t, strict.Len())
	var ik *dbcache.InvalidKeyError
	_, err := strict.Get(ctx, "a b")
	require.ErrorAs(t, err, &ik)
	require.Equal(t, "a b", ik.Key)
	require.Equal(t, ":1:a b", ik.MadeKey)

	zero := newStore(t, &memstore.Config{VersionZero: true})
	require.Equal(t, ":0:k", zero.MakeKey("k"))
	require.Equal(t, 0, zero.Version())
	_, err = memstore.New(&memstore.Config{VersionZero: true, Version: 1})
	require.ErrorContains(t, err, "VersionZero")
	_, err = memstore.New(&memstore.Config{KeyCheck: 7})
	require.ErrorContains(t, err, "KeyCheck")

	suffix := newStore(t, &memstore.Config{KeyFunc: func(key, prefix string, version int) string {
		return key + "|" + prefix + "|" + strconv.Itoa(version)
	}})
	require.NoError(t, suffix.Set(ctx, "k", []byte("v"), dbcache.DefaultTimeout))
	require.Equal(t, "v", string(must(suffix.Get(ctx, "k"))))
	_, err = suffix.DeletePrefix(ctx, "k")
	require.ErrorIs(t, err, dbcache.ErrPrefixUnsupported)
	for _, err := range suffix.Keys(ctx, "") {
		require.ErrorIs(t, err, dbcache.ErrPrefixUnsupported)
	}
}

// Close ends the background refreshes of GetOrRevalidate (their loader's
// context is cancelled) and waits for them; after it every operation is
// ErrClosed.
func TestCloseEndsRefreshes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := memstore.New(nil)
	require.NoError(t, err)
	require.NoError(t, s.Set(ctx, "k", []byte("v"), dbcache.ExpiresIn(time.Hour)))
	entered := make(chan struct{})
	var ended atomic.Bool
	v, err := s.GetOrRevalidate(ctx, "k", func(lctx context.Context) ([]byte, error) {
		close(entered)
		<-lctx.Done()
		ended.Store(true)
		return nil, lctx.Err()
	}, 0, time.Hour)
	require.NoError(t, err)
	require.Equal(t, "v", string(v))
	<-entered
	require.NoError(t, s.Close())
	require.True(t, ended.Load(), "Close returned before the refresh did")
	_, err = s.Get(ctx, "k")
	require.ErrorIs(t, err, dbcache.ErrClosed)
}

// Many goroutines on every operation at once: the race detector watches.
func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				k := strconv.Itoa(i % 17)
				_ = s.Set(ctx, k, []byte(strconv.Itoa(g)), dbcache.ExpiresIn(time.Duration(i)*time.Millisecond))
				_, _ = s.Get(ctx, k)
				_, _ = s.Add(ctx, k, []byte("1"), dbcache.DefaultTimeout)
				_, _ = s.Incr(ctx, k, 1)
				_, _ = s.GetMany(ctx, []string{k, "x"})
				_, _ = s.GetOrSetFunc(ctx, k, func(context.Context) ([]byte, error) { return []byte("1"), nil }, dbcache.DefaultTimeout)
				for range s.Keys(ctx, "") {
				}
				if i%50 == 0 {
					_, _ = s.DeletePrefix(ctx, "1")
					s.FastForward(time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
