package nearcachev0

import (
	"hash/maphash"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
)

// The local copies, and how a copy is kept from ever being stale past the
// bound.
//
// A copy is added only by a fill: a read from the store that missed
// locally. The race to close is a fill that reads the old value from the
// database, then sees the new value's invalidation arrive before it stores
// its copy, and stores the old value after it: a copy no later
// invalidation removes. So a fill registers its key before its read
// (beginFill), every invalidation of a key marks the fills in flight for it,
// and a marked fill stores nothing (endFill). An invalidation that arrives
// after the copy is stored removes it. Dropping everything (the feed lost,
// Clear, a truncate) bumps gen instead, which turns away every fill that
// began before: so does a feed that is not up, since nothing would remove
// the copy.
//
// The marks are kept only while fills are in flight, in shards by key
// hash, so an invalidation of a key nobody is reading costs a map lookup
// under one shard's lock.
//
// A Set through the layer keeps a copy of the value it wrote (so the
// writer's next reads are hits), which its own change, arriving later on
// the feed, must not drop, while any other change must. The feed carries
// keys only, so the layer counts instead. A write registers before it is
// sent (beginWrite), and every feed invalidation of the key from then on
// is counted. Until it returns, the key's copy is served, and fills may
// store theirs (a read concurrent with a write may see the value from
// before it); when it returns, fills still in flight (which may have read
// the value from before it) store nothing, and the copy is replaced, or
// dropped. Changes arrive in commit order, and the write's
// own arrives before any committed after it. The changes still due that
// committed before it are its own plus those still owed to the copy it
// replaced (a previous write through the layer whose own change had not
// arrived yet: owed). So when it returns (endWrite), with seen counted,
// the copy is stored with a budget of owed + 1 - seen invalidations to
// absorb: every one absorbed committed no later than the write (an older
// change absorbed in place of its own just means its own drops the copy
// later: a miss, never a stale read). A budget under 0, or another write
// of the key through the layer at the same time (their commit order is
// unknown): nothing is stored. A copy still absorbing after a heartbeat
// sent once the write returned has arrived (so every change before it has
// too) is not served.

// entryOverhead is what a cached entry costs beyond its key's and value's
// bytes: the entry struct, otter's node and hash table slot, and slice
// and string headers (TestMemoryBound measures an entry's heap against
// its weight: 170 bytes beyond a 21-byte key and 100-byte value).
const entryOverhead = 176

// entry is one local copy.
type entry struct {
	value []byte
	// expires is when the copy must be gone: the database's expiry, as a
	// remaining lifetime added to the local monotonic clock at the start
	// of the read that fetched it (so it is never later than the
	// database's, whatever the clocks' offset). Zero: never expires.
	expires time.Time
	// budget is how many feed invalidations of the key the copy absorbs
	// before the next drops it (a copy kept by a write through the layer
	// whose own change has not arrived); absorbing is when that write
	// returned (Cache.since), for the heartbeat check. Both change under
	// the key's shard lock.
	budget    atomic.Int32
	absorbing atomic.Int64
}

// writeWin is the writes through the layer of one key in flight.
type writeWin struct {
	refs  int // in flight
	total int // begun since the window opened
	seen  int // feed invalidations of the key since it opened
	owed  int // the budget left to the copy the first write replaced
}

func (e *entry) weight(key string) uint32 {
	return uint32(min(len(key)+len(e.value)+entryOverhead, math.MaxUint32))
}

// fill is a read in flight for one key.
type fill struct {
	refs  int
	stale bool // an invalidation of the key arrived since the fill began
}

const fillShards = 64

type fillShard struct {
	mu      sync.Mutex
	pending map[string]*fill
	writes  map[string]*writeWin
}

// local is the in-process store.
type local struct {
	cache   *otter.Cache[string, *entry]
	maxItem int
	seed    maphash.Seed
	shards  [fillShards]fillShard
	// gen counts the times everything was dropped; a fill that began in
	// another generation stores nothing. Odd generations are the ones in
	// which the feed is up: fills that begin in an even one (no feed)
	// store nothing either.
	gen atomic.Uint64
}

func newLocal(maxBytes int64, maxItem int) (*local, error) {
	c, err := otter.New(&otter.Options[string, *entry]{
		MaximumWeight: uint64(maxBytes),
		Weigher:       func(k string, e *entry) uint32 { return e.weight(k) },
		ExpiryCalculator: otter.ExpiryCreatingFunc(func(e otter.Entry[string, *entry]) time.Duration {
			if e.Value.expires.IsZero() {
				return math.MaxInt64
			}
			return max(time.Until(e.Value.expires), 0)
		}),
	})
	if err != nil {
		return nil, err
	}
	l := &local{cache: c, maxItem: maxItem, seed: maphash.MakeSeed()}
	for i := range l.shards {
		l.shards[i].pending = map[string]*fill{}
		l.shards[i].writes = map[string]*writeWin{}
	}
	return l, nil
}

func (l *local) shard(key string) *fillShard {
	return &l.shards[maphash.String(l.seed, key)%fillShards]
}

// get returns the live copy of key, if any, as of now.
func (l *local) get(key string, now time.Time) (*entry, bool) {
	e, ok := l.cache.GetIfPresent(key)
	if !ok || (!e.expires.IsZero() && !now.Before(e.expires)) {
		return nil, false
	}
	return e, true
}

// fillToken is what beginFill hands endFill.
type fillToken struct {
	key string
	f   *fill
	gen uint64
}

// beginFill registers a read of key that is about to go to the store.
func (l *local) beginFill(key string) fillToken {
	g := l.gen.Load()
	s := l.shard(key)
	s.mu.Lock()
	f := s.pending[key]
	if f == nil {
		f = &fill{}
		s.pending[key] = f
	}
	f.refs++
	s.mu.Unlock()
	return fillToken{key: key, f: f, gen: g}
}

// endFill ends a fill. With keep, the value read is stored unless the key
// was invalidated meanwhile, everything was dropped, or the feed was down
// when the fill began. It reports whether it stored the value.
func (l *local) endFill(t fillToken, keep bool, value []byte, expires time.Time) bool {
	s := l.shard(t.key)
	s.mu.Lock()
	defer s.mu.Unlock()
	t.f.refs--
	if t.f.refs == 0 {
		delete(s.pending, t.key)
	}
	if !keep || t.f.stale || t.gen%2 == 0 || l.gen.Load() != t.gen || len(value) > l.maxItem {
		return false
	}
	// Under the shard's lock: an invalidation of the key either marked the
	// fill before this (and nothing is stored) or removes the copy after.
	l.cache.Set(t.key, &entry{value: value, expires: expires})
	return true
}

// invalidate drops key's copy and turns away the fills in flight for it,
// for a write through the layer. It reports whether a copy was dropped.
func (l *local) invalidate(key string) bool {
	s := l.shard(key)
	s.mu.Lock()
	if f := s.pending[key]; f != nil {
		f.stale = true
	}
	_, dropped := l.cache.Invalidate(key)
	s.mu.Unlock()
	return dropped
}

// changed is invalidate for a change the feed reported: a copy kept by a
// write through the layer absorbs the first (see writeWin). It reports
// whether a copy was dropped.
func (l *local) changed(key string) bool {
	s := l.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.pending[key]; f != nil {
		f.stale = true
	}
	if w := s.writes[key]; w != nil {
		w.seen++
	}
	if e, ok := l.cache.GetIfPresent(key); ok && e.budget.Load() > 0 {
		if e.budget.Add(-1) == 0 {
			e.absorbing.Store(0)
		}
		return false
	}
	_, dropped := l.cache.Invalidate(key)
	return dropped
}

// writeToken is what beginWrite hands endWrite.
type writeToken struct {
	key string
	w   *writeWin
	gen uint64
}

// beginWrite registers a write of key through the layer that is about to
// be sent.
func (l *local) beginWrite(key string) writeToken {
	g := l.gen.Load()
	s := l.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.pending[key]; f != nil {
		f.stale = true
	}
	w := s.writes[key]
	if w == nil {
		w = &writeWin{}
		if e, ok := l.cache.GetIfPresent(key); ok {
			w.owed = int(e.budget.Load())
		}
		s.writes[key] = w
	}
	w.refs++
	w.total++
	return writeToken{key: key, w: w, gen: g}
}

// endWrite ends a write. With keep (the write succeeded and stored value,
// expiring at expires), the value is kept as the key's copy when the
// counts allow (see writeWin); now is when the write returned. It reports
// whether it kept the copy.
func (l *local) endWrite(t writeToken, keep bool, value []byte, expires time.Time, now int64) bool {
	s := l.shard(t.key)
	s.mu.Lock()
	defer s.mu.Unlock()
	t.w.refs--
	if t.w.refs == 0 {
		delete(s.writes, t.key)
	}
	if f := s.pending[t.key]; f != nil {
		f.stale = true // it may have read the value from before the write
	}
	budget := t.w.owed + 1 - t.w.seen
	if !keep || t.w.refs != 0 || t.w.total != 1 || budget < 0 || t.gen%2 == 0 || l.gen.Load() != t.gen || len(value) > l.maxItem {
		// The copy from before the write is stale now that it returned.
		l.cache.Invalidate(t.key)
		return false
	}
	e := &entry{value: value, expires: expires}
	if budget > 0 {
		e.budget.Store(int32(budget))
		e.absorbing.Store(now)
	}
	l.cache.Set(t.key, e)
	return true
}

// setFeed drops every copy and turns away every fill in flight; up says
// whether fills that begin from now on may store (the feed is up). It
// returns how many copies it dropped.
func (l *local) setFeed(up bool) int {
	return l.dropAll(func(g uint64) uint64 {
		g++
		if (g%2 == 1) != up {
			g++
		}
		return g
	})
}

// flush drops every copy and turns away every fill in flight, the feed
// staying as it is. It returns how many copies it dropped.
func (l *local) flush() int {
	return l.dropAll(func(g uint64) uint64 { return g + 2 })
}

func (l *local) dropAll(next func(uint64) uint64) int {
	// The generation moves with every shard locked, so a fill's check and
	// store (endFill, under its shard's lock) happen wholly before the
	// move, and InvalidateAll below removes what it stored, or wholly
	// after, and it stores nothing.
	for i := range l.shards {
		l.shards[i].mu.Lock()
	}
	l.gen.Store(next(l.gen.Load()))
	for i := range l.shards {
		l.shards[i].mu.Unlock()
	}
	n := l.cache.EstimatedSize()
	l.cache.InvalidateAll()
	return n
}

// invalidatePrefix drops the copies of every key that starts with prefix
// and turns away the fills in flight for them. It returns how many copies
// it dropped.
func (l *local) invalidatePrefix(prefix string) int {
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for k, f := range s.pending {
			if strings.HasPrefix(k, prefix) {
				f.stale = true
			}
		}
		s.mu.Unlock()
	}
	// A fill that ended before its shard was marked stored its copy
	// already: this walk removes it.
	n := 0
	for k := range l.cache.Keys() {
		if strings.HasPrefix(k, prefix) {
			if _, ok := l.cache.Invalidate(k); ok {
				n++
			}
		}
	}
	return n
}

// len is the number of copies, bytes their weight.
func (l *local) len() int           { return l.cache.EstimatedSize() }
func (l *local) bytes() uint64      { return l.cache.WeightedSize() }
func (l *local) close()             { l.cache.InvalidateAll(); l.cache.StopAllGoroutines() }
func (l *local) feedUp() bool       { return l.gen.Load()%2 == 1 }
func (l *local) generation() uint64 { return l.gen.Load() }
