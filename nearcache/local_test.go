package nearcache

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The fill protocol, without a database: a copy read before a change is
// never stored after the change's invalidation.
func TestFillProtocol(t *testing.T) {
	t.Parallel()
	l, err := newLocal(1<<20, 1<<10)
	require.NoError(t, err)
	defer l.close()
	now := time.Now()
	v := []byte("v")

	// Feed down: nothing is stored.
	tok := l.beginFill("k")
	require.False(t, l.endFill(tok, true, v, time.Time{}))
	l.setFeed(true)

	// Feed up: stored, and served.
	tok = l.beginFill("k")
	require.True(t, l.endFill(tok, true, v, time.Time{}))
	_, ok := l.get("k", now)
	require.True(t, ok)

	// An invalidation while a fill runs turns it away (it may have read
	// the value from before the change), and drops the copy.
	tok = l.beginFill("k")
	require.True(t, l.invalidate("k"))
	require.False(t, l.endFill(tok, true, v, time.Time{}))
	_, ok = l.get("k", now)
	require.False(t, ok)

	// Two fills in flight, one invalidation: neither stores.
	t1, t2 := l.beginFill("k"), l.beginFill("k")
	l.invalidate("k")
	require.False(t, l.endFill(t1, true, v, time.Time{}))
	require.False(t, l.endFill(t2, true, v, time.Time{}))
	require.Empty(t, l.shard("k").pending, "no mark outlives its fills")

	// An invalidation of another key does not.
	tok = l.beginFill("k")
	l.invalidate("other")
	require.True(t, l.endFill(tok, true, v, time.Time{}))

	// A flush (Clear, a truncate) and the feed going down turn away every
	// fill in flight and drop every copy.
	for _, drop := range []func() int{l.flush, func() int { return l.setFeed(false) }} {
		tok = l.beginFill("k2")
		require.Positive(t, drop())
		require.False(t, l.endFill(tok, true, v, time.Time{}))
		require.Zero(t, l.len())
		l.setFeed(true)
		tok = l.beginFill("k")
		require.True(t, l.endFill(tok, true, v, time.Time{}))
	}
	require.True(t, l.feedUp())

	// A prefix: the fills of keys under it are turned away.
	tok = l.beginFill("user:1")
	other := l.beginFill("page:1")
	l.invalidatePrefix("user:")
	require.False(t, l.endFill(tok, true, v, time.Time{}))
	require.True(t, l.endFill(other, true, v, time.Time{}))

	// Expiry, and a value over the size limit.
	tok = l.beginFill("e")
	expires := time.Now().Add(time.Hour)
	require.True(t, l.endFill(tok, true, v, expires))
	_, ok = l.get("e", time.Now())
	require.True(t, ok)
	_, ok = l.get("e", expires)
	require.False(t, ok, "expired at its expiry")
	tok = l.beginFill("big")
	require.False(t, l.endFill(tok, true, make([]byte, 2<<10), time.Time{}))
}

// Fills racing invalidations of the same keys: whatever the interleaving,
// once the last invalidation (after which no fill began) is done, no copy
// is left of a value read before it.
func TestFillRace(t *testing.T) {
	t.Parallel()
	l, err := newLocal(1<<20, 1<<10)
	require.NoError(t, err)
	defer l.close()
	l.setFeed(true)
	var (
		mu      sync.RWMutex // the "database": version of each key
		version = map[string]int{}
		wg      sync.WaitGroup
	)
	keys := []string{"a", "b", "c"}
	for g := range 8 {
		wg.Go(func() {
			for i := range 3000 {
				k := keys[(g+i)%len(keys)]
				if i%5 == 0 { // a write, then its invalidation
					mu.Lock()
					version[k]++
					mu.Unlock()
					l.invalidate(k)
					continue
				}
				tok := l.beginFill(k)
				mu.RLock()
				v := version[k]
				mu.RUnlock()
				l.endFill(tok, true, []byte(fmt.Sprint(v)), time.Time{})
			}
		})
	}
	wg.Wait()
	for _, k := range keys {
		if e, ok := l.get(k, time.Now()); ok {
			require.Equal(t, fmt.Sprint(version[k]), string(e.value), "copy of %s", k)
		}
	}
}

// MaxBytes bounds the copies' weight, and the weight's per-entry overhead
// covers what an entry really costs on the heap.
func TestMemoryBound(t *testing.T) {
	const maxBytes = 4 << 20
	l, err := newLocal(maxBytes, 1<<20)
	require.NoError(t, err)
	defer l.close()
	l.setFeed(true)
	fill := func(n, size int) {
		for i := range n {
			k := fmt.Sprintf("prefix:1:key-%08d", i)
			tok := l.beginFill(k)
			l.endFill(tok, true, make([]byte, size), time.Time{})
		}
		l.cache.CleanUp()
	}
	fill(60_000, 100)
	require.LessOrEqual(t, l.bytes(), uint64(maxBytes))
	require.Greater(t, l.bytes(), uint64(maxBytes/2), "the budget is used")

	// The heap an entry takes, against its weight.
	l.flush()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fill(10_000, 100)
	runtime.GC()
	runtime.ReadMemStats(&after)
	perEntry := float64(after.HeapAlloc-before.HeapAlloc) / float64(l.len())
	weight := float64(l.bytes()) / float64(l.len())
	t.Logf("%d entries: %.0f heap bytes each, weighed %.0f", l.len(), perEntry, weight)
	require.LessOrEqual(t, perEntry, 1.25*weight, "the weight covers the heap within 25%%")
}

// A copy kept by a write through the layer survives that write's own
// change arriving on the feed, and no other.
func TestWriteKeepsCopy(t *testing.T) {
	t.Parallel()
	l, err := newLocal(1<<20, 1<<10)
	require.NoError(t, err)
	defer l.close()
	l.setFeed(true)
	now := time.Now()
	v := []byte("mine")
	served := func() bool {
		_, ok := l.get("k", now)
		return ok
	}

	// Its own change arrives after it returns: absorbed; the next drops.
	tok := l.beginWrite("k")
	require.True(t, l.endWrite(tok, true, v, time.Time{}, 1))
	require.True(t, served())
	require.False(t, l.changed("k"), "its own change is absorbed")
	require.True(t, served())
	require.True(t, l.changed("k"), "the next change drops it")
	require.False(t, served())

	// Its own change arrives before it returns: kept, and the next drops.
	tok = l.beginWrite("k")
	l.changed("k")
	require.True(t, l.endWrite(tok, true, v, time.Time{}, 1))
	require.True(t, l.changed("k"))

	// Two changes before it returns (an older one, then its own): nothing.
	tok = l.beginWrite("k")
	l.changed("k")
	l.changed("k")
	require.False(t, l.endWrite(tok, true, v, time.Time{}, 1))
	require.False(t, served())

	// Two writes of the key at once: neither keeps a copy.
	t1, t2 := l.beginWrite("k"), l.beginWrite("k")
	require.False(t, l.endWrite(t1, true, v, time.Time{}, 1))
	require.False(t, l.endWrite(t2, true, v, time.Time{}, 1))
	require.Empty(t, l.shard("k").writes)

	// A failed write keeps nothing, and drops the copy from before it. A
	// fill during a write may store its copy until the write returns;
	// one still in flight then stores nothing.
	require.True(t, l.endFill(l.beginFill("k"), true, []byte("old"), time.Time{}))
	tok = l.beginWrite("k")
	require.True(t, served(), "the copy from before is served while the write is in flight")
	require.False(t, l.endWrite(tok, false, nil, time.Time{}, 1))
	require.False(t, served())
	tok = l.beginWrite("k")
	require.True(t, l.endFill(l.beginFill("k"), true, []byte("old"), time.Time{}))
	f := l.beginFill("k")
	l.endWrite(tok, true, v, time.Time{}, 1)
	require.False(t, l.endFill(f, true, []byte("old"), time.Time{}), "in flight when the write returned")
	e, ok := l.get("k", now)
	require.True(t, ok)
	require.Equal(t, v, e.value, "the write's copy replaced the fill's")
	l.changed("k")
	f = l.beginFill("k")
	tok = l.beginWrite("k")
	require.False(t, l.endFill(f, true, []byte("old"), time.Time{}), "a fill in flight when a write begins")
	l.endWrite(tok, false, nil, time.Time{}, 1)

	// The feed going down during the write: nothing.
	tok = l.beginWrite("k")
	l.setFeed(false)
	l.setFeed(true)
	require.False(t, l.endWrite(tok, true, v, time.Time{}, 1))
}

// Own writes, foreign writes and fills racing, with a feed that delivers
// every change in commit order: once the feed has delivered everything, any
// copy left holds the latest value.
func TestWriteRace(t *testing.T) {
	t.Parallel()
	l, err := newLocal(1<<20, 1<<10)
	require.NoError(t, err)
	defer l.close()
	l.setFeed(true)
	var (
		mu      sync.Mutex // the database: commits in order, each sent to the feed
		version = map[string]int{}
		feed    = make(chan string, 1<<16)
		wg      sync.WaitGroup
	)
	commit := func(k string) int {
		mu.Lock()
		defer mu.Unlock()
		version[k]++
		feed <- k
		return version[k]
	}
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		for k := range feed {
			l.changed(k)
		}
	}()
	keys := []string{"a", "b"}
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				k := keys[(g+i)%len(keys)]
				switch i % 4 {
				case 0: // a write through the layer
					tok := l.beginWrite(k)
					v := commit(k)
					l.endWrite(tok, true, []byte(fmt.Sprint(v)), time.Time{}, 1)
				case 1: // another process's write
					commit(k)
				default: // a read that fills
					tok := l.beginFill(k)
					mu.Lock()
					v := version[k]
					mu.Unlock()
					l.endFill(tok, true, []byte(fmt.Sprint(v)), time.Time{})
				}
			}
		})
	}
	wg.Wait()
	close(feed)
	<-fed
	for _, k := range keys {
		if e, ok := l.get(k, time.Now()); ok {
			require.Equal(t, fmt.Sprint(version[k]), string(e.value), "copy of %s", k)
		}
	}
}

// A write that replaces a copy whose own change is still due: both
// changes are absorbed, and the next drops the copy.
func TestWriteOwed(t *testing.T) {
	t.Parallel()
	l, err := newLocal(1<<20, 1<<10)
	require.NoError(t, err)
	defer l.close()
	l.setFeed(true)
	served := func() bool {
		_, ok := l.get("k", time.Now())
		return ok
	}
	require.True(t, l.endWrite(l.beginWrite("k"), true, []byte("1"), time.Time{}, 1))
	tok := l.beginWrite("k") // the first write's change is still due
	require.True(t, l.endWrite(tok, true, []byte("2"), time.Time{}, 1))
	require.False(t, l.changed("k"), "the first write's change")
	require.False(t, l.changed("k"), "the second's")
	require.True(t, served())
	require.True(t, l.changed("k"), "anything after drops it")

	// The first write's change arrives while the second is in flight.
	require.True(t, l.endWrite(l.beginWrite("k"), true, []byte("1"), time.Time{}, 1))
	tok = l.beginWrite("k")
	l.changed("k")
	require.True(t, l.endWrite(tok, true, []byte("2"), time.Time{}, 1))
	require.False(t, l.changed("k"))
	require.True(t, l.changed("k"))
}

// keyLocks: one holder per key, other keys free, a waiter gives up with
// its context, and nothing is left once all are released.
func TestKeyLocks(t *testing.T) {
	t.Parallel()
	var k keyLocks
	ctx := context.Background()
	unlock, err := k.lock(ctx, "a")
	require.NoError(t, err)
	other, err := k.lock(ctx, "b")
	require.NoError(t, err)
	other()
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	_, err = k.lock(short, "a")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	got := make(chan struct{})
	go func() {
		u, err := k.lock(ctx, "a")
		if err == nil {
			u()
		}
		close(got)
	}()
	unlock()
	<-got
	require.Empty(t, k.m)
}
