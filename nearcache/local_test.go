package nearcache

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
)

// everything is a snapshot in which every transaction of these tests has
// ended.
var everything = dbcache.Snapshot{Xmin: 1 << 40, Xmax: 1 << 40}

// running is a snapshot in which xids are running, every other id below
// 1<<40 ended.
func running(xids ...uint64) dbcache.Snapshot {
	slices.Sort(xids)
	return dbcache.Snapshot{Xmin: xids[0], Xmax: 1 << 40, Xip: xids}
}

func found(v []byte, snap dbcache.Snapshot) fillResult {
	return fillResult{found: true, value: v, snap: snap}
}

// keepFill is a fill that read v with a snapshot that saw everything.
func keepFill(l *local, key string, v []byte) int {
	return l.endFill(l.beginFill(key), found(v, everything))
}

// The fill protocol, without a database: a copy is kept only when the
// read's snapshot saw every change delivered for the key end, and a fill
// is turned away by any write or read of the key that ended while it ran.
func TestFillProtocol(t *testing.T) {
	t.Parallel()
	l, err := newLocal(1<<20, 1<<10)
	require.NoError(t, err)
	defer l.close()
	now := time.Now()
	v := []byte("v")
	held := func(k string) bool {
		_, ok := l.get(k, now)
		return ok
	}

	// Feed down: nothing is stored.
	require.Equal(t, fillNotKept, keepFill(l, "k", v))
	l.setFeed(true)

	// Feed up: stored, and served.
	require.Equal(t, fillKept, keepFill(l, "k", v))
	require.True(t, held("k"))

	// A write through the layer ending while a fill runs turns it away
	// (it may have read the value from before the write), and drops the
	// copy.
	tok := l.beginFill("k")
	require.True(t, l.invalidate("k"))
	require.Equal(t, fillNotKept, l.endFill(tok, found(v, everything)))
	require.False(t, held("k"))

	// A change the feed delivered (transaction 100) whose transaction the
	// read's snapshot had not seen end: the read may hold the value from
	// before it, whether it began before the change arrived or after.
	require.Equal(t, fillKept, keepFill(l, "k", v))
	tok = l.beginFill("k")
	require.True(t, l.changed("k", 100))
	require.Equal(t, fillUnseen, l.endFill(tok, found(v, running(100))))
	require.False(t, held("k"))
	require.Equal(t, fillUnseen, l.endFill(l.beginFill("k"), found(v, running(100))), "a fill that began after the change arrived")
	// The same read with the transaction ended in its snapshot saw it.
	require.Equal(t, fillKept, l.endFill(l.beginFill("k"), found(v, running(99))))
	require.True(t, held("k"))
	// A newer change of the key replaces the remembered one (the row's
	// lock orders them).
	l.changed("k", 90)
	require.Equal(t, fillKept, l.endFill(l.beginFill("k"), found(v, running(100))))
	require.Equal(t, fillUnseen, l.endFill(l.beginFill("k"), found(v, running(90))))
	// Another key's change is not this key's.
	l.changed("other", 100)
	require.Equal(t, fillKept, l.endFill(l.beginFill("other"), found(v, running(90))))
	// No snapshot (a fail-open miss, a store error): never kept.
	require.Equal(t, fillNotKept, l.endFill(l.beginFill("k"), fillResult{}))
	require.Equal(t, fillUnseen, l.endFill(l.beginFill("k"), found(v, dbcache.Snapshot{})))

	// Pruning: a snapshot that saw 90 end forgets it; a fill whose
	// snapshot is older than the pruning one keeps nothing, a newer one
	// keeps its copy.
	pruner := dbcache.Snapshot{Xmin: 95, Xmax: 200, Xip: []uint64{95, 100}}
	keys, _ := l.remembering()
	require.EqualValues(t, 2, keys)
	l.prune(pruner)
	keys, _ = l.remembering()
	require.EqualValues(t, 1, keys, "90 ended, 100 still remembered (for other)")
	require.Equal(t, fillUnseen, l.endFill(l.beginFill("k"), found(v, dbcache.Snapshot{Xmin: 80, Xmax: 150, Xip: []uint64{80, 90}})), "older than the pruning snapshot")
	require.Equal(t, fillKept, l.endFill(l.beginFill("k"), found(v, dbcache.Snapshot{Xmin: 95, Xmax: 210, Xip: []uint64{95, 205}})))
	l.prune(dbcache.Snapshot{Xmin: 300, Xmax: 300})
	keys, table := l.remembering()
	require.Zero(t, keys)
	require.Zero(t, table)

	// A fill of a key with nothing remembered (and no table-wide id) needs
	// no snapshot: every change delivered before it began was seen ended
	// before it began. One delivered while it runs turns it away.
	tok = l.beginFill("fresh")
	require.False(t, tok.snapshot)
	require.Equal(t, fillKept, l.endFill(tok, found(v, dbcache.Snapshot{})))
	tok = l.beginFill("fresh")
	l.changed("fresh", 250)
	require.Equal(t, fillNotKept, l.endFill(tok, found(v, dbcache.Snapshot{})))
	tok = l.beginFill("fresh")
	require.True(t, tok.snapshot, "now remembered: a snapshot is needed")
	require.Equal(t, fillUnseen, l.endFill(tok, found(v, dbcache.Snapshot{})))
	l.prune(dbcache.Snapshot{Xmin: 260, Xmax: 260})
	tok = l.beginFill("other2")
	require.False(t, tok.snapshot)
	l.endFill(tok, fillResult{})

	// Two fills in flight: the first to end keeps its copy; the other,
	// whichever state it read (their snapshots come in no order), keeps
	// nothing and drops that copy, which may be older than what it
	// returned.
	t1, t2 := l.beginFill("k"), l.beginFill("k")
	require.Equal(t, fillKept, l.endFill(t2, found([]byte("old"), everything)))
	e, ok := l.get("k", now)
	require.True(t, ok)
	require.Equal(t, "old", string(e.value))
	require.Equal(t, fillNotKept, l.endFill(t1, found([]byte("new"), everything)))
	require.False(t, held("k"), "the older copy must not outlive the newer answer")
	require.Empty(t, l.shard("k").pending, "no mark outlives its fills")
	t1, t2 = l.beginFill("k"), l.beginFill("k")
	require.Equal(t, fillKept, l.endFill(t2, found([]byte("same"), everything)))
	require.Equal(t, fillNotKept, l.endFill(t1, found([]byte("same"), everything)))
	require.True(t, held("k"), "a copy of exactly what the other read returned stays")

	// A fill that found nothing drops the copy (older than its answer).
	require.Equal(t, fillNotKept, l.endFill(l.beginFill("k"), fillResult{snap: everything}))
	require.False(t, held("k"))

	// Table-wide ids: a truncate's transaction, or one running when a
	// feed session started, must have ended in every kept fill's
	// snapshot; a start's leaves once its commit is delivered.
	l.tableWide(400, tableTruncate)
	l.tableWide(401, tableStart)
	require.Equal(t, fillUnseen, l.endFill(l.beginFill("k"), found(v, running(400))))
	l.committed(400)
	l.committed(401)
	_, table = l.remembering()
	require.EqualValues(t, 1, table, "the truncate's stays until a snapshot sees it end")
	require.Equal(t, fillUnseen, l.endFill(l.beginFill("k"), found(v, running(400))))
	require.Equal(t, fillKept, l.endFill(l.beginFill("k"), found(v, running(401))))
	l.prune(dbcache.Snapshot{Xmin: 500, Xmax: 500})
	_, table = l.remembering()
	require.Zero(t, table)

	// A flush (Clear, a truncate) and the feed going down turn away every
	// fill in flight and drop every copy.
	for _, drop := range []func() int{l.flush, func() int { return l.setFeed(false) }} {
		tok = l.beginFill("k2")
		require.Positive(t, drop())
		require.Equal(t, fillNotKept, l.endFill(tok, found(v, everything)))
		require.Zero(t, l.len())
		l.setFeed(true)
		require.Equal(t, fillKept, keepFill(l, "k", v))
	}
	require.True(t, l.feedUp())

	// A prefix: the fills of keys under it are turned away.
	tok = l.beginFill("user:1")
	other := l.beginFill("page:1")
	l.invalidatePrefix("user:")
	require.Equal(t, fillNotKept, l.endFill(tok, found(v, everything)))
	require.Equal(t, fillKept, l.endFill(other, found(v, everything)))

	// Expiry, and a value over the size limit.
	expires := time.Now().Add(time.Hour)
	require.Equal(t, fillKept, l.endFill(l.beginFill("e"), fillResult{found: true, value: v, expires: expires, snap: everything}))
	_, ok = l.get("e", time.Now())
	require.True(t, ok)
	_, ok = l.get("e", expires)
	require.False(t, ok, "expired at its expiry")
	require.Equal(t, fillNotKept, keepFill(l, "big", make([]byte, 2<<10)))
}

// Past maxRemembered keys the ids collapse into a watermark: every fill
// keeps nothing until a snapshot's xmin passes the newest id delivered.
func TestRememberedOverflow(t *testing.T) {
	t.Parallel()
	l, err := newLocal(1<<20, 1<<10)
	require.NoError(t, err)
	defer l.close()
	l.setFeed(true)
	for i := range maxRemembered + 10 {
		l.changed(fmt.Sprint("k", i), uint64(1000+i))
	}
	keys, table := l.remembering()
	require.EqualValues(t, maxRemembered, keys)
	require.EqualValues(t, 1, table)
	newest := uint64(1000 + maxRemembered + 9)
	require.Equal(t, fillUnseen, l.endFill(l.beginFill("fresh"), found([]byte("v"), dbcache.Snapshot{Xmin: newest, Xmax: newest + 1})))
	l.prune(dbcache.Snapshot{Xmin: newest + 1, Xmax: newest + 1})
	keys, table = l.remembering()
	require.Zero(t, keys)
	require.Zero(t, table)
	require.Equal(t, fillKept, l.endFill(l.beginFill("fresh"), found([]byte("v"), dbcache.Snapshot{Xmin: newest + 1, Xmax: newest + 1})))
}

// A simulated database in which a commit reaches the WAL (and the feed)
// before it becomes visible, by any delay, as with a synchronous standby:
// fills (with their snapshots, or without when they may), writes by other
// processes, the feed and the heartbeats' pruning race; once every write
// is visible and delivered, no copy is older than the newest value. (With
// the visibility check removed, copies of the old value survive here.)
func TestVisibilityRace(t *testing.T) {
	t.Parallel()
	l, err := newLocal(1<<20, 1<<10)
	require.NoError(t, err)
	defer l.close()
	l.setFeed(true)
	type version struct {
		xid uint64
		val int
	}
	var (
		mu       sync.Mutex // the WAL and the proc array
		nextXid  uint64     = 10
		runningX            = map[uint64]bool{}
		versions            = map[string][]version{} // per key, in commit order
		wg       sync.WaitGroup
		writing  sync.WaitGroup
		done     = make(chan struct{})
	)
	snapshot := func() dbcache.Snapshot {
		s := dbcache.Snapshot{Xmax: nextXid}
		for x := range runningX {
			s.Xip = append(s.Xip, x)
		}
		slices.Sort(s.Xip)
		s.Xmin = s.Xmax
		if len(s.Xip) > 0 {
			s.Xmin = s.Xip[0]
		}
		return s
	}
	// read returns key's newest visible value and the snapshot.
	read := func(k string) (int, dbcache.Snapshot) {
		mu.Lock()
		defer mu.Unlock()
		s := snapshot()
		vs := versions[k]
		for i := len(vs) - 1; i >= 0; i-- {
			if s.Ended(vs[i].xid) {
				return vs[i].val, s
			}
		}
		return 0, s
	}
	var keys []string
	rowLocks := map[string]*sync.Mutex{}
	for i := range 12 {
		k := fmt.Sprint("k", i)
		keys = append(keys, k)
		rowLocks[k] = &sync.Mutex{}
	}
	for g := range 2 { // other processes writing
		writing.Add(1)
		wg.Go(func() {
			defer writing.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for range 300 {
				k := keys[r.IntN(len(keys))]
				rowLocks[k].Lock() // held to the transaction's end
				mu.Lock()
				x := nextXid
				nextXid++
				runningX[x] = true
				versions[k] = append(versions[k], version{x, int(x)})
				l.changed(k, x) // committed in the WAL and delivered: not visible yet
				mu.Unlock()
				time.Sleep(time.Duration(100+r.IntN(900)) * time.Microsecond) // the standby's wait
				mu.Lock()
				delete(runningX, x) // visible
				mu.Unlock()
				rowLocks[k].Unlock()
			}
		})
	}
	go func() { writing.Wait(); close(done) }()
	wg.Go(func() { // the heartbeats
		for {
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
			_, s := read(keys[0])
			l.prune(s)
		}
	})
	for g := range 4 { // readers filling
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 2))
			for {
				select {
				case <-done:
					return
				default:
				}
				k := keys[r.IntN(len(keys))]
				tok := l.beginFill(k)
				v, s := read(k)
				if r.IntN(4) == 0 {
					runtime.Gosched()
				}
				if !tok.snapshot && r.IntN(2) == 0 {
					s = dbcache.Snapshot{}
				}
				l.endFill(tok, found([]byte(fmt.Sprint(v)), s))
			}
		})
	}
	wg.Wait()
	for _, k := range keys {
		vs := versions[k]
		if e, ok := l.get(k, time.Now()); ok && len(vs) > 0 {
			require.Equal(t, fmt.Sprint(vs[len(vs)-1].val), string(e.value), "copy of %s", k)
		}
	}
}

// Fills racing writes through the layer of the same keys: whatever the
// interleaving, once the last write (after which no fill began) is done,
// no copy is left of a value read before it.
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
				if i%5 == 0 { // a write through the layer
					tok := l.beginWrite(k)
					mu.Lock()
					version[k]++
					mu.Unlock()
					l.endWrite(tok, false, nil, time.Time{}, 0)
					continue
				}
				tok := l.beginFill(k)
				mu.RLock()
				v := version[k]
				mu.RUnlock()
				l.endFill(tok, found([]byte(fmt.Sprint(v)), everything))
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
			keepFill(l, fmt.Sprintf("prefix:1:key-%08d", i), make([]byte, size))
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

func kept(l *local, t writeToken, keep bool, v []byte) bool {
	k, _ := l.endWrite(t, keep, v, time.Time{}, 1)
	return k
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
	require.True(t, kept(l, tok, true, v))
	require.True(t, served())
	require.False(t, l.changed("k", 1), "its own change is absorbed")
	require.True(t, served())
	require.True(t, l.changed("k", 2), "the next change drops it")
	require.False(t, served())

	// Its own change arrives before it returns: kept, and the next drops.
	tok = l.beginWrite("k")
	l.changed("k", 3)
	require.True(t, kept(l, tok, true, v))
	require.True(t, l.changed("k", 4))

	// Two changes before it returns (an older one, then its own): nothing.
	tok = l.beginWrite("k")
	l.changed("k", 5)
	l.changed("k", 6)
	require.False(t, kept(l, tok, true, v))
	require.False(t, served())

	// Two writes of the key at once: neither keeps a copy; nor does a
	// Set beside any other write of the key (a Delete, an Incr).
	t1, t2 := l.beginWrite("k"), l.beginWrite("k")
	require.False(t, kept(l, t1, true, v))
	require.False(t, kept(l, t2, true, v))
	set, del := l.beginWrite("k"), l.beginWrite("k")
	require.False(t, kept(l, del, false, nil))
	require.False(t, kept(l, set, true, v), "the Delete may have committed after it")
	require.False(t, served())
	set, del = l.beginWrite("k"), l.beginWrite("k")
	require.False(t, kept(l, set, true, v))
	require.False(t, kept(l, del, false, nil))
	require.Empty(t, l.shard("k").writes)

	// A failed write keeps nothing, and drops the copy from before it. A
	// fill during a write may store its copy until the write returns;
	// one still in flight then stores nothing.
	require.Equal(t, fillKept, keepFill(l, "k", []byte("old")))
	tok = l.beginWrite("k")
	require.True(t, served(), "the copy from before is served while the write is in flight")
	require.False(t, kept(l, tok, false, nil))
	require.False(t, served())
	tok = l.beginWrite("k")
	require.Equal(t, fillKept, keepFill(l, "k", []byte("old")))
	e, ok := l.get("k", now)
	require.True(t, ok)
	require.Equal(t, "old", string(e.value))
	f := l.beginFill("k")
	kept(l, tok, true, v)
	e, ok = l.get("k", now)
	require.True(t, ok)
	require.Equal(t, v, e.value, "the write's copy replaced the fill's")
	require.Equal(t, fillNotKept, l.endFill(f, found([]byte("old"), everything)), "in flight when the write returned")
	require.False(t, served(), "it may have read a newer state than the write's: the copy goes")
	l.changed("k", 7)

	// The feed going down, or a DeletePrefix covering the key, during the
	// write: nothing.
	tok = l.beginWrite("k")
	l.setFeed(false)
	l.setFeed(true)
	require.False(t, kept(l, tok, true, v))
	tok = l.beginWrite("k")
	l.invalidatePrefix("")
	require.False(t, kept(l, tok, true, v))
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
		mu      sync.Mutex // the database: commits in order, each sent to the feed, visible at once
		version = map[string]int{}
		feed    = make(chan string, 1<<16)
		wg      sync.WaitGroup
	)
	commit := func(k string, v int) int {
		mu.Lock()
		defer mu.Unlock()
		if v < 0 {
			version[k]++
		} else {
			version[k] = v
		}
		feed <- k
		return version[k]
	}
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		for k := range feed {
			l.changed(k, 1)
		}
	}()
	keys := []string{"a", "b"}
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				k := keys[(g+i)%len(keys)]
				switch i % 5 {
				case 0: // a Set through the layer
					tok := l.beginWrite(k)
					v := commit(k, -1)
					l.endWrite(tok, true, []byte(fmt.Sprint(v)), time.Time{}, 1)
				case 1: // another process's write
					commit(k, -1)
				case 2: // a Delete (here: a reset to 0) through the layer, beside the Sets
					tok := l.beginWrite(k)
					commit(k, 0)
					l.endWrite(tok, false, nil, time.Time{}, 0)
				default: // a read that fills
					tok := l.beginFill(k)
					mu.Lock()
					v := version[k]
					mu.Unlock()
					l.endFill(tok, found([]byte(fmt.Sprint(v)), everything))
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
	require.True(t, kept(l, l.beginWrite("k"), true, []byte("1")))
	tok := l.beginWrite("k") // the first write's change is still due
	require.True(t, kept(l, tok, true, []byte("2")))
	require.False(t, l.changed("k", 1), "the first write's change")
	require.False(t, l.changed("k", 2), "the second's")
	require.True(t, served())
	require.True(t, l.changed("k", 3), "anything after drops it")

	// The first write's change arrives while the second is in flight.
	require.True(t, kept(l, l.beginWrite("k"), true, []byte("1")))
	tok = l.beginWrite("k")
	l.changed("k", 4)
	require.True(t, kept(l, tok, true, []byte("2")))
	require.False(t, l.changed("k", 5))
	require.True(t, l.changed("k", 6))
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

// widen makes the feed's 32-bit ids the 64-bit ones near a reference,
// across an epoch boundary either way.
func TestWiden(t *testing.T) {
	t.Parallel()
	const epoch = uint64(3) << 32
	require.Equal(t, epoch+100, widen(100, epoch+90))
	require.Equal(t, epoch+100, widen(100, epoch+5000))
	require.Equal(t, epoch-10, widen(uint32(1<<32-10), epoch+20), "the previous epoch")
	require.Equal(t, epoch+5, widen(5, epoch-20), "the next epoch")
	require.Equal(t, uint64(100), widen(100, 0))
}
