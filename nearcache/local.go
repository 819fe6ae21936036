package nearcache

import (
	"bytes"
	"hash/maphash"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"

	"github.com/dbcache/dbcache/dbcache"
)

// The local copies, and why a copy is never stale past the bound.
//
// A copy is added by a fill (a read from the store that missed locally) or
// by a Set through the layer. The race to close is a fill that reads an old
// value and stores it after the change that replaced it has been delivered
// by the feed: nothing later would remove it. PostgreSQL makes the race
// wide: a commit's WAL is flushed, and so decoded and sent to the feed,
// before the transaction is visible to other sessions' snapshots (for the
// whole wait of a synchronous standby), so a fill can even begin after the
// change was delivered and still read the value from before it.
//
// So a fill keeps its copy only if its own statement provably saw every
// change the feed has delivered for the key. The store's read returns the
// statement's snapshot (dbcache.SnapshotReader). The feed remembers, per
// key, the transaction (a 64-bit xid) of the newest change it delivered;
// the copy is kept only if that transaction had ended in the fill's
// snapshot. The newest is enough: two transactions changing one key are
// serialised by the row's lock (or the key's unique index entry), so the
// later one wrote only after the earlier had ended, and a snapshot in which
// the later had ended saw the earlier ended too. Changes whose key is not
// known (a TRUNCATE, a key pgoutput left out) and the transactions running
// when a feed session starts (some may have committed before the slot's
// consistent point, so their changes are never delivered, and still be
// invisible) go to a table-wide set instead: every id in it must have ended
// in the snapshot of any fill that keeps a copy.
//
// Remembered ids are dropped once a snapshot shows them ended (the
// heartbeats return theirs): every later snapshot shows them ended too. A
// fill whose snapshot is older than the one that pruned (it may not have
// seen a pruned id end) keeps nothing, which the pruning snapshot's
// Includes decides. So memory follows the transactions in flight and the
// keys changed in the last heartbeat interval, not the key space; past
// maxRemembered keys, the ids collapse into one watermark (every fill is
// refused until a snapshot's xmin passes the newest id delivered).
//
// Reads through a process are monotonic per key: a fill that keeps nothing
// drops the key's copy, which may be older than what it returned; and a
// fill during which another fill or a write of the key ended keeps
// nothing (and so drops the copy): the other may have stored a state
// older or newer than its own (statements take their snapshots in no
// particular order with the reads' starts), and only a copy as new as
// every read returned since it was stored may stay (or one holding exactly
// the bytes the ending read returned). A read that joins
// another's store read returns what that read returned (see Cache.read).
//
// A write through the layer registers before it is sent (beginWrite) and
// ends (endWrite) when it returns: fills still in flight then store
// nothing, and the key's copy is dropped or, for a Set, replaced by the
// value written. That copy must survive the Set's own change, arriving
// later on the feed, and no other change. The feed carries keys only, so
// the layer counts: changes arrive in commit order, and the write's own
// arrives before any that committed after it. The changes still due that
// committed before it are its own plus those still owed to the copy it
// replaced (a previous write through the layer whose own change had not
// arrived yet: owed). So when it returns, with seen counted, the copy is
// stored with a budget of owed + 1 - seen invalidations to absorb: every
// one absorbed committed no later than the write (an older change absorbed
// in place of its own just means its own drops the copy later: a miss,
// never a stale read). A budget under 0, another write of the key through
// the layer in flight at the same time (their commit order is unknown), a
// DeletePrefix or Clear meanwhile: nothing is stored. A copy still
// absorbing after a heartbeat sent once the write returned has arrived (so
// every change before it has too) is not served.

// entryOverhead is what a cached entry costs beyond its key's and value's
// bytes: the entry struct, otter's node and hash table slot, and slice
// and string headers (TestMemoryBound measures an entry's heap against
// its weight: 170 bytes beyond a 21-byte key and 100-byte value).
const entryOverhead = 176

// maxRemembered bounds the keys whose newest change's transaction is
// remembered; past it, the ids collapse into the overflow watermark.
const maxRemembered = 1 << 17

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
	// token is the entry's dbcache.Token when hasToken: a copy filled by
	// GetWithToken carries the token its read returned; one a Set kept
	// does not know its own (the write does not return it).
	token    dbcache.Token
	hasToken bool
}

// writeWin is the writes through the layer of one key in flight.
type writeWin struct {
	refs     int  // in flight
	total    int  // begun since the window opened
	seen     int  // feed invalidations of the key since it opened
	owed     int  // the budget left to the copy the first write replaced
	poisoned bool // a DeletePrefix covered the key meanwhile
}

func (e *entry) weight(key string) uint32 {
	return uint32(min(len(key)+len(e.value)+entryOverhead, math.MaxUint32))
}

// fill is the reads in flight for one key. epoch moves whenever one of
// them ends or a write of the key ends: a read that began in another epoch
// stores nothing. fed counts the feed's changes of the key delivered while
// they run.
type fill struct {
	refs  int
	epoch uint64
	fed   uint64
}

const fillShards = 64

type fillShard struct {
	mu      sync.Mutex
	pending map[string]*fill
	writes  map[string]*writeWin
	// seen is the transaction of the newest change the feed delivered for
	// each key, until a snapshot shows it ended.
	seen map[string]uint64
}

// Kinds of table-wide ids.
const (
	tableTruncate = iota + 1 // a TRUNCATE, or a change whose key could not be read
	tableStart               // running when a feed session started
)

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

	// pruned is the snapshot that last pruned remembered ids: a fill
	// keeps its copy only if its snapshot includes it.
	pruned atomic.Pointer[dbcache.Snapshot]
	// remembered counts the keys in the shards' seen maps.
	remembered atomic.Int64

	tableMu sync.Mutex
	// table is the table-wide ids (kind by id); tableN its size.
	table  map[uint64]int
	tableN atomic.Int64
	// overflow, when not 0, is the newest id delivered since the seen
	// maps overflowed: fills keep nothing until a snapshot's xmin passes
	// it.
	overflow uint64
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
	l := &local{cache: c, maxItem: maxItem, seed: maphash.MakeSeed(), table: map[uint64]int{}}
	for i := range l.shards {
		l.shards[i].pending = map[string]*fill{}
		l.shards[i].writes = map[string]*writeWin{}
		l.shards[i].seen = map[string]uint64{}
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
	key   string
	f     *fill
	epoch uint64
	fed   uint64
	gen   uint64
	// snapshot says whether the read must return its statement's snapshot
	// (see beginFill).
	snapshot bool
}

// beginFill registers a read of key that is about to go to the store, and
// says whether the read must bring its statement's snapshot: only when the
// key has a remembered change or a table-wide id is pending. Otherwise
// every change delivered before now was seen ended by a snapshot taken
// before now (that is how it was forgotten), which the read's statement,
// taken later, includes; so the read needs no snapshot of its own, as long
// as no change of the key is delivered while it runs (endFill turns it
// away then). The cheaper statement is what most misses use.
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
	_, remembered := s.seen[key]
	t := fillToken{key: key, f: f, epoch: f.epoch, fed: f.fed, gen: g, snapshot: remembered || l.tableN.Load() > 0}
	s.mu.Unlock()
	return t
}

// fillResult is what a fill read: the value when found, expiring at
// expires (zero: never), with the snapshot the store read it with (zero
// when the read did not need one, see beginFill).
type fillResult struct {
	found    bool
	value    []byte
	expires  time.Time
	snap     dbcache.Snapshot
	token    dbcache.Token
	hasToken bool
}

// Outcomes of endFill.
const (
	fillKept    = iota // the copy was stored
	fillNotKept        // not stored: stale, absent, too big, the feed down
	fillUnseen         // not stored: the snapshot had not seen a change the feed delivered
)

// endFill ends a fill: the value read is stored when the fill is still
// current (no other fill or write of the key ended since it began, the
// feed up all along) and its snapshot saw every change the feed delivered
// for the key ended (or, read without a snapshot, nothing was remembered
// when it began and no change of the key arrived since). A fill that keeps
// nothing drops the key's copy, which may be older than what it read.
func (l *local) endFill(t fillToken, r fillResult) int {
	s := l.shard(t.key)
	s.mu.Lock()
	defer s.mu.Unlock()
	t.f.refs--
	if t.f.refs == 0 {
		delete(s.pending, t.key)
	}
	current := t.f.epoch == t.epoch
	// The fills still in flight began before this one ended: they may have
	// read an older state than the one this one returns.
	t.f.epoch++
	if !current || t.gen%2 == 0 || l.gen.Load() != t.gen {
		// Another read or a write of the key ended while this one ran (it
		// may have stored a state older than the one this read returns:
		// snapshots are not taken in the order reads begin), the feed was
		// down when it began, or everything was dropped since: keep
		// nothing, and drop what is held, so that no later read of this
		// process returns something older than this one did; unless what
		// is held is exactly what this read returned.
		if e, ok := l.cache.GetIfPresent(t.key); ok && !current && r.found && bytes.Equal(e.value, r.value) {
			return fillNotKept
		}
		l.cache.Invalidate(t.key)
		return fillNotKept
	}
	if !r.found || len(r.value) > l.maxItem {
		l.cache.Invalidate(t.key)
		return fillNotKept
	}
	switch {
	case !r.snap.IsZero():
		if !l.sawAll(s, t.key, r.snap) {
			l.cache.Invalidate(t.key)
			return fillUnseen
		}
	case t.snapshot:
		l.cache.Invalidate(t.key)
		return fillUnseen // it needed a snapshot and brought none
	case t.f.fed != t.fed:
		// Without a snapshot: only if nothing was remembered when it began
		// and no change of the key arrived since.
		l.cache.Invalidate(t.key)
		return fillNotKept
	}
	// Under the shard's lock: a change of the key either was remembered
	// before this (and checked above) or removes the copy after.
	l.cache.Set(t.key, &entry{value: r.value, expires: r.expires, token: r.token, hasToken: r.hasToken})
	return fillKept
}

// sawAll reports whether snap saw every change the feed delivered for key
// ended: the key's newest, the table-wide ones, and those pruned (by a
// snapshot snap must include). Called under the key's shard lock.
func (l *local) sawAll(s *fillShard, key string, snap dbcache.Snapshot) bool {
	if snap.IsZero() {
		return false
	}
	if p := l.pruned.Load(); p != nil && !snap.Includes(*p) {
		return false
	}
	if x, ok := s.seen[key]; ok && !snap.Ended(x) {
		return false
	}
	if l.tableN.Load() == 0 {
		return true
	}
	l.tableMu.Lock()
	defer l.tableMu.Unlock()
	if l.overflow != 0 && snap.Xmin <= l.overflow {
		return false
	}
	for x := range l.table {
		if !snap.Ended(x) {
			return false
		}
	}
	return true
}

// invalidate drops key's copy and turns away the fills in flight for it.
// It reports whether a copy was dropped.
func (l *local) invalidate(key string) bool {
	s := l.shard(key)
	s.mu.Lock()
	if f := s.pending[key]; f != nil {
		f.epoch++
	}
	_, dropped := l.cache.Invalidate(key)
	s.mu.Unlock()
	return dropped
}

// changed is a change of key delivered by the feed, in transaction xid: the
// key's copy is dropped, unless one kept by a write through the layer
// absorbs it (see writeWin), and xid is remembered for the key. It reports
// whether a copy was dropped.
func (l *local) changed(key string, xid uint64) bool {
	s := l.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	l.remember(s, key, xid)
	if f := s.pending[key]; f != nil {
		f.fed++
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

// remember records xid as key's newest change (under s's lock): delivered
// in commit order, the last delivered is the newest.
func (l *local) remember(s *fillShard, key string, xid uint64) {
	if xid == 0 {
		return
	}
	if _, ok := s.seen[key]; ok {
		s.seen[key] = xid
		return
	}
	if l.remembered.Load() < maxRemembered {
		s.seen[key] = xid
		l.remembered.Add(1)
		return
	}
	l.tableMu.Lock()
	l.overflow = max(l.overflow, xid)
	l.tableN.Store(int64(len(l.table)) + 1)
	l.tableMu.Unlock()
}

// tableWide adds xid to the ids every kept fill must have seen ended.
func (l *local) tableWide(xid uint64, kind int) {
	if xid == 0 {
		return
	}
	l.tableMu.Lock()
	if _, ok := l.table[xid]; !ok || kind == tableTruncate {
		l.table[xid] = kind
	}
	l.tableN.Store(int64(len(l.table)) + int64(b2i(l.overflow != 0)))
	l.tableMu.Unlock()
}

// committed is the commit of xid delivered by the feed: if it was running
// when the feed session started, its changes have now all been delivered
// (and remembered by key), so it no longer needs to be table-wide.
func (l *local) committed(xid uint64) {
	if l.tableN.Load() == 0 {
		return
	}
	l.tableMu.Lock()
	if l.table[xid] == tableStart {
		delete(l.table, xid)
		l.tableN.Store(int64(len(l.table)) + int64(b2i(l.overflow != 0)))
	}
	l.tableMu.Unlock()
}

// prune forgets the ids snap shows ended. The snapshot is recorded first,
// so that a fill checking meanwhile either still finds an id or must
// include snap.
func (l *local) prune(snap dbcache.Snapshot) {
	if snap.IsZero() || (l.remembered.Load() == 0 && l.tableN.Load() == 0) {
		return
	}
	if p := l.pruned.Load(); p != nil && !snap.Includes(*p) {
		return // older than the last: it would move the check backwards
	}
	l.pruned.Store(&snap)
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for k, x := range s.seen {
			if snap.Ended(x) {
				delete(s.seen, k)
				l.remembered.Add(-1)
			}
		}
		s.mu.Unlock()
	}
	l.tableMu.Lock()
	for x := range l.table {
		if snap.Ended(x) {
			delete(l.table, x)
		}
	}
	if l.overflow != 0 && snap.Xmin > l.overflow {
		l.overflow = 0
	}
	l.tableN.Store(int64(len(l.table)) + int64(b2i(l.overflow != 0)))
	l.tableMu.Unlock()
}

// remembering reports how many keys have a remembered id, and how many
// table-wide ids there are (the overflow watermark counting as one).
func (l *local) remembering() (keys int64, table int64) {
	return l.remembered.Load(), l.tableN.Load()
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

// endWrite ends a write. With keep (a Set that succeeded and stored value,
// expiring at expires), the value is kept as the key's copy when the
// counts allow (see writeWin); now is when the write returned. Otherwise,
// or when they do not allow it, the key's copy is dropped. Either way the
// fills in flight store nothing. It reports whether it kept the copy, and
// whether a copy was dropped.
func (l *local) endWrite(t writeToken, keep bool, value []byte, expires time.Time, now int64) (kept, dropped bool) {
	s := l.shard(t.key)
	s.mu.Lock()
	defer s.mu.Unlock()
	t.w.refs--
	if t.w.refs == 0 {
		delete(s.writes, t.key)
	}
	if f := s.pending[t.key]; f != nil {
		f.epoch++ // they may have read the value from before the write
	}
	budget := t.w.owed + 1 - t.w.seen
	if !keep || t.w.refs != 0 || t.w.total != 1 || t.w.poisoned || budget < 0 || t.gen%2 == 0 || l.gen.Load() != t.gen || len(value) > l.maxItem {
		// The copy from before the write is stale now that it returned.
		_, dropped = l.cache.Invalidate(t.key)
		return false, dropped
	}
	e := &entry{value: value, expires: expires}
	if budget > 0 {
		e.budget.Store(int32(budget))
		e.absorbing.Store(now)
	}
	l.cache.Set(t.key, e)
	return true, false
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
	// The generation moves with every shard locked, so a fill's or
	// write's check and store (under its shard's lock) happen wholly
	// before the move, and InvalidateAll below removes what it stored, or
	// wholly after, and it stores nothing.
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

// invalidatePrefix drops the copies of every key that starts with prefix,
// turns away the fills in flight for them and keeps the writes in flight
// from keeping theirs. It returns how many copies it dropped.
func (l *local) invalidatePrefix(prefix string) int {
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for k, f := range s.pending {
			if strings.HasPrefix(k, prefix) {
				f.epoch++
			}
		}
		for k, w := range s.writes {
			if strings.HasPrefix(k, prefix) {
				w.poisoned = true
			}
		}
		s.mu.Unlock()
	}
	// A fill or write that ended before its shard was marked stored its
	// copy already: this walk removes it.
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
func (l *local) len() int      { return l.cache.EstimatedSize() }
func (l *local) bytes() uint64 { return l.cache.WeightedSize() }
func (l *local) close()        { l.cache.InvalidateAll(); l.cache.StopAllGoroutines() }
func (l *local) feedUp() bool  { return l.gen.Load()%2 == 1 }
